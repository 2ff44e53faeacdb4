"""Benchmark (not a test): the exported SavedModel on CPU vs its backbone alone.

    python bench/export_bench.py [--vocab-size 10000] [--reps16 12] [--reps1 30] [--json out.json]

Builds an `im2txt`-preset run dir the way training writes one (run_dir.prepare,
a tf.train checkpoint of build_model's model), with InceptionV3 at 299x299 from
random weights (no ImageNet download here) and a synthetic vocabulary of
`--vocab-size` words, exports it with `export.saved_model.export`, loads it and
times, at batch 1 and 16, on the same images:

  backbone         preprocessing + InceptionV3 on [B, 299, 299, 3] floats (the floor)
  caption_images   the export on the same floats: resize + backbone + embedding + beam search + ids_to_text
  serving_default  the export on the same images as JPEG bytes: + tf.data decode

The three are interleaved call by call (backbone, caption_images,
serving_default, backbone, ...) so that load from other processes on the
machine hits them alike; `uptime` is printed before and after.

Random decoder weights give a near-uniform next-word distribution, so a
one-word caption followed by <end> outscores every longer one and the beam
search stops after two or three steps (the best case, `--natural`). By default
the benchmark measures the worst case instead: the decoder's logit bias for
<end> is set to -1e4, so no beam ever finishes early and every caption runs the
full --max-length steps (a trained model lies in between).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from caption_app import config as config_lib  # noqa: E402
from caption_app.runs import checkpoints as checkpoints_lib  # noqa: E402
from caption_app.runs import layout as run_layout  # noqa: E402
from caption_app.runs import loader as run_loader  # noqa: E402
from caption_app.data.manifest import Manifest  # noqa: E402
from caption_app.data.pipeline import TensorSizes  # noqa: E402
from caption_app.data.vocabulary import END_ID, TokenizerSettings, Vocabulary  # noqa: E402
from caption_app.model import show_and_tell  # noqa: E402
from export import saved_model  # noqa: E402


def make_run_dir(run_dir: str, vocab_size: int, beam_size: int, max_length: int,
                 never_end: bool) -> config_lib.Config:
    """An untrained im2txt run dir: InceptionV3 299 px, embedding/LSTM 512, random init."""
    config = config_lib.override(config_lib.get_preset("im2txt"), [
        "model.backbone_weights=none", f"decode.beam_size={beam_size}", f"decode.max_length={max_length}"])
    data_dir = os.path.join(run_dir, "_data")
    os.makedirs(data_dir)
    words = [f"w{i}" for i in range(vocab_size - 4)]
    vocab = Vocabulary(words, list(range(len(words) + 4, 4, -1)))
    vocab.save(os.path.join(data_dir, "vocab.txt"))
    raw = {"format_version": 1, "vocab_size": vocab.size, "splits": {}, "note": "benchmark: no data"}
    manifest = Manifest(data_dir=data_dir, splits={}, tokenizer=TokenizerSettings(), vocab_size=vocab.size,
                        vocab_file="vocab.txt", max_caption_words=20, max_captions_per_image=5, raw=raw)
    sizes = TensorSizes(image_size=299, num_captions=5, caption_length=22)
    run_layout.prepare(run_dir, config, manifest, vocab, sizes)
    model = show_and_tell.build_model(config, vocab.size, backbone_weights="none")
    if never_end:  # <end> gets log-probability ~ -1e4: every beam runs max_length steps
        bias = model.decoder.logits.bias
        bias.assign(tf.tensor_scatter_nd_update(bias, [[END_ID]], [-1e4]))
    tf.train.CheckpointManager(tf.train.Checkpoint(model=model), checkpoints_lib.checkpoint_dir(run_dir),
                               max_to_keep=1).save()
    return config


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except OSError:
        return "uptime unavailable"


def summarize(seconds: list[float], batch: int) -> dict:
    ms = np.array(seconds) * 1000
    return {"images_per_s": batch / np.median(seconds), "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "calls": len(seconds)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--vocab-size", type=int, default=10000, help="ids incl. specials (im2txt on COCO: 11,520)")
    p.add_argument("--beam-size", type=int, default=3)
    p.add_argument("--max-length", type=int, default=20)
    p.add_argument("--reps16", type=int, default=12, help="timed calls per variant at batch 16")
    p.add_argument("--reps1", type=int, default=30, help="timed calls per variant at batch 1")
    p.add_argument("--natural", action="store_true",
                   help="keep the random decoder's <end> (it then stops after a word or two: the best case)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()

    load_before = uptime()
    work = tempfile.mkdtemp(prefix="export_bench_")
    run_dir = os.path.join(work, "run")
    began = time.perf_counter()
    make_run_dir(run_dir, args.vocab_size, args.beam_size, args.max_length, never_end=not args.natural)
    path = saved_model.export(run_dir, os.path.join(work, "models"), warmup=False)
    export_s = time.perf_counter() - began
    loaded = tf.saved_model.load(path)
    caption_images = loaded.signatures["caption_images"]
    serving_default = loaded.signatures["serving_default"]

    model, config, vocab, sizes, _ = run_loader.load_model(run_dir)
    extractor = model.image_encoder.feature_extractor  # preprocess + backbone

    @tf.function(jit_compile=False)
    def backbone(images):  # [B, 299, 299, 3] -> [B, 2048]
        return extractor(images, training=False)

    rng = np.random.default_rng(0)
    # Smooth random images (upsampled noise) look more like photos to JPEG than white noise.
    small = rng.integers(0, 256, (16, 38, 38, 3)).astype(np.float32)
    floats = tf.clip_by_value(tf.image.resize(small, [299, 299], method="bicubic"), 0, 255)  # [16, 299, 299, 3]
    floats = tf.round(floats)
    jpegs = [tf.io.encode_jpeg(tf.cast(x, tf.uint8), quality=90).numpy() for x in floats]

    results = {}
    for batch, reps in ((1, args.reps1), (16, args.reps16)):
        x = floats[:batch]
        b = tf.constant(jpegs[:batch])
        variants = {"backbone": lambda: backbone(x), "caption_images": lambda: caption_images(images=x),
                    "serving_default": lambda: serving_default(image_bytes=b)}
        for fn in variants.values():  # trace, allocate
            fn()
        times = {name: [] for name in variants}
        for _ in range(reps):
            for name, fn in variants.items():
                t = time.perf_counter()
                out = fn()
                tf.nest.map_structure(lambda t: t.numpy(), out)
                times[name].append(time.perf_counter() - t)
        results[batch] = {name: summarize(t, batch) for name, t in times.items()}
        out = serving_default(image_bytes=b)
        results[batch]["mean_caption_words"] = float(np.mean(
            [len(c.split()) for c in out["captions"].numpy().ravel()]))

    load_after = uptime()
    shutil.rmtree(work, ignore_errors=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, TF {tf.__version__}; InceptionV3 299x299 "
          f"(random init), embedding/LSTM 512, vocabulary {vocab.size}, beam {args.beam_size}, "
          f"max length {args.max_length}; export took {export_s:.0f}s")
    print(f"load before: {load_before}")
    print(f"load after:  {load_after}")
    print(f"{'batch':>5} {'variant':<16}{'images/s':>10}{'p50 ms':>10}{'p95 ms':>10}{'x backbone':>12}")
    for batch in (1, 16):
        floor = results[batch]["backbone"]["p50_ms"]
        for name in ("backbone", "caption_images", "serving_default"):
            r = results[batch][name]
            print(f"{batch:>5} {name:<16}{r['images_per_s']:>10.2f}{r['p50_ms']:>10.0f}{r['p95_ms']:>10.0f}"
                  f"{r['p50_ms'] / floor:>12.3f}")
        print(f"      mean caption length: {results[batch]['mean_caption_words']:.1f} words "
              f"(max_length {args.max_length}, <end> included)")
    r16 = results[16]
    overhead = r16["caption_images"]["p50_ms"] / r16["backbone"]["p50_ms"] - 1
    overhead_bytes = r16["serving_default"]["p50_ms"] / r16["backbone"]["p50_ms"] - 1
    print(f"batch 16: beam search + decoding add {overhead:.1%} to the backbone (caption_images), "
          f"{overhead_bytes:.1%} with JPEG decoding (serving_default); target < 25%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "overhead_b16": overhead, "overhead_b16_with_jpeg": overhead_bytes,
                       "load_before": load_before, "load_after": load_after, "vocab_size": vocab.size,
                       "beam_size": args.beam_size, "max_length": args.max_length}, f, indent=2)


if __name__ == "__main__":
    main()
