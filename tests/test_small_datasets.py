"""Small datasets are told the truth: a conversion that leaves val or test empty warns and says
what to change, training without val data says so once, and evaluating an empty split is one
clear error line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from caption_app.__main__ import main as caption_main
from tests.conftest import encode_image
from tfrecords_tools import report
from tfrecords_tools.__main__ import main as tfrecords_main
from tfrecords_tools.source_api import hash_split


def _jsonl_dataset(root, n: int = 10):
    """n images that the default 5% / 5% hash split all puts in train (as 10 images usually are)."""
    rng = np.random.default_rng(0)
    (root / "imgs").mkdir(parents=True)
    names = [f"{i}.png" for i in range(100) if hash_split(f"imgs/{i}.png", 0.05, 0.05) == "train"][:n]
    lines = []
    for i, name in enumerate(names):
        (root / "imgs" / name).write_bytes(encode_image(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "PNG"))
        lines.append(json.dumps({"image": f"imgs/{name}", "captions": ["a red square", "a small blue circle"]}))
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return root / "captions.jsonl"


def test_empty_split_warnings_name_the_split_and_what_to_change():
    def manifest(source, val, test, **info):
        return {"source": source, "source_info": info,
                "splits": {"train": {"num_images": 10}, "val": {"num_images": val}, "test": {"num_images": test}}}

    assert report.empty_split_warnings(manifest("flickr8k", 1, 1)) == []
    shapes, = report.empty_split_warnings(manifest("shapes", 2, 0))
    assert shapes.startswith("warning: the test split is empty (0 of 12 images)") and "--num-test" in shapes
    val, = report.empty_split_warnings(manifest("flickr30k", 0, 3))
    assert "no validation perplexity" in val and "--val-fraction" in val
    coco, = report.empty_split_warnings(manifest("coco", 0, 3))
    assert "the coco source assigned no image to val" in coco


@pytest.mark.slow
def test_ten_jsonl_images_warn_then_train_without_val_then_evaluate_refuses(tmp_path, capsys):
    data, run = tmp_path / "data", tmp_path / "run"
    jsonl = _jsonl_dataset(tmp_path / "raw")
    assert tfrecords_main(["jsonl", "--file", str(jsonl), "--out", str(data), "--min-word-count", "1",
                           "--no-progress"]) == 0
    manifest = json.loads((data / "manifest.json").read_text())
    assert [manifest["splits"][s]["num_images"] for s in ("train", "val", "test")] == [10, 0, 0]
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "warning: the val split is empty (0 of 10 images), so training reports no validation perplexity; "
        "records without a 'split' field go to val by hash with --val-fraction 0.05, which gave none of 10 "
        "images: raise --val-fraction (e.g. 0.2) or mark some records 'split': 'val'",
        "warning: the test split is empty (0 of 10 images), so `evaluate --split test` has nothing to score; "
        "records without a 'split' field go to test by hash with --test-fraction 0.05, which gave none of 10 "
        "images: raise --test-fraction (e.g. 0.2) or mark some records 'split': 'test'"]

    assert caption_main(["train", "--config", "tiny", "--data", str(data), "--run-dir", str(run), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.count("no validation split") == 2, out  # once before training, once in the last line
    assert f"no validation split: {data} has no val images" in out
    assert "None" not in out and "; no validation split; run dir:" in out

    assert caption_main(["evaluate", "--run-dir", str(run), "--split", "test"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: the test split of {data} has no images, so there is nothing to evaluate; "
                   "evaluate another split (--split train) or re-convert with a test split"]
