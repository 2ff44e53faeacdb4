"""Hostile input and operator mistakes around training: one writer per run dir, only run dirs
written to, damaged checkpoints, damaged data dirs, an edited vocabulary, out-of-range config
values, records without a usable caption. Each error is one line on stderr with exit code 2
and nothing in the run dir is lost."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow as tf

from caption_app.runs import checkpoints as checkpoints_lib
from caption_app.runs import context as run_context
from caption_app.runs import loader as run_loader
from caption_app.__main__ import main as cli_main
from caption_app.inference.image_files import caption_files
from caption_app.data import manifest as manifest_lib
from caption_app.data import records
from caption_app.data.pipeline import make_dataset
from caption_app.data.vocabulary import Vocabulary
from caption_app.evaluation.evaluate import evaluate
from tests.conftest import REPO_ROOT, cli_env, run_cli, set_args, tiny_config

LOCK_FILE = "run.lock"  # caption_app.runs.lock.LOCK_FILE (spelt out: the names below are what users see)


def _train_args(data: str, run: str, *assignments: str) -> list[str]:
    return ["train", "--config", "tiny", "--data", data, "--run-dir", run, "--quiet", *set_args(*assignments)]


def _error_line(capsys) -> str:
    """The CLI's stderr: one `error: ...` line and no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def _copy_run(trained_run, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained_run.run_dir, run)
    (run / LOCK_FILE).unlink(missing_ok=True)
    return run


def _copy_data(shapes_data: str, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(shapes_data, data, ignore=shutil.ignore_patterns("raw"))
    return data


def _edit_manifest(data: Path, edit) -> None:
    path = data / manifest_lib.MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


# ---------------------------------------------------------------------------
# One writer per run dir.

@pytest.mark.parametrize("command", ["train", "cache-features"])
def test_second_writer_on_a_locked_run_dir_is_refused_naming_the_holder(shapes_data, tmp_path, capsys, command):
    run = tmp_path / "run"
    run.mkdir()
    # The lock's protocol, spelt out: flock on RUN/run.lock, the holder described in it as JSON.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, json, os, socket, time; "
         f"fd = os.open({str(run / LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); "
         "os.write(fd, json.dumps({'host': socket.gethostname(), 'pid': os.getpid(), "
         "'started': '2026-11-29T20:41:07+00:00', 'command': 'train'}).encode()); "
         "print('locked', flush=True); time.sleep(120)"],
        cwd=REPO_ROOT, env=cli_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        args = _train_args(shapes_data, str(run))
        if command == "cache-features":
            args = ["cache-features", "--config", "tiny", "--data", shapes_data, "--run-dir", str(run),
                    *set_args("train.feature_cache=true", "train.freeze_backbone=true")]
        code = cli_main(args)
        line = _error_line(capsys)
    finally:
        holder.kill()
        holder.wait()
    assert code == 2
    assert f"pid {holder.pid} on host {socket.gethostname()}, started 2026-11-29T20:41:07+00:00" in line
    assert sorted(os.listdir(run)) == [LOCK_FILE]  # nothing else written


def test_lock_left_by_a_dead_process_is_taken_over_with_a_note(shapes_data, tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_FILE).write_text(json.dumps(
        {"host": socket.gethostname(), "pid": dead.pid, "started": "2026-01-01T00:00:00+00:00",
         "command": "train"}))
    assert cli_main(_train_args(shapes_data, str(run))) == 0
    err = capsys.readouterr().err
    assert f"taking over the lock of {run} left by pid {dead.pid}" in err
    assert checkpoints_lib.has_checkpoint(str(run))


# ---------------------------------------------------------------------------
# Only run dirs are written to.

