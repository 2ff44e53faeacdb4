"""Downstream of a trained run dir: evaluate (once, and --watch ending) and caption.

All tests share the session's tiny trained run; the ones that write into a run
dir from another process work on a copy.
"""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from caption_app.evaluation import metrics as metrics_lib
from caption_app.runs import layout as run_layout
from caption_app.runs import loader as run_loader
from caption_app.__main__ import main as cli_main
from caption_app.inference.image_files import caption_files, expand_paths
from caption_app.data import manifest as manifest_lib
from caption_app.data.pipeline import make_dataset
from caption_app.evaluation.evaluate import evaluate
from caption_app.model.loss import DatasetNLL
from tests.conftest import encode_image, run_cli

EXPECTED_KEYS = ["perplexity", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "num_images"]


@pytest.fixture(scope="module")
def evaluated(trained_run):
    """evaluate(run_dir, "test") on the shared run, once for this module."""
    return evaluate(trained_run.run_dir, "test", verbose=False)


def _copy_run(trained_run, tmp_path) -> str:
    run = str(tmp_path / "run")
    shutil.copytree(trained_run.run_dir, run, ignore=shutil.ignore_patterns("metrics.json", "eval", "eval_*"))
    return run


# ----------------------------------------------------------------------------- evaluate

def test_evaluate_returns_and_writes_the_metrics(trained_run, evaluated):
    assert list(evaluated) == EXPECTED_KEYS
    manifest = manifest_lib.load(trained_run.data_dir)
    assert evaluated["num_images"] == manifest.split("test").num_images
    assert math.isfinite(evaluated["perplexity"]) and evaluated["perplexity"] > 1
    for key in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr"):
        assert isinstance(evaluated[key], float) and evaluated[key] >= 0
        if key != "CIDEr":
            assert evaluated[key] <= 1
    if shutil.which("java"):
        assert isinstance(evaluated["METEOR"], float)
    else:
        assert evaluated["METEOR"] is None
    with open(os.path.join(trained_run.run_dir, "metrics.json")) as f:
        assert json.load(f) == evaluated


def test_evaluate_perplexity_and_scores_match_their_inputs(trained_run, evaluated):
    run = trained_run.run_dir
    # Perplexity: the same sums over the same split, computed independently.
    model, config, vocab, sizes, _ = run_loader.load_model(run)
    manifest = manifest_lib.load(trained_run.data_dir)
    dataset = make_dataset(config, manifest, vocab, "test", training=False, sizes=sizes, batch_size=5)
    total_nll, tokens = DatasetNLL(model)(dataset)
    assert evaluated["perplexity"] == pytest.approx(metrics_lib.perplexity(total_nll, tokens), rel=1e-6)
    # Caption scores: the written captions and references, scored again.
    with open(os.path.join(run, "eval", "test-ckpt-2.json")) as f:
        details = json.load(f)
    captions = details["captions"]
    assert len(captions) == evaluated["num_images"] and details["metrics"] == evaluated
    assert details["beam_size"] == config.decode.beam_size and details["max_length"] == config.decode.max_length
    with open(os.path.join(trained_run.data_dir, "raw", "Flickr_8k.testImages.txt")) as f:
        assert sorted(captions) == sorted(f.read().split())
    for entry in captions.values():
        assert len(entry["references"]) == 5 and isinstance(entry["generated"], str)
        assert len(entry["generated"].split()) <= config.decode.max_length
    scores, _ = metrics_lib.caption_metrics({k: v["references"] for k, v in captions.items()},
                                            {k: v["generated"] for k, v in captions.items()})
    for key, value in scores.items():
        assert evaluated[key] == (pytest.approx(value) if value is not None else None)


def test_evaluate_errors(trained_run, tmp_path, capsys):
    assert cli_main(["evaluate", "--run-dir", trained_run.run_dir, "--split", "dev"]) == 2
    assert "dev" in capsys.readouterr().err
    assert cli_main(["evaluate", "--run-dir", str(tmp_path)]) == 2
    assert "not a run dir" in capsys.readouterr().err
    empty = _copy_run(trained_run, tmp_path)
    shutil.rmtree(os.path.join(empty, "checkpoints"))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        evaluate(empty, "test")


@pytest.mark.slow
def test_evaluate_cli_runs_once_and_exits(trained_run, tmp_path):
    run = _copy_run(trained_run, tmp_path)
    proc = run_cli("caption_app", "evaluate", "--run-dir", run, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(run, "metrics.json")) as f:
        metrics = json.load(f)
    assert list(metrics) == EXPECTED_KEYS
    assert metrics["num_images"] == manifest_lib.load(trained_run.data_dir).split("test").num_images
    assert "evaluated" in proc.stdout and "ckpt-2" in proc.stdout


