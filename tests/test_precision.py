"""Mixed precision: policies per layer, a few training steps under each policy on CPU, and the
saved weights loading back into a float32 model (which evaluation, captioning and export use)."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from caption_app.runs import checkpoints as checkpoints_lib
from caption_app.runs import loader as run_loader
from caption_app.inference.image_files import caption_files
from caption_app.inference.settings import DecodeSettings
from caption_app.model.loss import MaskedCrossEntropy
from caption_app.inference.captioner import TrainedCaptioner
from caption_app.model.show_and_tell import build_model
from caption_app.training.train import train
from tests.conftest import tiny_config


@pytest.mark.parametrize("precision,compute", [("mixed_bfloat16", "bfloat16"), ("mixed_float16", "float16")])
def test_policy_applies_to_the_model_only_and_keeps_logits_float32(precision, compute):
    before = keras.config.dtype_policy().name
    model = build_model(tiny_config(f"train.precision={precision}"), 12)
    assert keras.config.dtype_policy().name == before  # the global policy is restored
    decoder = model.decoder
    assert decoder.lstm.compute_dtype == compute and model.image_encoder.embedding.compute_dtype == compute
    assert decoder.logits.compute_dtype == "float32"
    assert all(w.dtype == "float32" for w in model.weights)  # variables stay float32
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    ids = np.ones((2, 2, 5), np.int32)
    logits = model({"image": images, "input_ids": ids})
    assert logits.dtype == tf.float32
    # Inference on the mixed model itself: states in the compute dtype, log-probs float32.
    result = TrainedCaptioner(model).generate(images, DecodeSettings(beam_size=2, max_length=4))
    assert result.ids.shape == (2, 2, 4) and result.scores.dtype == tf.float32
    assert np.isfinite(result.scores.numpy()).all()


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_training_under_mixed_precision_saves_float32_weights(precision, shapes_data, tmp_path):
    run = str(tmp_path / "run")
    # 5 steps; under float16 loss scaling, 2 more of self-critical training (its own step and loss scale).
    scst = ["train.scst_epochs=0.4", "train.scst_learning_rate=0.01"] if precision == "mixed_float16" else []
    config = tiny_config(f"train.precision={precision}", "train.batch_size=8", *scst)
    history = train(config, shapes_data, run, verbose=0)
    assert history["epochs_done"] == 1 + bool(scst)
    assert history["xla"] == ("on (the backbone and the model's part; sampling and reward outside)" if scst else "on")
    assert math.isfinite(history["val_perplexity"])
    checkpoint = checkpoints_lib.latest_checkpoint(run)
    dtypes = tf.train.load_checkpoint(checkpoint).get_variable_to_dtype_map()
    assert {d for name, d in dtypes.items() if name.startswith("model/")} == {tf.float32}
    if precision == "mixed_float16":  # loss scaling: the scale is part of the optimizer's state
        assert any("dynamic_scale" in name for name in dtypes)

    # The run dir loads in float32 (evaluate, caption and export use this) with the trained values.
    model, *_ = run_loader.load_model(run)
    assert model.decoder.lstm.compute_dtype == "float32"
    mixed = build_model(config, model.decoder.vocab_size)
    tf.train.Checkpoint(model=mixed).restore(checkpoint).expect_partial()
    for a, b in zip(model.weights, mixed.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    initial = build_model(config, model.decoder.vocab_size)
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(model.weights, initial.weights))
    # Same loss in both precisions, to the compute dtype's resolution.
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    ids = rng.integers(4, 12, (4, 2, 6)).astype(np.int32)
    inputs = {"image": images, "input_ids": ids[..., :-1]}
    loss32 = float(MaskedCrossEntropy()(ids[..., 1:], model(inputs, training=False)))
    loss16 = float(MaskedCrossEntropy()(ids[..., 1:], mixed(inputs, training=False)))
    assert loss16 == pytest.approx(loss32, rel=0.03)
    if precision == "mixed_bfloat16":  # beam search on a mixed-precision run dir (once: it compiles)
        results = caption_files(run, [str(p) for p in _some_images(shapes_data)])
        assert results and all(r["captions"] and math.isfinite(r["captions"][0]["log_prob"]) for r in results)


def _some_images(data_dir: str, n: int = 2):
    from pathlib import Path
    return sorted((Path(data_dir) / "raw" / "images").iterdir())[:n]
