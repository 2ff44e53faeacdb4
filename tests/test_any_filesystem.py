"""Data, run and export dirs on any TensorFlow file system (caption_app/io_utils.py).

TensorFlow's in-memory `ram://` file system stands in for gs://, s3:// and
hdfs://: it is served by tf.io.gfile only, so anything that still goes through
`os` either fails or leaves a local folder named `ram:` behind. It lives in
this process's memory, so every step runs in-process through the CLIs' own
`main` functions, with the working directory an empty tmp_path.
"""

from __future__ import annotations

import json
import os
import uuid

import numpy as np
import pytest
import tensorflow as tf

from caption_app import io_utils
from caption_app.data import manifest as manifest_lib
from tests.conftest import encode_image, read_records


def _root() -> str:
    return f"ram://{uuid.uuid4().hex[:12]}"  # ram:// is shared by the whole test process


def test_is_remote():
    assert io_utils.is_remote("gs://bucket/run") and io_utils.is_remote("ram://x")
    assert not io_utils.is_remote("runs/coco") and not io_utils.is_remote("/tmp/gs:/x")
    assert io_utils.abspath("gs://bucket/run") == "gs://bucket/run"  # os.path.abspath gives CWD/gs:/bucket/run


def test_s3_without_tensorflow_io_says_what_to_install():
    try:
        import tensorflow_io  # noqa: F401
    except ImportError:
        with pytest.raises(OSError, match=r"s3:// paths need tensorflow-io's file system plugins.*pip install"):
            io_utils.exists("s3://bucket/data")
    else:
        assert io_utils.is_remote("s3://bucket/data")  # the plugins registered s3


