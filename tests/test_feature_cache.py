"""The feature cache of the frozen phase: same loss as the full model, keyed, atomic, trains and restores."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from caption_app.training import feature_cache
from caption_app.runs import context as run_context
from caption_app.runs import loader as run_loader
from caption_app.__main__ import main as cli_main
from caption_app.data import manifest as manifest_lib
from caption_app.data.pipeline import make_dataset
from caption_app.model import show_and_tell
from caption_app.model.loss import MaskedCrossEntropy
from caption_app.training.train import train
from tests.conftest import convert_tiny_shapes, tiny_config

CACHED = ("train.freeze_backbone=true", "train.feature_cache=true")


def _setup(data_dir: str, run_dir: str, *assignments: str) -> run_context.RunContext:
    """The run's context as `train` sets it up (seed 0), the backbone frozen."""
    ctx = run_context.RunContext.create(tiny_config(*CACHED, *assignments), data_dir, run_dir)
    show_and_tell.set_backbone_trainable(ctx.model, False)
    return ctx


@pytest.mark.parametrize("embedding_norm", [False, True])
def test_cached_head_loss_equals_full_model(shapes_data, tmp_path, embedding_norm):
    ctx = _setup(shapes_data, str(tmp_path), f"model.embedding_norm={embedding_norm}")
    config, manifest, vocab, sizes, model = ctx.config, ctx.manifest, ctx.vocab, ctx.sizes, ctx.model
    cache_dir = feature_cache.ensure_cache(ctx, verbose=False)
    head = feature_cache.build_head(model)
    # Shared layers: the head's variables are the full model's (the backbone's excepted).
    assert {id(v) for v in head.trainable_variables} == {id(v) for v in model.trainable_variables}
    assert len(head.trainable_variables) == len(model.trainable_variables) > 0

    full_batches = make_dataset(config, manifest, vocab, "val", training=False, batch_size=5, sizes=sizes)
    cached_batches = feature_cache.make_cached_dataset(ctx, cache_dir, "val", training=False, batch_size=5)
    loss = MaskedCrossEntropy()
    extractor = feature_cache.backbone_extractor(model)
    n = 0
    for (inputs, targets), (cached, cached_targets) in zip(full_batches, cached_batches):
        np.testing.assert_array_equal(inputs["input_ids"], cached["input_ids"])
        np.testing.assert_array_equal(targets, cached_targets)
        np.testing.assert_allclose(extractor(inputs["image"], training=False), cached["features"],
                                   rtol=1e-5, atol=1e-5)
        for training in (False, True):  # training=True as fit runs it: frozen backbone, BN of the embedding
            full = float(loss(targets, model(inputs, training=training)))
            from_cache = float(loss(cached_targets, head(cached, training=training)))
            assert from_cache == pytest.approx(full, rel=1e-5, abs=1e-6)
        n += 1
    assert n == 3  # 12 val images in batches of 5


def test_cache_is_keyed_and_rebuilt_when_stale(shapes_data, tmp_path, capsys):
    run = str(tmp_path / "run")
    ctx = _setup(shapes_data, run)
    first = feature_cache.ensure_cache(ctx)
    info = feature_cache.load_info(first)
    assert info["splits"]["train"]["num_images"] == 40 and info["splits"]["val"]["num_images"] == 12
    assert info["key"] == feature_cache.cache_key(ctx)
    assert feature_cache.ensure_cache(ctx) == first
    assert "using" in capsys.readouterr().out

    # Other backbone weights: another key; the stale cache is removed.
    variable = ctx.model.image_encoder.backbone.weights[0]
    variable.assign(variable + 0.01)
    second = feature_cache.ensure_cache(ctx)
    assert second != first and not os.path.exists(first)
    assert os.listdir(os.path.join(run, feature_cache.CACHE_DIR)) == [os.path.basename(second)]

    # Other data: another key.
    other = convert_tiny_shapes(tmp_path / "other", num_train=20, num_val=4, num_test=4, seed=3)
    other_ctx = dataclasses.replace(ctx, manifest=manifest_lib.load(other))
    assert feature_cache.cache_key(other_ctx)["data_sha1"] != feature_cache.cache_key(ctx)["data_sha1"]

    # An unfinished build (no cache.json) is never used.
    os.remove(os.path.join(second, feature_cache.CACHE_FILE))
    third = feature_cache.ensure_cache(ctx)
    assert third == second and os.path.exists(os.path.join(third, feature_cache.CACHE_FILE))


