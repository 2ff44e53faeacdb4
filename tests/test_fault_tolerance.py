"""Fault tolerance: SIGKILL mid-epoch and resume, NaN/Inf stops without saving, checkpoint
retention and interrupted checkpoint writes."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from caption_app.runs import checkpoints as checkpoints_lib
from caption_app.runs import layout as run_layout
from caption_app.runs import loader as run_loader
from caption_app.__main__ import main as cli_main
from tests.conftest import REPO_ROOT, cli_env, restore_checkpoint, run_cli, set_args, tiny_config


def _optimizer_iterations(run: str, checkpoint: str, config) -> int:
    _, optimizer, _ = restore_checkpoint(run, checkpoint, config)
    return int(optimizer.iterations.numpy())


def _all_finite(model) -> bool:
    return all(np.isfinite(np.asarray(w)).all() for w in model.weights)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_the_same_command_resumes_from_the_backup(shapes_data, tmp_path):
    run = str(tmp_path / "run")
    epochs, every = 2, 5  # killed in epoch 2, after its backups of steps 5 and 10
    # No XLA: what is tested is the kill and the resume, and each of the two processes would compile.
    assignments = [f"train.epochs={epochs}", "train.batch_size=1", f"train.backup_every_steps={every}",
                   "train.jit_compile=false"]
    command = ["caption_app", "train", "--config", "tiny", "--data", shapes_data, "--run-dir", run, "--quiet",
               *set_args(*assignments)]
    steps = 40  # 40 train images, batch 1
    backup_pointer = Path(run) / "backup" / "checkpoint"

    # The first run kills itself (SIGKILL, no clean-up) at a fixed step of epoch 2, after the epoch-1
    # checkpoint and the backups of steps 5 and 10 of epoch 2 were written: no race with a poller.
    kill_at = steps + 2 * every + 2
    script = f"""
import os, signal, sys, keras
from caption_app.config import get_preset, override
from caption_app.training.train import train

class KillAt(keras.callbacks.Callback):
    seen = 0
    def on_train_batch_end(self, batch, logs=None):
        KillAt.seen += 1
        if KillAt.seen == {kill_at}:
            os.kill(os.getpid(), signal.SIGKILL)

