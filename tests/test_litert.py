"""The LiteRT package: export -> captions in a process without TensorFlow equal the SavedModel's; bad images;
litert.json checked on load; the runner's numpy searches step for step against the in-graph ones.

One export of the shared tiny trained run per module (float32 only: the other variants convert the same
graphs with other weight types; bench/litert_bench.py converts and measures all three).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from caption_app.data.pipeline import decode_image, resize_image
from caption_app.data.vocabulary import END_ID, START_ID
from caption_app.inference.beam_search import beam_search
from caption_app.inference.captioner import TrainedCaptioner
from caption_app.inference.settings import DecodeSettings
from caption_app.inference.strategies import Greedy
from export import jpeg_fast, litert, litert_runner
from export.__main__ import main as export_main
from export.saved_model import ExportError
from tests import saved_model_ops
from tests.conftest import cli_env, encode_image

# The runner decodes each to TensorFlow's pixels: JPEGs with export/jpeg_fast.py, the others with Pillow.
IMAGES = {"photo.jpg": (32, 32, "JPEG", None), "resized.jpg": (45, 38, "JPEG", None), "plain.png": (32, 32, "PNG", None),
          "palette.gif": (32, 32, "GIF", "P"), "grey.bmp": (32, 32, "BMP", "L"), "alpha.png": (32, 32, "PNG", "RGBA")}


@pytest.fixture(scope="module")
def package(trained_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("litert")
    assert export_main(["--format", "litert", "--run-dir", trained_run.run_dir, "--out", str(out),
                        "--variant", "float32"]) == 0
    path = out / litert.DEFAULT_NAME / "1"
    assert os.listdir(path.parent) == ["1"]  # no staging dir left beside it
    return path


@pytest.fixture(scope="module")
def captioner(trained_run) -> TrainedCaptioner:
    return TrainedCaptioner.from_run_dir(trained_run.run_dir)


def _image_files(directory: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for name, (height, width, fmt, mode) in IMAGES.items():
        blocks = rng.integers(0, 256, (4, 4, 4 if mode == "RGBA" else 3), dtype=np.uint8)
        pixels = np.kron(blocks, np.ones((height // 4 + 1, width // 4 + 1, 1), np.uint8))[:height, :width]
        (directory / name).write_bytes(encode_image(pixels, fmt, mode))
        paths.append(directory / name)
    return paths


# Runs in a fresh interpreter with neither the repo nor TensorFlow importable on purpose; prints one JSON line.
_DRIVER = textwrap.dedent("""
    import contextlib, io, json, runpy, sys
    package, images = sys.argv[1], sys.argv[2:]
    sys.path.insert(0, package)  # as when caption.py runs as a script: pil_images.py beside it
    out, err = io.StringIO(), io.StringIO()
    sys.argv = [package + "/caption.py", *images]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(package + "/caption.py", run_name="__main__")
        except SystemExit as exit:
            code = exit.code
    runner = runpy.run_path(package + "/caption.py")
    captioner = runner["LiteRTCaptioner"](package)
    results = {}
    for name, search in (("model", True), ("steps", False)):
        found = [captioner.search(captioner.pixels(p), None, search) for p in images[:-2]]
        results[name] = {k: [r[k].tolist() for r in found] for k in ("ids", "scores")}
    greedy = [captioner.search(captioner.pixels(p), captioner.settings("greedy"), False) for p in images[:-2]]
    results["greedy"] = {k: [r[k].tolist() for r in greedy] for k in ("ids", "scores")}
    ops = sorted({op["op_name"] for r in captioner.runners.values() for op in r._interpreter._get_ops_details()})
    loaded = sorted({m.split(".")[0] for m in sys.modules})
    print(json.dumps({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue(), "results": results,
                      "ops": ops, "loaded": loaded}))