def test_interrupted_build_leaves_no_cache(shapes_data, tmp_path, monkeypatch):
    ctx = _setup(shapes_data, str(tmp_path))

    def failing(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(feature_cache.records, "make_feature_example", failing)  # mid-build
    with pytest.raises(KeyboardInterrupt):
        feature_cache.ensure_cache(ctx, verbose=False)
    assert os.listdir(tmp_path / feature_cache.CACHE_DIR) == []


def test_augmentation_and_unfrozen_backbone_are_refused():
    with pytest.raises(ValueError, match="cannot apply data.augment=flip.*data.augment="):
        feature_cache.check_config(tiny_config(*CACHED, "data.augment=flip"))
    with pytest.raises(ValueError, match="frozen-backbone phase"):
        feature_cache.check_config(tiny_config("train.feature_cache=true", "train.freeze_backbone=false"))
    feature_cache.check_config(tiny_config(*CACHED))
    feature_cache.check_config(tiny_config("data.augment=flip"))  # cache off: augmentation fine


@pytest.mark.slow
def test_train_from_cache_restores_into_the_full_model_and_fine_tunes(shapes_data, tmp_path, capsys):
    run = str(tmp_path / "run")
    config = tiny_config(*CACHED, "train.epochs=1")
    assert cli_main(["cache-features", "--config", "tiny", "--data", shapes_data, "--run-dir", run,
                     *[f"--set={a}" for a in config_assignments(config)]]) == 0
    built = os.listdir(os.path.join(run, feature_cache.CACHE_DIR))
    capsys.readouterr()

    history = train(config, shapes_data, run, verbose=0)
    out = capsys.readouterr().out
    assert "feature cache: using" in out  # the CLI's cache matched the model train built
    assert "backbone frozen (from the feature cache)" in out
    assert "length buckets: captions padded to 11/16 tokens" in out  # the cached batches are bucketed too
    assert history["epochs_done"] == 1 and history["val_perplexity"] > 1
    assert os.listdir(os.path.join(run, feature_cache.CACHE_DIR)) == built

    # The checkpoint is a full-model checkpoint: every variable restores.
    model, _, vocab, sizes, _ = run_loader.load_model(run)
    manifest = manifest_lib.load(shapes_data)
    key = feature_cache.load_info(os.path.join(run, feature_cache.CACHE_DIR, built[0]))["key"]
    trained = run_context.RunContext.create(config, shapes_data, run, write_description=False)  # restored
    assert feature_cache.cache_key(trained) == key  # backbone untouched by phase 1
    fresh = show_and_tell.build_model(config, vocab.size)
    assert not np.allclose(model.image_encoder.embedding.kernel, fresh.image_encoder.embedding.kernel)
    batch = next(iter(make_dataset(config, manifest, vocab, "val", training=False, sizes=sizes)))
    assert np.isfinite(model(batch[0], training=False)).all()

    # Phase 2 continues from it with the full model, the backbone trainable.
    tuned = train(tiny_config(*CACHED, "train.fine_tune_epochs=1"), shapes_data, run, verbose=0)
    out = capsys.readouterr().out
    assert "phase2: epochs 2-2" in out and "backbone trainable, XLA on" in out
    assert tuned["epochs_done"] == 2
    tuned_ctx = run_context.RunContext.create(config, shapes_data, run, write_description=False)
    assert feature_cache.cache_key(tuned_ctx)["backbone_weights_sha1"] != key["backbone_weights_sha1"]


def config_assignments(config) -> list[str]:
    """`--set` assignments that rebuild `config` from the tiny preset (every field, explicitly)."""
    out = []
    for section in ("data", "model", "train", "eval"):
        for name, value in getattr(config, section).__dict__.items():
            text = ",".join(value) if isinstance(value, tuple) else str(value)
            out.append(f"{section}.{name}={text}")
    return out