def test_a_folder_that_is_not_a_run_dir_is_refused_and_left_untouched(shapes_data, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("config.json", "manifest.json", "vocab.txt"):
        (mine / name).write_text(f"my own {name}\n")
    assert cli_main(_train_args(shapes_data, str(mine))) == 2
    line = _error_line(capsys)
    assert "not a run dir" in line and "config.json, manifest.json, vocab.txt" in line
    assert sorted(os.listdir(mine)) == ["config.json", "manifest.json", "vocab.txt"]
    assert (mine / "config.json").read_text() == "my own config.json\n"


def test_a_run_dir_that_is_a_file_gives_a_clear_error(shapes_data, tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("keep me\n")
    assert cli_main(_train_args(shapes_data, str(path))) == 2
    assert "is a file, not a directory" in _error_line(capsys)
    assert path.read_text() == "keep me\n"


# ---------------------------------------------------------------------------
# Damaged checkpoints: resume from the newest that restores, never start over them.

def _damage(run: Path, how: str) -> None:
    checkpoints = run / "checkpoints"
    if how == "index missing":
        (checkpoints / "ckpt-2.index").unlink()
    elif how == "data truncated":
        data = next(checkpoints.glob("ckpt-2.data-*"))
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    elif how == "checkpoint file gone":
        (checkpoints / "checkpoint").unlink()
        (checkpoints / "ckpt-2.index").write_bytes(b"garbage")


@pytest.mark.parametrize("how", ["index missing", "data truncated", "checkpoint file gone"])
def test_resume_skips_a_damaged_newest_checkpoint_and_says_why(trained_run, tmp_path, capsys, how):
    run = _copy_run(trained_run, tmp_path)
    _damage(run, how)
    ctx = run_context.RunContext.create(tiny_config("train.epochs=2", "train.learning_rate=0.02"),
                                        trained_run.data_dir, str(run), lock="train")
    ctx.release()
    assert ctx.resume.path.endswith("ckpt-1") and ctx.resume.epoch == 1
    assert f"skipped checkpoint {run / 'checkpoints' / 'ckpt-2'}" in capsys.readouterr().err


def test_train_stops_when_no_checkpoint_restores_and_lists_them(trained_run, tmp_path, capsys):
    run = _copy_run(trained_run, tmp_path)
    for index in (run / "checkpoints").glob("ckpt-*.index"):
        index.unlink()
    (run / "checkpoints" / "checkpoint").unlink()
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert cli_main(_train_args(trained_run.data_dir, str(run), "train.epochs=3")) == 2
    line = _error_line(capsys)
    assert "ckpt-1" in line and "ckpt-2" in line and "index" in line
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before  # nothing trained over them


@pytest.mark.parametrize("command", ["caption", "evaluate"])
def test_caption_and_evaluate_fall_back_past_a_damaged_checkpoint(trained_run, tmp_path, capsys, command):
    run = _copy_run(trained_run, tmp_path)
    _damage(run, "data truncated")
    if command == "caption":
        images = sorted(glob.glob(os.path.join(trained_run.data_dir, "raw", "images", "*.jpg")))[:1]
        assert len(caption_files(str(run), images)[0]["captions"]) == trained_run.config.decode.beam_size
    else:
        evaluate(str(run), "val", json_path=str(tmp_path / "m.json"), verbose=False)
        details = json.loads((run / "eval" / "val-ckpt-1.json").read_text())
        assert details["checkpoint"].endswith("ckpt-1")
    assert "skipped checkpoint" in capsys.readouterr().err
    # A damaged checkpoint asked for by name is an error naming it.
    with pytest.raises(RuntimeError, match="ckpt-2.*does not restore"):  # run_dir.CheckpointError
        run_loader.load_model(str(run), str(run / "checkpoints" / "ckpt-2"))


# ---------------------------------------------------------------------------
# The data dir is validated before training.

@pytest.mark.parametrize("edit, expected", [
    (lambda m: m["splits"]["train"].update(num_images=-40), "num_images is -40"),
    (lambda m: m.pop("tokenizer"), "lacks tokenizer"),
    (lambda m: m.update(max_captions_per_image=0), "max_captions_per_image is 0"),
    (lambda m: m["splits"]["train"].update(num_images=m["splits"]["train"]["num_images"] + 1),
     "shard(s) hold 40 records"),
])
def test_an_impossible_manifest_is_refused_with_what_is_wrong(shapes_data, tmp_path, edit, expected):
    data = _copy_data(shapes_data, tmp_path)
    _edit_manifest(data, edit)
    with pytest.raises(ValueError, match="re-convert") as err:  # manifest.ManifestError
        manifest_lib.load(str(data))
    assert expected in str(err.value)


def test_train_on_an_impossible_manifest_exits_2_before_writing(shapes_data, tmp_path):
    data = _copy_data(shapes_data, tmp_path)
    _edit_manifest(data, lambda m: m["splits"]["train"].update(num_images=-40))
    run = tmp_path / "run"
    # A subprocess with a timeout: with num_images -40, training used to hang.
    result = run_cli("caption_app", *_train_args(str(data), str(run)), timeout=180)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("error: ")] == [
        result.stderr.strip().splitlines()[-1]]
    assert "num_images is -40" in result.stderr and "re-convert" in result.stderr
    assert not run.exists()


def test_a_truncated_shard_is_named(shapes_data, tmp_path):
    data = _copy_data(shapes_data, tmp_path)
    shard = Path(manifest_lib.load(str(data)).files("train")[0])
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ValueError, match=f"shard {shard} is truncated.*re-convert"):  # ManifestError
        manifest_lib.load(str(data))


