"""End to end, exactly as a user runs it: generate + convert -> train -> evaluate -> caption -> export (subprocesses)."""

from __future__ import annotations

import json
import math
import os
import re

import pytest
import tensorflow as tf

from caption_app import config as config_lib
from tests.conftest import run_cli


@pytest.mark.slow
def test_end_to_end(tmp_path):
    data, run = str(tmp_path / "data"), str(tmp_path / "run")

    proc = run_cli("tfrecords_tools", "shapes", "--out", data, "--num-train", "40", "--num-val", "8",
                   "--num-test", "8", "--image-size", "32", "--min-word-count", "1", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(data, "manifest.json")) as f:
        manifest = json.load(f)
    assert {s: manifest["splits"][s]["num_images"] for s in ("train", "val", "test")} == \
        {"train": 40, "val": 8, "test": 8}
    assert os.path.isfile(os.path.join(data, "vocab.txt"))

    # One pass of cross-entropy, then one of self-critical training: evaluate, caption and export below
    # read the SCST checkpoint.
    proc = run_cli("caption_app", "train", "--config", "tiny", "--data", data, "--run-dir", run,
                   "--set", "train.epochs=1", "--set", "train.scst_epochs=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = config_lib.load(os.path.join(run, "config.json"))
    assert config.name == "tiny" and config.train.epochs == 1 and config.train.scst_epochs == 1
    assert f"{40 // config.train.batch_size} steps/epoch" in proc.stdout  # from the manifest
    assert "phase1: epochs 1-1" in proc.stdout and "XLA on" in proc.stdout
    assert "scst: epochs 2-2" in proc.stdout and "scst/start/ckpt-1" in proc.stdout
    assert re.search(r"reward: [0-9.]+", proc.stdout), proc.stdout[-2000:]
    assert re.search(r"trained 2 epochs in \d+s; val perplexity [0-9.]+", proc.stdout), proc.stdout[-2000:]
    with open(os.path.join(run, "state.json")) as f:
        assert json.load(f) == {"epochs_done": 2, "total_epochs": 2, "finished": True}
    for name in ("fingerprint.json", "vocab.txt", "tensor_sizes.json", "checkpoints/ckpt-2.index"):
        assert os.path.isfile(os.path.join(run, name)), name

    proc = run_cli("caption_app", "evaluate", "--run-dir", run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(run, "metrics.json")) as f:
        metrics = json.load(f)
    assert list(metrics) == ["perplexity", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr",
                             "num_images"]
    assert metrics["num_images"] == 8
    assert math.isfinite(metrics["perplexity"]) and metrics["perplexity"] > 1
    assert "perplexity" in proc.stdout and "CIDEr" in proc.stdout

    with open(os.path.join(data, "raw", "Flickr_8k.testImages.txt")) as f:
        names = f.read().split()[:2]
    paths = [os.path.join(data, "raw", "images", n) for n in names]
    proc = run_cli("caption_app", "caption", "--run-dir", run, *paths)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    beam = config.decode.beam_size
    for path in paths:
        start = lines.index(path)
        captions = lines[start + 1:start + 1 + beam]
        assert len(captions) == beam
        for i, line in enumerate(captions, 1):
            assert re.fullmatch(rf"  {i}\. .*  \(log p = -?[0-9.]+\)", line), line
    assert len(lines) == len(paths) * (1 + beam)

    # Export, then serve the same images from the SavedModel: the same captions and log-probabilities.
    exports = str(tmp_path / "exports")
    proc = run_cli("export", "--run-dir", run, "--out", exports)
    assert proc.returncode == 0, proc.stderr[-3000:]
    version_dir = os.path.join(exports, "caption", "1")
    assert f"exported {version_dir}" in proc.stdout
    images = []
    for path in paths:
        with open(path, "rb") as f:
            images.append(f.read())
    out = tf.saved_model.load(version_dir).signatures["serving_default"](image_bytes=tf.constant(images))
    assert out["valid"].numpy().all()
    for row, path in enumerate(paths):
        start = lines.index(path)
        for i in range(beam):
            m = re.fullmatch(rf"  {i + 1}\. (.*)  \(log p = (-?[0-9.]+)\)", lines[start + 1 + i])
            assert m.group(1) == out["captions"][row, i].numpy().decode()
            assert abs(float(m.group(2)) - out["log_probs"][row, i].numpy()) <= 6e-4  # printed to 3 decimals