train(override(get_preset("tiny"), {assignments!r}), {shapes_data!r}, {run!r}, verbose=0, callbacks=[KillAt()])
"""
    first = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240,
                           env=cli_env(), cwd=REPO_ROOT)
    assert (Path(run) / "checkpoints" / "ckpt-1.index").exists() and backup_pointer.exists(), first.stderr[-3000:]
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    epoch_files = {p.name: (p.read_bytes(), p.stat().st_mtime_ns)
                   for p in (Path(run) / "checkpoints").glob("ckpt-*")}
    finished = sorted(int(m) for m in re.findall(r"ckpt-(\d+)\.index", " ".join(epoch_files)))
    assert finished and run_layout.read_state(run)["finished"] is False

    second = run_cli(*command, timeout=240)
    assert second.returncode == 0, second.stdout + second.stderr[-3000:]
    resumed = re.search(rf"resuming .* from (\S+) \(epoch (\d+) of {epochs}(?:, step (\d+) of {steps})?\)",
                        second.stdout)
    assert resumed, second.stdout
    source, epoch, step = resumed.group(1), int(resumed.group(2)), int(resumed.group(3) or 0)
    assert (epoch, step) == (1, 2 * every)  # killed at step 12 of epoch 2: its last backup was step 10
    assert epoch == finished[-1]  # the last finished epoch ...
    if step:  # ... and the backup taken after it, when there was one
        assert re.search(r"/backup/ckpt-(\d+)$", source) and int(source.rsplit("-", 1)[1]) == epoch * steps + step
        assert step % every == 0 and 0 < step < steps
    # The optimizer continued from the saved state, not from zero.
    assert f"optimizer restored at step {epoch * steps + step}" in second.stdout
    # Finished epochs were not trained again: their checkpoints were not rewritten.
    for name, (data, mtime) in epoch_files.items():
        if int(re.search(r"ckpt-(\d+)", name).group(1)) <= epoch and (Path(run) / "checkpoints" / name).exists():
            path = Path(run) / "checkpoints" / name
            assert path.read_bytes() == data and path.stat().st_mtime_ns == mtime, name
    assert run_layout.read_state(run) == {"epochs_done": epochs, "total_epochs": epochs, "finished": True}
    # Exactly epochs * steps optimizer steps in all: nothing repeated, nothing skipped.
    config = tiny_config(*assignments)
    assert _optimizer_iterations(run, checkpoints_lib.latest_checkpoint(run), config) == epochs * steps


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(trained_run, tmp_path, capsys):
    run = str(tmp_path / "run")
    shutil.copytree(trained_run.run_dir, run)
    assert checkpoints_lib.latest_checkpoint(run).endswith("ckpt-2")
    # A fine-tuning phase (epoch 3, a new optimizer) whose learning rate overflows the weights at once.
    code = cli_main(["train", "--config", "tiny", "--data", trained_run.data_dir, "--run-dir", run, "--quiet",
                     *set_args("train.epochs=2", "train.fine_tune_epochs=1", "train.fine_tune_learning_rate=3e38",
                            "train.backup_every_steps=1")])
    assert code == 2
    err = capsys.readouterr().err
    assert "training stopped" in err, err
    assert "weights became NaN/Inf" in err or re.search(r"loss became (nan|inf)", err), err
    assert "learning_rate" in err  # what to do about it
    # Nothing non-finite was saved: the latest checkpoint is still epoch 2's and it is finite,
    # and so is any mid-epoch backup.
    assert checkpoints_lib.latest_checkpoint(run).endswith("ckpt-2")
    assert not os.path.exists(os.path.join(run, "checkpoints", "ckpt-3.index"))
    assert _all_finite(run_loader.load_model(run)[0])
    backup = tf.train.latest_checkpoint(os.path.join(run, "backup"))
    if backup:
        assert _all_finite(run_loader.load_model(run, backup)[0])
    assert run_layout.read_state(run)["epochs_done"] == 2


def test_interrupted_save_is_ignored_and_max_checkpoints_to_keep_is_honoured(trained_run, tmp_path):
    # Also: resuming at the phase boundary starts phase 2 with its own fresh optimizer.
    run = str(tmp_path / "run")
    shutil.copytree(trained_run.run_dir, run)
    checkpoints = Path(run) / "checkpoints"
    # What a save killed before its last step leaves: variables and index, but the `checkpoint`
    # file (replaced atomically, last) still names ckpt-2.
    (checkpoints / "ckpt-3_temp").mkdir()
    (checkpoints / "ckpt-3.data-00000-of-00001").write_bytes(b"\0" * 64)
    (checkpoints / "ckpt-3.index").write_bytes(b"truncated")
    assert checkpoints_lib.latest_checkpoint(run).endswith("ckpt-2")
    assert _all_finite(run_loader.load_model(run)[0])  # loads the complete one

    code = cli_main(["train", "--config", "tiny", "--data", trained_run.data_dir, "--run-dir", run, "--quiet",
                     *set_args("train.epochs=2", "train.fine_tune_epochs=2", "train.fine_tune_learning_rate=0.005",
                            "train.max_checkpoints_to_keep=2")])
    assert code == 0
    indexes = sorted(p.name for p in checkpoints.glob("ckpt-*.index"))
    assert indexes == ["ckpt-3.index", "ckpt-4.index"]  # 1 and 2 deleted, 3 rewritten whole
    state = tf.train.get_checkpoint_state(str(checkpoints))
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == ["ckpt-3", "ckpt-4"]
    assert _all_finite(run_loader.load_model(run, str(checkpoints / "ckpt-3"))[0])
    phase2 = tf.train.load_checkpoint(str(checkpoints / "ckpt-4"))
    names = phase2.get_variable_to_shape_map()
    phase2_optimizer = checkpoints_lib.optimizer_key("phase2") + "/"
    iterations = next(n for n in names if n.startswith(phase2_optimizer) and "iteration" in n)
    learning_rate = next(n for n in names if n.startswith(phase2_optimizer) and "learning_rate" in n)
    assert int(phase2.get_tensor(iterations)) == 2 * trained_run.history["steps_per_epoch"]
    assert phase2.get_tensor(learning_rate) == pytest.approx(0.005)
    assert not any(n.startswith("model/optimizer") for n in names)  # the model owns no optimizer


def test_a_relative_run_dir_finds_and_restores_its_checkpoints(trained_run, tmp_path, monkeypatch):
    """`--run-dir runs/x`: the `checkpoint` file's relative entries are joined to the directory once."""
    shutil.copytree(trained_run.run_dir, tmp_path / "runs" / "x")
    monkeypatch.chdir(tmp_path)
    paths = checkpoints_lib.checkpoint_paths(os.path.join("runs", "x", checkpoints_lib.CHECKPOINTS))
    assert paths and all(os.path.exists(p + ".index") for p in paths)
    assert run_loader.load_model(os.path.join("runs", "x"))[4] == paths[0]


def test_checkpoints_of_a_relative_run_dir_are_found(tmp_path, monkeypatch):
    """`--run-dir demo_out/run` (relative, as `make demo` passes it): the listed checkpoints exist."""
    monkeypatch.chdir(tmp_path)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=tf.Variable(1.0)), "run/checkpoints",
                                         max_to_keep=2)
    manager.save(checkpoint_number=3)
    manager.save(checkpoint_number=4)
    paths = checkpoints_lib.checkpoint_paths("run/checkpoints")
    assert paths == ["run/checkpoints/ckpt-4", "run/checkpoints/ckpt-3"]
    assert all(os.path.exists(p + ".index") for p in paths)