def test_a_corrupted_record_during_training_names_its_shard(shapes_data, tmp_path, capsys):
    data = _copy_data(shapes_data, tmp_path)
    shard = Path(manifest_lib.load(str(data)).files("train")[0])
    damaged = bytearray(shard.read_bytes())
    damaged[200] ^= 0xFF  # inside the first record's data: its CRC fails, its length is intact
    shard.write_bytes(bytes(damaged))
    assert cli_main(_train_args(str(data), str(tmp_path / "run"))) == 2
    line = _error_line(capsys)
    assert f"damaged record data in {shard} (corrupted record" in line and "re-convert" in line


# ---------------------------------------------------------------------------
# The vocabulary is checked against the fingerprint.

def _swap_two_words(run: Path) -> None:
    path = run / "vocab.txt"
    lines = path.read_text().splitlines()
    lines[0], lines[1] = lines[1], lines[0]
    path.write_text("\n".join(lines) + "\n")


def test_an_edited_run_vocabulary_is_refused_by_caption_and_resume(trained_run, tmp_path, capsys):
    run = _copy_run(trained_run, tmp_path)
    _swap_two_words(run)
    images = sorted(glob.glob(os.path.join(trained_run.data_dir, "raw", "images", "*.jpg")))[:1]
    assert cli_main(["caption", "--run-dir", str(run), *images]) == 2
    assert "vocab.txt is not the vocabulary" in _error_line(capsys)
    assert cli_main(_train_args(trained_run.data_dir, str(run), "train.epochs=3")) == 2
    assert "vocab.txt is not the vocabulary" in _error_line(capsys)


# ---------------------------------------------------------------------------
# Config values are validated before anything is written.

@pytest.mark.parametrize("assignment, key", [
    ("train.epochs=0", "train.epochs"),
    ("train.batch_size=0", "train.batch_size"),
    ("data.max_caption_length=1", "data.max_caption_length"),
    ("data.captions_per_image=-1", "data.captions_per_image"),
    ("data.bucket_caption_rank=0", "data.bucket_caption_rank"),
])
def test_out_of_range_config_values_are_refused_before_writing(shapes_data, tmp_path, capsys, assignment, key):
    run = tmp_path / "run"
    assert cli_main(_train_args(shapes_data, str(run), assignment)) == 2
    line = _error_line(capsys)
    assert line.startswith(f"error: {key} must be")
    assert not run.exists()