""")


def test_the_package_captions_like_the_saved_model_without_tensorflow(package, captioner, trained_run, tmp_path):
    described = json.loads((package / litert.PACKAGE_FILE).read_text())
    assert sorted(os.listdir(package)) == sorted([litert.PACKAGE_FILE, "vocab.txt", "caption.py", "pil_images.py",
                                                  "vocab_file.py", "jpeg_fast.py", "float32"])
    assert described["variants"] == {"float32": {role: {"file": f"float32/{role}.tflite",
                                                        "bytes": (package / "float32" / f"{role}.tflite").stat().st_size}
                                                 for role in ("encoder", "decode_step", "search")}}
    assert [(s["name"], s["width"]) for s in described["state"]] == list(captioner.state_sizes().items())
    units = captioner.decoder.lstm_units  # docs/serving.md's state table, the plain LSTM's row
    assert [(s["name"], str(s["width"])) for s in described["state"]] == \
        [(name, width.replace("H", str(units))) for name, width in saved_model_ops.documented_state_tensors()["lstm"]]
    assert described["decode"]["strategy"] == "beam" and "search_note" not in described
    assert (package / "vocab.txt").read_text() == (Path(trained_run.run_dir) / "vocab.txt").read_text()

    paths = _image_files(tmp_path)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    (tmp_path / "empty.png").write_bytes(b"")
    files = [str(p) for p in paths] + [str(tmp_path / "broken.jpg"), str(tmp_path / "empty.png")]
    proc = subprocess.run([sys.executable, "-c", _DRIVER, str(package), *files], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120, env=cli_env(PYTHONPATH=None))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not {"tensorflow", "keras", "caption_app", "export"} & set(report["loaded"])
    assert {"numpy", "PIL", "ai_edge_litert", "pil_images", "vocab_file", "jpeg_fast"} <= set(report["loaded"])
    assert not [op for op in report["ops"] if op.startswith("Flex") or op == "CUSTOM"], report["ops"]
    assert {"WHILE", "TOPK_V2", "CONV_2D", "LOG_SOFTMAX"} <= set(report["ops"])

    # The SavedModel's computation: TensorFlow's decoding and resize, then the in-graph search.
    pixels = tf.stack([decode_image(tf.constant(p.read_bytes()), captioner.image_size) for p in paths])
    beam = captioner.generate(pixels)
    greedy = captioner.generate(pixels, DecodeSettings(strategy="greedy", max_length=captioner.decode.max_length,
                                                       num_captions=1))
    for name, expected in (("model", beam), ("steps", beam), ("greedy", greedy)):
        found = report["results"][name]
        np.testing.assert_array_equal(np.concatenate(found["ids"]), expected.ids.numpy(), err_msg=name)
        np.testing.assert_allclose(np.concatenate(found["scores"]), expected.scores.numpy(), atol=1e-4, err_msg=name)
    captions = captioner.ids_to_text(beam.ids[:, 0]).numpy()
    # The command: a line per image, path TAB best caption; a line on stderr per unreadable image; exit 1.
    assert report["code"] == 1
    assert report["stdout"].splitlines() == [f"{p}\t{c.decode()}" for p, c in zip(files, captions)]
    errors = report["stderr"].splitlines()
    assert len(errors) == 2 and errors[0].startswith(f"error: {files[-2]}: ") and files[-1] in errors[1]


def test_the_runner_resizes_as_tensorflow_does():
    rng = np.random.default_rng(1)
    for height, width in ((45, 38), (20, 24), (96, 64)):
        pixels = (rng.random((height, width, 3)) * 255).astype(np.float32)
        for preprocess, tolerance in (("default", 0.05), ("im2txt", 1e-3)):
            ours = litert_runner.resize(pixels, 32, preprocess)
            theirs = resize_image(tf.constant(pixels), 32, preprocess).numpy()
            assert ours.shape == (32, 32, 3)
            np.testing.assert_allclose(ours, theirs, atol=tolerance, err_msg=f"{preprocess} {height}x{width}")


def test_jpegs_decode_to_tensorflows_pixels(tmp_path):
    """export/jpeg_fast.py gives tf.io.decode_jpeg's default pixels bit for bit (Pillow's accurate IDCT does not);
    a progressive JPEG is left to Pillow."""
    rng = np.random.default_rng(2)
    pixels = np.kron(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8), np.ones((9, 11, 1), np.uint8))[:43, :50]
    pixels = np.clip(pixels + rng.integers(-25, 25, pixels.shape), 0, 255).astype(np.uint8)
    for options in ({"subsampling": 0}, {"subsampling": 1}, {"subsampling": 2, "restart_marker_blocks": 3},
                    {"mode": "L", "quality": 50}):
        image = Image.fromarray(pixels).convert(options.pop("mode", "RGB"))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", **{"quality": 90, **options})
        theirs = tf.io.decode_jpeg(buffer.getvalue(), channels=3).numpy()
        np.testing.assert_array_equal(jpeg_fast.decode(buffer.getvalue()), theirs, err_msg=str(options))
    progressive = tmp_path / "progressive.jpg"
    Image.fromarray(pixels).save(progressive, "JPEG", progressive=True)
    with pytest.raises(jpeg_fast.Unsupported, match="progressive"):
        jpeg_fast.decode(progressive.read_bytes())
    assert litert_runner.read_image(str(progressive), 10**6).shape == (43, 50, 3)  # through Pillow


def _broken_copy(package: Path, tmp_path: Path, change) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(package, copy)
    described = json.loads((copy / litert.PACKAGE_FILE).read_text())
    change(copy, described)
    (copy / litert.PACKAGE_FILE).write_text(json.dumps(described))
    return copy


@pytest.mark.parametrize("change, message", [
    (lambda d, j: (d / "float32" / "decode_step.tflite").unlink(), r"decode_step\.tflite is missing"),
    (lambda d, j: j.update(vocab_size=j["vocab_size"] + 1), r"vocab\.txt holds \d+ words .* says vocab_size"),
    (lambda d, j: (d / "float32" / "encoder.tflite").write_bytes(b"x"), r"encoder\.tflite is 1 bytes"),
    (lambda d, j: j["variants"]["float32"]["encoder"].update(file="../encoder.tflite"), "not a file inside"),
    (lambda d, j: j.update(format_version=2), "format_version 2"),
    (lambda d, j: j["state"].pop(), r"encoder of float32 takes \['images'\] and gives"),
    (lambda d, j: j["state"][0].update(width=3), r"gives state_h .* says 3"),
], ids=["missing file", "vocab size", "truncated", "outside", "version", "state names", "state width"])
def test_litert_json_is_checked_on_load(package, tmp_path, change, message):
    copy = _broken_copy(package, tmp_path, change)
    with pytest.raises(litert_runner.PackageError, match=message):
        litert_runner.LiteRTCaptioner(str(copy))


def test_a_broken_package_is_one_line_and_exit_2(package, tmp_path, capsys):
    copy = _broken_copy(package, tmp_path, lambda d, j: j.update(vocab_size=7))
    assert litert_runner.main(["--package", str(copy), "image.png"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "vocab_size 7" in err[0]
    (tmp_path / "plain").mkdir()
    assert litert_runner.main(["--package", str(tmp_path / "plain"), "image.png"]) == 2
    assert "is not a LiteRT caption package" in capsys.readouterr().err


def test_export_refusals(trained_run, tmp_path, monkeypatch):
    with pytest.raises(ExportError, match="--strategy beam or --strategy greedy"):
        litert.export(trained_run.run_dir, str(tmp_path), strategy="sample")
    with pytest.raises(ExportError, match="--variant must be among"):
        litert.export(trained_run.run_dir, str(tmp_path), variants=("int4",))
    with pytest.raises(SystemExit):
        export_main(["--run-dir", trained_run.run_dir, "--out", str(tmp_path), "--variant", "int8"])  # saved_model

    def interrupt(function, variant="float32"):
        raise KeyboardInterrupt

    # An export interrupted midway leaves no version dir and no staging dir.
    monkeypatch.setattr(litert, "convert", interrupt)
    with pytest.raises(KeyboardInterrupt):
        litert.export(trained_run.run_dir, str(tmp_path), variants=("float32",))
    assert os.listdir(tmp_path / litert.DEFAULT_NAME) == []


def test_a_search_that_does_not_convert_is_left_to_the_runner(trained_run, tmp_path, capsys):
    """Greedy's in-graph search keys its rows by int64 (FloorDiv on int64 has no builtin kernel): the package
    then has no search model, says why, and its runner decodes greedily over decode_step."""
    assert export_main(["--format", "litert", "--run-dir", trained_run.run_dir, "--out", str(tmp_path),
                        "--variant", "float32", "--strategy", "greedy"]) == 0
    assert "note: the greedy search did not convert to builtin LiteRT ops (needs TensorFlow ops LiteRT has " \
           "no builtin kernel for: FloorDiv" in capsys.readouterr().out
    package = tmp_path / litert.DEFAULT_NAME / "1"
    captioner = litert_runner.LiteRTCaptioner(str(package))
    assert set(captioner.runners) == {"encoder", "decode_step"} and captioner.settings()["strategy"] == "greedy"
    (image,) = _image_files(tmp_path)[:1]
    assert captioner.search(captioner.pixels(str(image)))["ids"].shape == (1, 1, captioner.settings()["max_length"])
    with pytest.raises(litert_runner.PackageError, match="has no search model .*FloorDiv"):
        captioner.search(captioner.pixels(str(image)), use_search_model=True)


def _fake_step(seed: int, vocab: int = 7, width: int = 5):
    """A small random recurrent next-word table: numpy's step and the same as TensorFlow's."""
    rng = np.random.RandomState(seed)
    embed, recur = rng.randn(vocab, width).astype(np.float32) * 2, rng.randn(width, width).astype(np.float32)
    out = rng.randn(width, vocab).astype(np.float32) * 2

    def step(ids, state):
        h = np.tanh(state[0] @ recur + embed[ids]).astype(np.float32)
        logits = h @ out
        top = logits.max(-1, keepdims=True)
        return (logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))).astype(np.float32), [h]

    def tf_step(ids, state):
        log_probs, new_state = step(ids.numpy(), [s.numpy() for s in state])
        return tf.constant(log_probs), [tf.constant(new_state[0])]

    return step, tf_step, rng.randn(3, width).astype(np.float32)


@pytest.mark.parametrize("beam, length, alpha, words_per_beam, ngram", [
    (3, 6, 0.0, 0, 0), (2, 5, 0.7, 0, 0), (4, 7, 1.0, 2, 0), (3, 8, 0.0, 0, 2), (1, 4, 0.0, 0, 1)])
def test_numpy_searches_match_the_graphs(beam, length, alpha, words_per_beam, ngram):
    """The runner's beam search and greedy give the in-graph searches' ids, scores, log-probs and lengths
    exactly (ties, early stop, truncation, length normalization, words per beam, no-repeat n-grams)."""
    for seed in range(2):
        step, tf_step, initial = _fake_step(seed)
        common = dict(start_id=START_ID, end_id=END_ID, max_length=length)
        ours = litert_runner.beam_search(step, [initial], beam_size=beam, length_normalization=alpha,
                                         words_per_beam=words_per_beam, no_repeat_ngram=ngram, **common)
        theirs = beam_search(tf_step, [tf.constant(initial)], beam_size=beam, length_normalization=alpha,
                             words_per_beam=words_per_beam, no_repeat_ngram=ngram, **common)
        ours_greedy = litert_runner.greedy_search(step, [initial], length_normalization=alpha,
                                                  no_repeat_ngram=ngram, **common)
        theirs_greedy = Greedy(length_normalization=alpha, no_repeat_ngram=ngram).search(
            tf_step, [tf.constant(initial)], **common)
        for key, value in theirs._asdict().items():
            np.testing.assert_array_equal(ours[key], value.numpy(), err_msg=f"beam {key}")
            np.testing.assert_array_equal(ours_greedy[key], getattr(theirs_greedy, key).numpy(),
                                          err_msg=f"greedy {key}")
