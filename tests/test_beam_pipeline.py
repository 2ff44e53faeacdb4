"""tfrecords_tools --runner: the Apache Beam pipeline writes the threaded converter's data dir.

The pipeline runs on the DirectRunner with 2 worker processes (multi_processing), as
`--runner direct` does; start-up takes several seconds, so these tests are few and slow.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from caption_app.data import manifest as manifest_lib
from tests.conftest import encode_image, read_records, run_cli, start_cli
from tfrecords_tools import layout

pytest.importorskip("apache_beam", reason="apache-beam is not installed (pip install -r requirements.txt)")

BEAM_ARGS = ("--runner", "direct", "--direct_num_workers=2", "--direct_running_mode=multi_processing")
SPLITS = ("train", "val", "test")


def _dataset(root: Path, num_images: int = 14) -> Path:
    """A JSONL dataset with what the converter must skip, count or re-encode."""
    images = root / "imgs"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    words = ["a", "dog", "cat", "runs", "on", "the", "grass", "red", "ball", "sits"]
    lines = []
    for i in range(num_images):
        pixels = rng.integers(0, 256, (8 + i % 3, 8, 3), dtype=np.uint8)
        fmt, ext = ("PNG", "png") if i % 4 == 1 else ("JPEG", "jpg")
        mode = "RGBA" if i == 5 else None  # transparency: stored re-encoded
        (images / f"{i}.{ext}").write_bytes(encode_image(pixels if mode is None else
                                                         np.dstack([pixels, pixels[..., :1]]), fmt, mode))
        split = "train" if i < num_images - 4 else SPLITS[1 + i % 2]
        captions = [" ".join(rng.choice(words, 4)) for _ in range(3 + (i == 3) * 4)]
        lines.append({"image": f"imgs/{i}.{ext}", "captions": captions, "split": split})
    (images / "bad.jpg").write_bytes(b"this is not an image")  # corrupt
    lines.append({"image": "imgs/bad.jpg", "caption": "a broken file", "split": "train"})
    lines.append({"image": "imgs/missing.jpg", "caption": "no such file", "split": "train"})
    lines.append({"image": "imgs/0.jpg", "caption": "...", "split": "train"})  # merged: an empty caption
    lines.append({"image": "imgs/2.jpg", "caption": "moved", "split": "val"})  # split_conflict
    path = root / "data.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def _convert(data: Path, out: Path, *extra: str, timeout: float = 300):
    return run_cli("tfrecords_tools", "jsonl", "--file", str(data), "--out", str(out), "--no-progress",
                   "--images-per-shard", "3", "--min-word-count", "2", "--max-captions-per-image", "5",
                   *extra, timeout=timeout)


def _dataset_of(out: Path) -> dict:
    manifest = json.loads((out / manifest_lib.MANIFEST).read_text())
    return {
        "records": {split: read_records(out, split) for split in SPLITS},
        "files": sorted(p.name for p in out.iterdir()),
        "vocab": (out / "vocab.txt").read_text(),
        "manifest": {k: v for k, v in manifest.items() if k != "created"},
    }


@pytest.fixture(scope="module")
def threaded(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("beam_input")
    data = _dataset(root)
    out = root / "threaded"
    result = _convert(data, out)
    assert result.returncode == 0, result.stderr
    return data, _dataset_of(out)


@pytest.mark.slow
def test_beam_writes_the_threaded_converters_data_dir(threaded, tmp_path):
    data, expected = threaded
    out = tmp_path / "beam"
    result = _convert(data, out, *BEAM_ARGS)
    assert result.returncode == 0, result.stderr
    got = _dataset_of(out)
    by_id = {s: {r["image_id"]: r for r in got["records"][s]} for s in SPLITS}
    for split in SPLITS:
        assert by_id[split] == {r["image_id"]: r for r in expected["records"][split]}
    assert got == expected  # same shards, same record order, vocabulary, manifest (examples too)
    manifest = got["manifest"]
    assert manifest["skipped"]["corrupt"] == {"count": 1, "examples": ["imgs/bad.jpg"]}
    assert manifest["skipped"]["missing"]["count"] == 1
    assert manifest["skipped"]["empty_caption"]["count"] == 1
    assert manifest["reencoded"]["alpha"]["count"] == 1
    assert manifest["caption_cap"]["images_capped"] == 1
    assert manifest["splits"]["train"]["num_shards"] == 4  # 10 images, 3 per shard
    # counted in Beam metrics too (summed over the worker processes)
    assert "skipped/corrupt 1" in result.stdout and "skipped/missing 1" in result.stdout
    assert "images_written 14" in result.stdout


@pytest.mark.slow
def test_beam_run_killed_midway_then_rerun(threaded, tmp_path):
    data, expected = threaded
    out = tmp_path / "out"
    proc = start_cli("tfrecords_tools", "jsonl", "--file", str(data), "--out", str(out), "--no-progress",
                     "--images-per-shard", "1", "--min-word-count", "2", "--max-captions-per-image", "5",
                     *BEAM_ARGS)
    deadline = time.monotonic() + 240
    shard = None
    while shard is None and proc.poll() is None and time.monotonic() < deadline:
        stages = list(out.glob(layout.STAGING_PREFIX + "*")) if out.exists() else []
        shard = next((p for s in stages for p in s.glob("*.tfrecord*")), None)
        time.sleep(0.01)
    assert shard is not None, f"no shard was written before the run ended: {proc.communicate()}"
    _kill_tree(proc.pid)
    proc.wait(timeout=60)
    # Killed: shards in the hidden staging dir, nothing that looks like a data dir.
    assert list(out.glob(layout.STAGING_PREFIX + "*"))
    assert not (out / manifest_lib.MANIFEST).exists() and not (out / "vocab.txt").exists()
    assert not list(out.glob("*.tfrecord"))

    # the rerun in one process (its multi-process output is the first test's)
    result = _convert(data, out, "--runner", "direct", "--direct_running_mode=in_memory")
    assert result.returncode == 0, result.stderr
    assert not list(out.glob(layout.STAGING_PREFIX + "*"))  # the stale staging dir was deleted
    assert _dataset_of(out) == expected


def _kill_tree(pid: int) -> None:
    """SIGKILLs `pid` and every process below it (the Beam worker processes)."""
    tree, i = [pid], 0
    while i < len(tree):
        try:
            for task in Path(f"/proc/{tree[i]}/task").iterdir():
                tree += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
        i += 1
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_shards_are_the_threaded_writers():
    """A record's shard (from its rank among the split's kept records) is the one the threaded
    writer puts it in: shard k holds records [n*k//S, n*(k+1)//S) of S = ceil(n / per_shard)."""
    from tfrecords_tools import beam_pipeline

    for n in range(1, 40):
        for per_shard in (1, 2, 3, 7, 1000):
            positions = {"train": [3 * i + 1 for i in range(n)]}  # kept records' input positions
            num_shards = -(-n // per_shard)
            want = [k for k in range(num_shards) for _ in range(n * k // num_shards, n * (k + 1) // num_shards)]
            got = [beam_pipeline._to_shard({"split": "train", "pos": pos},
                                           positions, per_shard)[0] for pos in positions["train"]]
            assert got == [("train", k, num_shards) for k in want], (n, per_shard)


def test_runner_usage_errors(tmp_path, capsys):
    from tfrecords_tools import __main__ as cli

    data = _dataset(tmp_path, num_images=4)
    out = tmp_path / "out"
    base = ["jsonl", "--file", str(data), "--out", str(out), "--no-progress"]
    assert cli.main(base + ["--runner", "NoSuchRunner"]) == 2
    assert "--runner 'NoSuchRunner': use one of direct, DataflowRunner" in capsys.readouterr().err
    assert cli.main(base + ["--runner", "direct", "--num-parts", "2", "--part-index", "0"]) == 2
    assert "drop --num-parts/--part-index" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # Beam options only with --runner
        cli.main(base + ["--direct_num_workers=2"])
    assert "unrecognized arguments: --direct_num_workers=2" in capsys.readouterr().err
    assert not out.exists()  # nothing written on a usage error


@pytest.mark.slow
def test_beam_worker_error_fails_cleanly_then_rerun(threaded, tmp_path, monkeypatch):
    """A DoFn that raises (here: an image that changed after its check) fails the run with one
    line and leaves the previous data dir; the rerun writes the right one. In-process runner,
    so the failure can be injected."""
    from tfrecords_tools import images, jsonl_csv, source_api

    data, expected = threaded
    out = tmp_path / "out"
    kw = dict(images_per_shard=3, min_word_count=2, max_captions_per_image=5, progress=False, verbose=False,
              runner="direct", pipeline_args=["--direct_running_mode=in_memory", "--direct_num_workers=1"])
    jsonl_csv.convert_records(str(data), "jsonl", out, **dict(kw, images_per_shard=100))  # a previous data dir
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = images.stored_bytes
    calls = []

    def changed_once(item, *args, **kwargs):
        calls.append(item.image_id)
        if len(calls) == 4:
            raise source_api.ConversionError(f"{item.path} changed while it was being converted; run again")
        return real(item, *args, **kwargs)

    monkeypatch.setattr(images, "stored_bytes", changed_once)
    with pytest.raises(source_api.ConversionError, match=r"^the Beam pipeline failed \(.*changed while"):
        jsonl_csv.convert_records(str(data), "jsonl", out, **kw)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched, no staging dir left
    jsonl_csv.convert_records(str(data), "jsonl", out, **kw)
    assert len(calls) > 4
    assert _dataset_of(out) == expected


@pytest.mark.slow
def test_beam_writes_a_data_dir_on_any_file_system(threaded, tmp_path, monkeypatch):
    """--out on a URL (ram:// for gs://): the shards, the summary the pipeline hands back and the swap
    all go through caption_app/io_utils.py. In-process runner: ram:// lives in this process only."""
    from caption_app import io_utils
    from tfrecords_tools import beam_pipeline, jsonl_csv

    data, expected = threaded
    monkeypatch.chdir(tmp_path)
    out = f"ram://beam-{os.getpid()}-{time.monotonic_ns()}/data"
    manifest = jsonl_csv.convert_records(
        str(data), "jsonl", out, images_per_shard=3, min_word_count=2, max_captions_per_image=5, progress=False,
        verbose=False, runner="direct", pipeline_args=["--direct_running_mode=in_memory", "--direct_num_workers=1"])
    assert {k: v for k, v in manifest.items() if k != "created"} == expected["manifest"]
    assert sorted(io_utils.listdir(out)) == expected["files"]  # no summary file, no staging dir left
    assert io_utils.read_bytes(f"{out}/vocab.txt").decode() == expected["vocab"]
    assert {split: read_records(out, split) for split in SPLITS} == expected["records"]
    assert os.listdir(tmp_path) == []  # nothing went to a local folder named `ram:`

    # The summary's own round trip, on the URL.
    stage = f"{out}/stage"
    beam_pipeline._write_summary(None, stage, {"skipped": {}, "reencoded": {}, "cap": [0, 0, []], "max_words": {},
                                               "max_captions": 2, "longest": {"3": 1}},
                                 {"dog": 2}, [{"split": "train", "shard": 0, "name": "train-00000-of-00001.tfrecord",
                                               "num_images": 1, "num_captions": 2}])
    summary = beam_pipeline._read_summary(stage, ["train"], beam_pipeline.report.Counted(), 5)
    assert summary["splits"]["train"].files == ("train-00000-of-00001.tfrecord",)
    assert summary["train_counts"] == {"dog": 2} and not io_utils.exists(f"{stage}/{beam_pipeline.SUMMARY_FILE}")