# ---------------------------------------------------------------------------
# Records without a usable caption are skipped, not trained on as <start><end>.

def test_records_without_a_usable_caption_are_skipped_and_reported(shapes_data, tmp_path, capfd):
    data = _copy_data(shapes_data, tmp_path)
    manifest = manifest_lib.load(str(data))
    shard = manifest.files("train")[0]
    examples = [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(shard)]
    first = examples[0].features.feature
    image_id = first[records.IMAGE_ID].bytes_list.value[0].decode()
    captions = list(first[records.CAPTIONS].bytes_list.value)
    first[records.CAPTIONS].bytes_list.value[:] = [b"?! ..." for _ in captions]
    with tf.io.TFRecordWriter(shard) as writer:
        for example in examples:
            writer.write(example.SerializeToString())

    config = tiny_config()
    vocab = Vocabulary.load(manifest.vocab_path)
    ds = make_dataset(config, manifest_lib.load(str(data)), vocab, "train", training=False, batch_size=64,
                      with_ids=True)
    ids = [i.decode() for _, _, meta in ds for i in meta["image_id"].numpy()]
    assert len(ids) == manifest.split("train").num_images - 1 and image_id not in ids
    assert f'skipped record "{image_id}" (no usable caption' in capfd.readouterr().err


# ---------------------------------------------------------------------------
# RUN/config.json is read through one validating loader (caption_app/runs/loader.py).

def _edit_config(run: Path, edit) -> None:
    path = run / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


def test_an_edited_architecture_is_reported_as_the_config_not_as_a_damaged_checkpoint(trained_run, tmp_path,
                                                                                      capsys):
    from export.__main__ import main as export_main

    run = _copy_run(trained_run, tmp_path)
    units = trained_run.config.model.lstm_units
    _edit_config(run, lambda c: c["model"].update(lstm_units=units * 2))
    image = sorted(glob.glob(os.path.join(trained_run.data_dir, "raw", "images", "*.jpg")))[0]
    for main, args in ((cli_main, ["caption", "--run-dir", str(run), image]),
                       (export_main, ["--run-dir", str(run), "--out", str(tmp_path / "models"), "--no-warmup"])):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "describes another architecture than the run's checkpoints" in err, err
        assert f"lstm_units={units}" in err and f"lstm_units={units * 2}" in err
        assert "backup" not in err and "move it away" not in err and "Traceback" not in err
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("edit, expected", [
    (lambda c: c["data"].update(image_size="big"), "data.image_size must be an integer, got 'big'"),
    (lambda c: c["model"].update(lstm_units=1.5), "model.lstm_units must be an integer, got 1.5"),
    (lambda c: c.pop("decode"), "has no decode section"),
    (lambda c: c["decode"].update(beam_size=-2), "beam_size must be a positive integer"),
    (lambda c: c.update(model=[]), "model must be a section"),
])
def test_a_bad_run_config_is_one_config_error_line_naming_the_key(trained_run, tmp_path, capsys, edit, expected):
    run = _copy_run(trained_run, tmp_path)
    _edit_config(run, edit)
    image = sorted(glob.glob(os.path.join(trained_run.data_dir, "raw", "images", "*.jpg")))[0]
    assert cli_main(["caption", "--run-dir", str(run), image]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"error: {run / 'config.json'}") and expected in line, line


@pytest.mark.parametrize("assignment", ["train.batch_size=1000", "model.backbone_weights=/nonexistent/weights.h5",
                                        "train.lr_schedule=linear"])
def test_a_failed_start_leaves_no_new_run_dir_behind(shapes_data, tmp_path, capsys, assignment):
    run = tmp_path / "run"
    assert cli_main(_train_args(shapes_data, str(run), assignment)) == 2
    assert _error_line(capsys)
    left = sorted(p.name for p in run.iterdir()) if run.exists() else []
    assert left in ([], [LOCK_FILE]), left  # at most the (released) lock file: nothing that looks like a run
