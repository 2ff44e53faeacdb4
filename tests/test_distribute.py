"""Distribution strategies: clear errors for bad settings, and Mirrored (2 logical CPUs) and
MultiWorkerMirrored (2 processes on loopback) giving the same loss and weights as one replica.

Each distributed run is a subprocess (tests/distributed_train.py): logical devices and
TF_CONFIG must be set before TensorFlow initializes. Timeouts keep a hang from hanging the suite.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess

import keras
import numpy as np
import pytest

from caption_app.training import distribute
from caption_app.runs import loader as run_loader
from caption_app.__main__ import main as cli_main
from caption_app.model.show_and_tell import build_model
from caption_app.training.train import train
from tests.conftest import REPO_ROOT, cli_env, set_args, start_cli, tiny_config

# Deterministic and replica-independent: the backbone (with its BatchNormalization) frozen, so
# no per-replica batch statistics; no dropout; all captions of each image (their order does not
# change the loss); a global batch of 4 that splits over 2 replicas. Gradient clipping on but not
# binding: it makes Keras (one replica) turn the word embedding's sparse gradient dense, as the
# ReplicaTrainer does. Without it Keras' Adam squares repeated words' gradient slices one by one
# for its second moment; with a binding clip Keras takes the norm over those unmerged slices.
SAME_AS_ONE_REPLICA = ["train.batch_size=4", "train.freeze_backbone=true", "train.epochs=1",
                       "model.embedding_norm=false", "model.lstm_dropout=0.0", "data.captions_per_image=0",
                       "train.clip_gradient_norm=5.0", "train.label_smoothing=0.1"]


# ----------------------------------------------------------------------------- settings

def test_unknown_strategy_and_precision_are_refused_naming_the_choices(tmp_path, shapes_data, capsys):
    with pytest.raises(ValueError, match="default, mirrored, multi_worker, tpu"):
        distribute.check_settings("horovod", "float32")
    with pytest.raises(ValueError, match="float32, mixed_float16, mixed_bfloat16"):
        distribute.check_settings("default", "fp16")
    run = tmp_path / "run"
    sets = set_args("train.strategy=horovod")
    assert cli_main(["train", "--config", "tiny", "--data", shapes_data, "--run-dir", str(run), *sets]) == 2
    assert "train.strategy 'horovod'" in capsys.readouterr().err
    assert not run.exists()  # refused before anything was written


@pytest.mark.parametrize("tf_config,message", [
    (None, "needs the TF_CONFIG environment variable"),
    ("{not json", "TF_CONFIG is not valid JSON"),
    ('{"cluster": {"worker": ["localhost:1"]}}', 'needs a "cluster" and a "task"'),
    ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 3}}', "is not in its cluster"),
])
def test_multi_worker_needs_a_valid_tf_config(monkeypatch, tf_config, message):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(distribute.StrategyError, match=message):
        distribute.make_strategy("multi_worker")


def test_tpu_without_a_tpu_fails_fast_and_clearly(monkeypatch):
    monkeypatch.delenv("TPU_NAME", raising=False)
    with pytest.raises(distribute.StrategyError, match="no TPU was found"):
        distribute.make_strategy("tpu")


def test_default_strategy_keeps_whole_step_xla(trained_run):
    # The in-process runs use the default strategy: Keras' own XLA-compiled step.
    assert trained_run.history["xla"] == "on" and trained_run.history["replicas"] == 1


# ----------------------------------------------------------------------------- same loss as one replica

def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _launch(data: str, run_dir: str, assignments: list[str], *, cpus: int = 1,
            tf_config: dict | None = None) -> subprocess.Popen:
    env = cli_env(TF_CONFIG=json.dumps(tf_config) if tf_config is not None else None)
    return start_cli(str(REPO_ROOT / "tests" / "distributed_train.py"), "--data", data, "--run-dir", run_dir,
                     "--cpus", str(cpus), *set_args(*assignments), env=env, text=True)


def _history(process: subprocess.Popen, timeout: float = 240) -> dict:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"distributed training did not finish in {timeout}s:\n{out}\n{err[-3000:]}")
    assert process.returncode == 0, f"{out}\n{err[-3000:]}"
    return json.loads(out.strip().splitlines()[-1])


def _trainable_weights(run_dir: str) -> list[np.ndarray]:
    model = run_loader.load_model(run_dir)[0]
    return [np.asarray(w) for w in model.trainable_weights]


@pytest.fixture(scope="module")
def one_replica(shapes_data, tmp_path_factory) -> tuple[dict, str]:
    """The reference: the same config trained in this process on one device."""
    run = str(tmp_path_factory.mktemp("one_replica") / "run")
    return train(tiny_config(*SAME_AS_ONE_REPLICA), shapes_data, run, verbose=0), run


def _assert_same_training(history: dict, run: str, reference: dict, reference_run: str, replicas: int):
    assert history["replicas"] == replicas and history["xla"] == "on (per replica)"
    assert history["steps_per_epoch"] == reference["steps_per_epoch"]  # the global batch, not per replica
    # The validation loss after the same steps, and every trained weight.
    assert history["val_perplexity"] == pytest.approx(reference["val_perplexity"], rel=1e-5)
    for got, want in zip(_trainable_weights(run), _trainable_weights(reference_run)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # Training moved the weights: the comparison is not of two untrained models.
    keras.utils.set_random_seed(0)
    initial = build_model(tiny_config(*SAME_AS_ONE_REPLICA), run_loader.load_vocab(run).size)
    assert any(np.abs(np.asarray(a) - b).max() > 1e-3
               for a, b in zip(initial.trainable_weights, _trainable_weights(run)))


@pytest.mark.slow
def test_mirrored_over_two_cpus_equals_one_replica(shapes_data, tmp_path, one_replica):
    reference, reference_run = one_replica
    run = str(tmp_path / "mirrored")
    history = _history(_launch(shapes_data, run, SAME_AS_ONE_REPLICA + ["train.strategy=mirrored"], cpus=2))
    _assert_same_training(history, run, reference, reference_run, replicas=2)


@pytest.mark.slow
def test_scst_mirrored_over_two_cpus_equals_one_replica(shapes_data, tmp_path, one_replica):
    """Self-critical training added to the one-replica run, on one replica and on two: each replica
    samples its images (seeded by their place in the global batch), rewards and differentiates them;
    the applied gradient is the global batch's mean."""
    assignments = SAME_AS_ONE_REPLICA + ["train.scst_epochs=0.4", "train.scst_learning_rate=0.02"]
    _, cross_entropy_run = one_replica
    reference_run, run = str(tmp_path / "one"), str(tmp_path / "mirrored")
    shutil.copytree(cross_entropy_run, reference_run)
    shutil.copytree(cross_entropy_run, run)
    reference = train(tiny_config(*assignments), shapes_data, reference_run, verbose=0)
    history = _history(_launch(shapes_data, run, assignments + ["train.strategy=mirrored"], cpus=2))
    assert history["replicas"] == 2 and history["epochs_done"] == reference["epochs_done"] == 2
    assert history["val_perplexity"] == pytest.approx(reference["val_perplexity"], rel=1e-5)
    for got, want in zip(_trainable_weights(run), _trainable_weights(reference_run)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # SCST moved the weights from the cross-entropy checkpoint it started from.
    start = _trainable_weights(cross_entropy_run)
    assert any(np.abs(a - b).max() > 1e-4 for a, b in zip(start, _trainable_weights(run)))


@pytest.mark.slow
def test_multi_worker_two_processes_equals_one_replica(shapes_data, tmp_path, one_replica):
    reference, reference_run = one_replica
    run = str(tmp_path / "multi_worker")
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    workers = [_launch(shapes_data, run, SAME_AS_ONE_REPLICA + ["train.strategy=multi_worker"],
                       tf_config={"cluster": cluster, "task": {"type": "worker", "index": i}}) for i in range(2)]
    histories = [_history(w) for w in workers]
    assert histories[0]["val_perplexity"] == pytest.approx(histories[1]["val_perplexity"], rel=1e-6)
    _assert_same_training(histories[0], run, reference, reference_run, replicas=2)
    # Only the chief wrote the run dir: one checkpoint per epoch, no worker temp dirs inside.
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == [
        "checkpoint", "ckpt-1.data-00000-of-00001", "ckpt-1.index"]
