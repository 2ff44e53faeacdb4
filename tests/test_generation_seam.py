"""One loaded captioner behind every path: `caption`, `evaluate`, the Python API and the export give the
captions of `TrainedCaptioner` itself on the same images (caption_app/inference/captioner.py)."""

from __future__ import annotations

import glob
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

import caption_app
from caption_app.data.pipeline import decode_image
from caption_app.inference.captioner import TrainedCaptioner
from caption_app.inference.settings import DecodeSettingsError
from tests import saved_model_ops


@pytest.fixture(scope="module")
def seam(trained_run, tmp_path_factory):
    """The shared run copied (evaluate writes into it), its test images, and the captioner's own
    best caption of each, decoded in-graph from the same bytes."""
    base = tmp_path_factory.mktemp("seam")
    run = str(base / "run")
    shutil.copytree(trained_run.run_dir, run, ignore=shutil.ignore_patterns("metrics.json", "eval", "eval_*"))
    paths = sorted(glob.glob(os.path.join(trained_run.data_dir, "raw", "images", "*test*.jpg")))
    assert len(paths) >= 8
    captioner = TrainedCaptioner.from_run_dir(run)
    images = tf.stack([decode_image(tf.constant(open(p, "rb").read()), captioner.image_size) for p in paths])
    result = captioner.generate(images)  # the run's beam: K captions per image
    texts = captioner.ids_to_text(result.ids).numpy()
    expected = {p: ([t.decode() for t in row], list(lp)) for p, row, lp in zip(paths, texts, result.log_probs.numpy())}
    scores = dict(zip(paths, result.scores.numpy()[:, 0]))
    return {"run": run, "base": base, "paths": paths, "captioner": captioner, "expected": expected,
            "best_scores": scores}


def _by_caption(seam):
    from caption_app.inference.image_files import caption_files

    return {r["image"]: ([c["caption"] for c in r["captions"]], [c["log_prob"] for c in r["captions"]])
            for r in caption_files(seam["run"], seam["paths"])}


def _by_evaluate(seam):
    """evaluate scores the best caption: it and its score, from RUN/eval/test-ckpt-N.json."""
    from caption_app.evaluation.evaluate import evaluate

    evaluate(seam["run"], "test", verbose=False, report_images=0)
    (details,) = glob.glob(os.path.join(seam["run"], "eval", "test-*.json"))
    with open(details) as f:
        captions = json.load(f)["captions"]
    for p in seam["paths"]:
        assert captions[os.path.basename(p)]["score"] == pytest.approx(seam["best_scores"][p], abs=1e-4)
    return {p: captions[os.path.basename(p)]["generated"] for p in seam["paths"]}


def _results(results, paths):
    return {p: (r.captions, r.log_probs) for p, r in zip(paths, results)}


def _by_api(seam):
    return _results(caption_app.Captioner.load(seam["run"]).caption(seam["paths"]), seam["paths"])


def _by_export(seam):
    from export.saved_model import export

    version_dir = export(seam["run"], str(seam["base"] / "models"), warmup=False)
    got = {}
    for path in (version_dir, os.path.dirname(version_dir)):  # a version dir, or the model base path
        got[path] = _results(caption_app.Captioner.load(path).caption(seam["paths"]), seam["paths"])
    assert got[version_dir] == got[os.path.dirname(version_dir)]
    return got[version_dir]


@pytest.mark.parametrize("path", ["caption", "evaluate", "api", "export"])
def test_every_path_gives_the_loaded_captioners_captions(seam, path):
    got = {"caption": _by_caption, "evaluate": _by_evaluate, "api": _by_api, "export": _by_export}[path](seam)
    expected = seam["expected"]
    if path == "evaluate":
        assert got == {p: captions[0] for p, (captions, _) in expected.items()}
        return
    assert {p: captions for p, (captions, _) in got.items()} == {p: c for p, (c, _) in expected.items()}
    for p, (_, log_probs) in got.items():
        np.testing.assert_allclose(log_probs, expected[p][1], atol=1e-4)
    assert any(c for captions, _ in expected.values() for c in captions)  # real text among the K, not all empty


def test_an_export_gives_fewer_captions_and_its_own_sampling_but_no_other_settings(seam, trained_run):
    version_dir = glob.glob(str(seam["base"] / "models" / "caption" / "*"))
    if not version_dir:  # the export case did not run in this process (e.g. -k)
        from export.saved_model import export

        version_dir = [export(seam["run"], str(seam["base"] / "models"), warmup=False)]
    exported = caption_app.Captioner.load(version_dir[0])
    image = seam["paths"][0]
    assert exported.caption(image, num_captions=1).captions == seam["expected"][image][0][:1]
    with pytest.raises(DecodeSettingsError, match="was exported to decode with strategy=beam, beam_size"):
        exported.caption(image, beam_size=trained_run.config.decode.beam_size + 1)
    # sample_captions: the exported sampling settings, any seed; the same seed, the same captions.
    sampled = exported.caption([image, image], strategy="sample", seed=7)
    assert len(sampled[0].captions) == 5 and sampled[0].captions == sampled[1].captions
    in_process = caption_app.Captioner.load(seam["run"]).caption(image, strategy="sample", seed=7)
    assert in_process.captions == sampled[0].captions
    np.testing.assert_allclose(in_process.log_probs, sampled[0].log_probs, atol=1e-4)


def test_the_export_signatures_match_the_docs_state_table(seam, trained_run):
    """docs/serving.md's state-tensor table for the plain LSTM = the export's encode_image / decode_step."""
    version_dir = glob.glob(str(seam["base"] / "models" / "caption" / "*"))
    if not version_dir:
        from export.saved_model import export

        version_dir = [export(seam["run"], str(seam["base"] / "models"), warmup=False)]
    m = trained_run.config.model
    saved_model_ops.check_state_against_docs(version_dir[0], "lstm", H=m.lstm_units, E=m.embedding_size)