@pytest.mark.slow
def test_evaluate_watch_ends_on_a_finished_run(trained_run, tmp_path):
    run = _copy_run(trained_run, tmp_path)
    assert run_layout.read_state(run)["finished"] is True
    proc = run_cli("caption_app", "evaluate", "--run-dir", run, "--split", "val", "--watch",
                   "--poll-seconds", "0.2", "--idle-timeout", "250", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training has finished; watch ends" in proc.stdout
    assert proc.stdout.count("evaluated ") == 1  # the latest checkpoint, once
    assert os.path.isfile(os.path.join(run, "eval", "val-ckpt-2.json"))
    assert os.path.isfile(os.path.join(run, "eval", "val-ckpt-2.html"))
    # The metrics in TensorBoard, at the checkpoint's epoch (tests/test_html_report.py checks every tag).
    events = [e for f in tf.io.gfile.glob(os.path.join(run, "logs", "eval_val", "events.*"))
              for e in tf.compat.v1.train.summary_iterator(f)]
    assert [(e.step, v.tag) for e in events for v in e.summary.value if v.tag == "metrics/CIDEr"] == \
        [(2, "metrics/CIDEr")]
    with open(os.path.join(run, "metrics.json")) as f:
        assert json.load(f)["num_images"] == manifest_lib.load(trained_run.data_dir).split("val").num_images


# ----------------------------------------------------------------------------- caption

@pytest.fixture(scope="module")
def images(trained_run, tmp_path_factory):
    """A folder of 3 test images (2 JPEG as converted, 1 PNG) and a corrupt file beside it."""
    root = tmp_path_factory.mktemp("caption_images")
    folder = root / "images"
    folder.mkdir()
    raw = os.path.join(trained_run.data_dir, "raw", "images")
    shutil.copy(os.path.join(raw, "shapes_test_00000.jpg"), folder / "a.jpg")
    shutil.copy(os.path.join(raw, "shapes_test_00001.jpg"), folder / "b.jpg")
    pixels = np.asarray(tf.io.decode_jpeg(open(os.path.join(raw, "shapes_test_00002.jpg"), "rb").read()))
    (folder / "c.png").write_bytes(encode_image(pixels, "PNG"))
    (folder / "notes.txt").write_text("not an image, and not an image extension")
    corrupt = root / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    return folder, corrupt


def test_expand_paths(images):
    folder, corrupt = images
    in_folder = [str(folder / n) for n in ("a.jpg", "b.jpg", "c.png")]
    assert expand_paths([str(folder)]) == [(p, None) for p in in_folder]
    assert expand_paths([str(folder / "*.jpg")]) == [(p, None) for p in in_folder[:2]]
    assert expand_paths([in_folder[2], str(corrupt), in_folder[0]]) == \
        [(in_folder[2], None), (str(corrupt), None), (in_folder[0], None)]
    # A pattern that gives nothing is one entry with its reason (tests/test_hostile_serving.py has more).
    assert expand_paths([str(folder / "nothing-here*.jpg")]) == \
        [(str(folder / "nothing-here*.jpg"), "no file matches this pattern")]


def _check_captions(result, num_results):
    assert "error" not in result
    captions = result["captions"]
    assert len(captions) == num_results
    scores = [c["score"] for c in captions]
    assert scores == sorted(scores, reverse=True)
    for c in captions:
        assert isinstance(c["caption"], str) and c["log_prob"] <= 0
        assert c["score"] == pytest.approx(c["log_prob"])  # length_normalization 0


def test_caption_files_on_a_folder_a_glob_and_a_file_list(trained_run, images, evaluated):
    folder, _ = images
    beam = trained_run.config.decode.beam_size
    results = caption_files(trained_run.run_dir, [str(folder), str(folder / "*.png"), str(folder / "b.jpg")])
    assert [r["image"] for r in results] == [str(folder / n) for n in ("a.jpg", "b.jpg", "c.png", "c.png", "b.jpg")]
    for r in results:
        _check_captions(r, beam)
    # The same image twice: the same captions; scores to float tolerance, since an
    # image's row position in a batch changes the CPU kernels' summation order.
    for i, j in ((2, 3), (1, 4)):
        assert [c["caption"] for c in results[i]["captions"]] == [c["caption"] for c in results[j]["captions"]]
        for a, b in zip(results[i]["captions"], results[j]["captions"]):
            assert a["log_prob"] == pytest.approx(b["log_prob"], rel=1e-4, abs=1e-4)
    # The same image, captioned by evaluate: the same best caption.
    with open(os.path.join(trained_run.run_dir, "eval", "test-ckpt-2.json")) as f:
        by_evaluate = json.load(f)["captions"]["shapes_test_00000.jpg"]
    assert results[0]["captions"][0]["caption"] == by_evaluate["generated"]
    assert results[0]["captions"][0]["score"] == pytest.approx(by_evaluate["score"], rel=1e-4, abs=1e-4)


def test_caption_files_reports_a_corrupt_image_and_captions_the_others(trained_run, images):
    folder, corrupt = images
    good = [str(folder / "a.jpg"), str(folder / "c.png")]
    results = caption_files(trained_run.run_dir, [good[0], str(corrupt), good[1]], num_results=1, beam_size=3)
    assert [r["image"] for r in results] == [good[0], str(corrupt), good[1]]
    assert "captions" not in results[1] and "a damaged" in results[1]["error"]
    _check_captions(results[0], 1)
    _check_captions(results[2], 1)


def test_caption_cli_json(trained_run, images, capsys):
    folder, corrupt = images
    args = ["caption", "--run-dir", trained_run.run_dir, "--json", "--num-captions", "2", "--beam-size", "3"]
    assert cli_main(args + [str(folder / "a.jpg"), str(corrupt)]) == 1  # an error among the results
    results = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in results] == [str(folder / "a.jpg"), str(corrupt)]
    _check_captions(results[0], 2)
    assert "error" in results[1]