def test_atomic_writers_and_helpers_on_ram(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = _root()
    path = f"{root}/a/b/file.json"
    io_utils.write_json_atomic(path, {"x": 1})  # the folders are created
    assert io_utils.read_json(path) == {"x": 1}
    io_utils.write_text_atomic(path, "replaced\n")
    with io_utils.open(path) as f:
        assert f.read() == "replaced\n"
    assert io_utils.listdir(f"{root}/a/b") == ["file.json"]  # no .tmp left behind
    assert io_utils.isfile(path) and not io_utils.isdir(path) and io_utils.isdir(f"{root}/a")
    assert io_utils.getsize(path) == len("replaced\n")
    # A folder moves file by file on a URL, the `last` names after the others.
    io_utils.write_text_atomic(f"{root}/stage/sub/data", "d")
    io_utils.write_text_atomic(f"{root}/stage/manifest.json", "{}")
    io_utils.replace(f"{root}/stage", f"{root}/final", last=("manifest.json",))
    assert not io_utils.exists(f"{root}/stage")
    assert sorted(io_utils.listdir(f"{root}/final")) == ["manifest.json", "sub"]
    assert io_utils.read_bytes(f"{root}/final/sub/data") == b"d"
    io_utils.rmtree(f"{root}/final")
    assert not io_utils.exists(f"{root}/final/sub/data")
    io_utils.makedirs("ram://")  # the dirname of a file at the root: nothing to make
    assert os.listdir(tmp_path) == []  # nothing local, no folder named `ram:`


def test_jsonl_from_ram_in_parts_merged_and_inspected_on_ram(tmp_path, monkeypatch):
    """Inputs on a URL too (the JSONL file and its images), a two-part conversion merged there."""
    from tfrecords_tools.__main__ import main as tfrecords_main

    monkeypatch.chdir(tmp_path)
    root = _root()
    lines = []
    for i in range(8):
        pixels = np.full((8, 8, 3), 30 * i, np.uint8)
        with tf.io.gfile.GFile(f"{root}/in/imgs/{i}.png", "wb") as f:
            f.write(encode_image(pixels, "PNG"))
        lines.append(json.dumps({"image": f"imgs/{i}.png", "caption": f"a grey square number {i}", "split": "train"}))
    lines.append(json.dumps({"image": "imgs/missing.png", "caption": "gone", "split": "train"}))
    lines.append(json.dumps({"image": "imgs", "caption": "a folder", "split": "train"}))
    io_utils.write_text_atomic(f"{root}/in/data.jsonl", "\n".join(lines) + "\n")
    out = f"{root}/out"
    for index in range(2):
        assert tfrecords_main(["jsonl", "--file", f"{root}/in/data.jsonl", "--out", out, "--min-word-count", "1",
                               "--no-progress", "--num-parts", "2", "--part-index", str(index)]) == 0
        assert io_utils.isfile(f"{out}/parts/part-{index:05d}-of-00002/part.json")
    assert tfrecords_main(["merge", "--out", out]) == 0
    assert sorted(r["image_id"] for r in read_records(out, "train")) == [f"imgs/{i}.png" for i in range(8)]
    manifest = io_utils.read_json(f"{out}/manifest.json")
    assert {r: v["examples"] for r, v in manifest["skipped"].items()} == {"missing": ["imgs/missing.png"],
                                                                         "unreadable": ["imgs"]}  # a folder
    assert manifest["source_info"]["file"] == f"{root}/in/data.jsonl"
    assert not io_utils.exists(f"{out}/parts")  # merged parts are deleted
    assert tfrecords_main(["inspect", out]) == 0
    assert "<html" in io_utils.read_bytes(f"{out}/inspect.html").decode()
    # On a URL shards are checked to exist, not counted record by record (a request per record).
    shard = manifest["splits"]["train"]["files"][0]
    with tf.io.gfile.GFile(f"{out}/{shard}", "rb") as f:
        data = f.read()
    with tf.io.gfile.GFile(f"{out}/{shard}", "wb") as f:
        f.write(data[:-5])  # truncated: found when training reads it
    assert manifest_lib.load(out).split("train").num_images == 8
    tf.io.gfile.remove(f"{out}/{shard}")
    with pytest.raises(FileNotFoundError, match=f"lists shard {shard}, which is missing"):
        manifest_lib.load(out)
    assert os.listdir(tmp_path) == []  # nothing local, no folder named `ram:`


@pytest.mark.slow
def test_convert_train_evaluate_caption_export_on_ram(tmp_path, monkeypatch, capsys):
    from caption_app.__main__ import main as caption_main
    from export.__main__ import main as export_main
    from tfrecords_tools.__main__ import main as tfrecords_main

    monkeypatch.chdir(tmp_path)
    root = _root()
    data, run, out = f"{root}/data", f"{root}/run", f"{root}/export"

    assert tfrecords_main(["shapes", "--out", data, "--num-train", "12", "--num-val", "3", "--num-test", "3",
                           "--image-size", "32", "--min-word-count", "1", "--no-progress"]) == 0
    assert {"manifest.json", "vocab.txt", "raw"} <= set(tf.io.gfile.listdir(data))
    assert tf.io.gfile.glob(f"{data}/train-*.tfrecord")
    assert not [n for n in io_utils.listdir(data) if n.startswith(".")]  # the staging dir is gone

    # The frozen-backbone phase from the feature cache, so RUN/feature_cache is on ram:// too.
    assert caption_main(["train", "--config", "tiny", "--data", data, "--run-dir", run, "--quiet",
                         "--set", "train.epochs=1", "--set", "train.freeze_backbone=true",
                         "--set", "train.feature_cache=true"]) == 0
    err = capsys.readouterr().err
    assert f"{run} is not on a local file system, so it is not locked" in err
    [cache] = io_utils.listdir(f"{run}/feature_cache")
    assert io_utils.read_json(f"{run}/feature_cache/{cache}/cache.json")["splits"]["train"]["num_images"] == 12
    for name in ("config.json", "fingerprint.json", "vocab.txt", "manifest.json", "tensor_sizes.json",
                 "state.json", "checkpoints", "logs"):
        assert tf.io.gfile.exists(f"{run}/{name}"), name
    assert io_utils.read_json(f"{run}/state.json")["finished"] is True
    assert io_utils.read_json(f"{run}/manifest.json")["data_dir"] == data  # not made into CWD/ram:/...
    assert tf.train.latest_checkpoint(f"{run}/checkpoints") == f"{run}/checkpoints/ckpt-1"
    assert tf.io.gfile.glob(f"{run}/logs/*/events.out.tfevents.*")

    assert caption_main(["evaluate", "--run-dir", run, "--split", "test"]) == 0
    metrics = io_utils.read_json(f"{run}/metrics.json")
    assert metrics["num_images"] == 3
    assert tf.io.gfile.exists(f"{run}/eval/test-ckpt-1.json")

    image = sorted(tf.io.gfile.glob(f"{data}/raw/images/shapes_test_*.jpg"))[0]
    capsys.readouterr()
    assert caption_main(["caption", "--run-dir", run, "--json", f"{data}/raw/images/shapes_test_*.jpg"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in results][0] == image and all(r["captions"] for r in results)

    assert export_main(["--run-dir", run, "--out", out]) == 0
    version = f"{out}/caption/1"
    assert io_utils.listdir(f"{out}/caption") == ["1"]  # the staging dir is gone
    assert tf.io.gfile.exists(f"{version}/saved_model.pb")
    assert tf.io.gfile.exists(f"{version}/assets.extra/tf_serving_warmup_requests")
    assert io_utils.read_json(f"{version}/assets/config.json")["run_dir"] == run

    loaded = tf.saved_model.load(version)
    answer = loaded.signatures["serving_default"](image_bytes=tf.constant([io_utils.read_bytes(image)]))
    assert bool(answer["valid"].numpy()[0])
    assert answer["captions"].numpy()[0][0].decode() == results[0]["captions"][0]["caption"]

    assert os.listdir(tmp_path) == []  # nothing local, no folder named `ram:`
