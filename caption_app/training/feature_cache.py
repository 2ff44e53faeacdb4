"""Feature cache for the frozen-backbone phase.

While the backbone is frozen its output for an image never changes, yet the
full model recomputes it every step of every epoch (im2txt did so for a
million steps). With `train.feature_cache=true` the frozen phase instead

1. computes the backbone features of every train and val image once
   (`ensure_cache`: `RUN/feature_cache/<key>/{split}-NNNNN-of-MMMMM.tfrecord`,
   one float32 vector [F] per image with its id and raw captions), and
2. trains a *head* model {"features" [B, F], "input_ids" [B, C, T]} -> logits
   [B, C, T, V] built from the full model's own parts: its image encoder
   after the backbone (`model.image_encoder.embed`) and `model.decoder`
   (`build_head`). The variables are shared, so the run's checkpoints are
   ordinary full-model checkpoints, and phase 2 (fine-tuning) continues from
   them with the full model as if nothing had happened.

The cache key hashes the data (manifest and shard sizes), the backbone (name,
image size) and the backbone's current weights. A cache whose key differs (new
data, other weights, or a half-written build, which has no `cache.json`) is
never used: it is deleted and rebuilt. Builds are written under a temporary
name and renamed when complete.

Data augmentation works on pixels, which the cache does not have: with
`data.augment` set, `check_config` refuses `train.feature_cache` (set
`data.augment=` or turn the cache off) instead of silently training without it.

    python -m caption_app cache-features --config im2txt --data DATA --run-dir RUN \\
        --set data.augment= --set train.feature_cache=true
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

from caption_app import io_utils
from caption_app.runs import context as run_context
from caption_app.config import Config
from caption_app.io_utils import write_json_atomic as write_json
from caption_app.data import pipeline, records
from caption_app.model import show_and_tell

CACHE_DIR = "feature_cache"
CACHE_FILE = "cache.json"
FORMAT_VERSION = 1
IMAGES_PER_SHARD = 5000
SPLITS = ("train", "val")


def check_config(config: Config) -> None:
    """Raises ValueError when `train.feature_cache` cannot be honoured by this config."""
    if not config.train.feature_cache:
        return
    if not config.train.freeze_backbone or config.train.epochs == 0:
        raise ValueError("train.feature_cache=true needs a frozen-backbone phase (train.freeze_backbone=true "
                         "and train.epochs > 0); the backbone's features change while it trains")
    if config.data.augment:
        raise ValueError(
            f"train.feature_cache=true cannot apply data.augment={','.join(config.data.augment)}: the cache "
            "holds one feature vector per image, computed once from the unaugmented image. Set "
            "--set data.augment= (no augmentation in any phase), or train.feature_cache=false")


def backbone_extractor(model: show_and_tell.ShowAndTell) -> keras.Model:
    """The full model's image path up to the backbone's output: image [B, S, S, 3] 0-255 -> [B, F]."""
    return model.image_encoder.feature_extractor


def build_head(model: show_and_tell.ShowAndTell) -> keras.Model:
    """{"features" [B, F], "input_ids" [B, C, T]} -> logits [B, C, T, V], sharing the full
    model's image encoder after the backbone and its decoder (layers and variables)."""
    encoder = model.image_encoder
    features = keras.Input((encoder.feature_size,), name="features")
    input_ids = keras.Input((None, None), dtype="int32", name="input_ids")
    logits = model.decoder(encoder.embed(features), input_ids)  # embedding [B, E] -> [B, C, T, V]
    return keras.Model({"features": features, "input_ids": input_ids}, logits, name="show_and_tell_head")


def cache_key(ctx: run_context.RunContext) -> dict:
    """What the cached features depend on: data, backbone and its current weights."""
    config, manifest, sizes = ctx.config, ctx.manifest, ctx.sizes
    weights = hashlib.sha1()
    for variable in ctx.model.image_encoder.backbone.weights:  # trainable and BN statistics
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(variable.value))
        weights.update(f"{variable.path}:{value.dtype}:{value.shape}".encode())
        weights.update(value.tobytes())
    data = hashlib.sha1(json.dumps(manifest.raw, sort_keys=True).encode())
    for split in SPLITS:
        for path in manifest.files(split):
            data.update(f"{os.path.basename(path)}:{io_utils.getsize(path)}".encode())
    return {
        "format_version": FORMAT_VERSION,
        "backbone": config.model.backbone,
        "image_size": sizes.image_size,
        "backbone_weights_sha1": weights.hexdigest(),
        "data_sha1": data.hexdigest(),
        # Only when not the default, so that the caches of before the option keep their key.
        **({"preprocess": config.data.preprocess} if config.data.preprocess != "default" else {}),
    }


def _digest(key: dict) -> str:
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def ensure_cache(ctx: run_context.RunContext, *, batch_size: int | None = None, verbose: bool = True) -> str:
    """The cache dir of the run model's current backbone on the run's data, built if needed.

    Returns:
      `RUN/feature_cache/<key digest>` (holding `cache.json` and the shards).
    """
    config, manifest, vocab, sizes = ctx.config, ctx.manifest, ctx.vocab, ctx.sizes
    key = cache_key(ctx)
    root = os.path.join(ctx.run_dir, CACHE_DIR)
    path = os.path.join(root, _digest(key))
    if io_utils.exists(os.path.join(path, CACHE_FILE)):
        if verbose:
            print(f"feature cache: using {path}", flush=True)
        return path
    if io_utils.isdir(root):
        for stale in sorted(io_utils.listdir(root)):
            if verbose:
                print(f"feature cache: removing {os.path.join(root, stale)} (other data or backbone weights, "
                      "or an unfinished build)", flush=True)
            io_utils.rmtree(os.path.join(root, stale))
    io_utils.makedirs(root)
    tmp = path + f".tmp-{os.getpid()}"
    io_utils.rmtree(tmp)
    io_utils.makedirs(tmp, exist_ok=False)
    try:
        began = time.time()
        extractor = backbone_extractor(ctx.model)
        forward = tf.function(lambda images: extractor(images, training=False), reduce_retracing=True)
        info = {"key": key, "feature_size": int(extractor.output.shape[-1]), "splits": {}}
        for split in SPLITS:
            count = manifest.split(split).num_images if split in manifest.splits else 0
            if not count:
                info["splits"][split] = {"num_images": 0, "files": []}
                continue
            ds = pipeline.make_dataset(config, manifest, vocab, split, training=False, with_ids=True,
                                       batch_size=batch_size or config.train.batch_size, sizes=sizes)
            num_shards = -(-count // IMAGES_PER_SHARD)
            files = [records.shard_name(split, i, num_shards) for i in range(num_shards)]
            writers = [tf.io.TFRecordWriter(os.path.join(tmp, f)) for f in files]
            written = 0
            for inputs, _, extras in ds:
                features = forward(inputs["image"]).numpy()  # [B, F]
                for vector, image_id, captions in zip(features, extras["image_id"].numpy(),
                                                      extras["captions"].numpy()):
                    captions = [c for c in captions if c]  # "" pads images with fewer captions
                    writers[written * num_shards // count].write(
                        records.make_feature_example(image_id, vector.astype(np.float32), captions).SerializeToString())
                    written += 1
            for w in writers:
                w.close()
            if written > count:
                raise RuntimeError(f"feature cache: read {written} {split} images, the manifest says {count}")
            # Fewer when the pipeline skipped records with no usable caption.
            info["splits"][split] = {"num_images": written, "files": files}
            if verbose:
                print(f"feature cache: {split} {count} images in {time.time() - began:.1f}s", flush=True)
        info["seconds"] = time.time() - began
        write_json(os.path.join(tmp, CACHE_FILE), info)
        io_utils.replace(tmp, path, last=(CACHE_FILE,))
    except BaseException:
        io_utils.rmtree(tmp)
        raise
    return path


def load_info(cache_dir: str) -> dict:
    return io_utils.read_json(os.path.join(cache_dir, CACHE_FILE))


def make_cached_dataset(ctx: run_context.RunContext, cache_dir: str, split: str, *, training: bool,
                        batch_size: int | None = None) -> tf.data.Dataset:
    """`pipeline.make_dataset`'s batches with features instead of images.

    Returns:
      ({"features": [B, F] float32, "input_ids": [B, C, T-1] int32}, targets [B, C, T-1]),
      in the order of `make_dataset(training=False)` when not training; batched by length
      bucket (and infinite) when training, as `make_dataset` does.
    """
    config, manifest, vocab, sizes = ctx.config, ctx.manifest, ctx.vocab, ctx.sizes
    info = load_info(cache_dir)
    files = [os.path.join(cache_dir, f) for f in info["splits"][split]["files"]]
    if not files:
        raise ValueError(f"the feature cache {cache_dir} has no {split!r} images")
    feature_size = info["feature_size"]
    table = vocab.lookup_table()
    seed = config.train.seed
    num_captions = sizes.num_captions if training else manifest.max_captions_per_image

    def parse(serialized):
        parsed = records.parse_feature_example(serialized, feature_size)
        return parsed["features"], parsed["captions"]

    def to_ids(features, captions):
        return {"features": features, "ids": pipeline.caption_ids(
            captions, table, manifest.tokenizer, num_captions, sizes.caption_length, seed=seed if training else None)}

    def finish(r):
        inputs, targets = pipeline.split_inputs_targets(r["features"], r["ids"])
        return {"features": inputs["image"], "input_ids": inputs["input_ids"]}, targets

    ds = tf.data.TFRecordDataset(files).map(parse, num_parallel_calls=pipeline.AUTOTUNE)
    if training:
        ds = ds.cache().shuffle(config.data.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(to_ids, num_parallel_calls=pipeline.AUTOTUNE)
    buckets = pipeline.resolve_bucket_lengths(config, manifest, sizes.caption_length) if training else ()
    ds = pipeline.batch_by_length(ds, batch_size or config.train.batch_size, buckets, training=training,
                                  caption_rank=config.data.bucket_caption_rank)
    return ds.map(finish, num_parallel_calls=pipeline.AUTOTUNE).prefetch(pipeline.AUTOTUNE)


def frozen_phase(ctx: run_context.RunContext, *, val_batch_size: int | None):
    """What the frozen phase fits with a feature cache: (head model, train dataset
    (repeated), val dataset or None when `val_batch_size` is None). `check_config` has passed."""
    cache_dir = ensure_cache(ctx)
    train_ds = make_cached_dataset(ctx, cache_dir, "train", training=True).repeat()
    val_ds = None
    if val_batch_size is not None:
        val_ds = make_cached_dataset(ctx, cache_dir, "val", training=False, batch_size=val_batch_size)
    return build_head(ctx.model), train_ds, val_ds


def cache_features(config: Config, data_dir: str, run_dir: str) -> str:
    """`python -m caption_app cache-features`: builds the cache before training.

    The model is set up as `train` sets it up (`RunContext.create`: same seed;
    the latest epoch checkpoint of the run dir restored if there is one), so
    the key matches what training will compute. Returns the cache dir.
    """
    check_config(config)
    if not config.train.feature_cache:
        raise ValueError("cache-features is for runs with train.feature_cache=true (add --set "
                         "train.feature_cache=true here and when training)")
    config.validate()  # before anything is written
    ctx = run_context.RunContext.create(config, data_dir, run_dir, write_description=False, resume_backup=False,
                                        lock="cache-features")
    try:
        return ensure_cache(ctx)
    finally:
        ctx.release()
