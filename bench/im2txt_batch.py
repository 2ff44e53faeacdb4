"""Benchmark (not a test): validation perplexity per pair exposure for im2txt's batch question.

    python bench/im2txt_batch.py --data DATA [--out DIR] [--passes 10] [--decay-passes 2] [--only NAME ...]

im2txt trains on batches of 32 image-caption pairs (32 images, one caption
each) at SGD 2.0. This project's batch is images with all their captions. The
script trains the same decoder, from the same initial weights and a frozen
backbone (features from the feature cache), with the same schedule counted in
passes over the train pairs, in these settings:

- `pairs32`:   32 images x 1 caption at 2.0 (im2txt's batch: the reference),
- `img6x5`:    6 images x 5 captions = 30 pairs at 2.0,
- `img32x5s`:  32 images x 5 captions = 160 pairs, the rate scaled linearly
               (`train.reference_batch_pairs=32`: 2.0 x 5 = 10.0) after a
               linear warmup of `--warmup-passes`,
- `img32x5`:   32 images x 5 captions at 2.0 unscaled (the preset before).

Each run is an ordinary `caption_app.training.train.train` run (SGD, clip 5.0, init
0.08, halving every `--decay-passes`); the validation perplexity after each
pass comes from its TensorBoard log. Prints a Markdown table, one row per pass.
The backbone is a randomly initialised `small_cnn` (no download), so the
image features carry little: this compares optimisation per pair exposure,
not captioning quality.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from caption_app import config as config_lib  # noqa: E402
from caption_app.training.train import train  # noqa: E402

SETTINGS = {  # name -> --set assignments
    "pairs32": ["train.batch_size=32", "data.captions_per_image=1"],
    "img6x5": ["train.batch_size=6", "data.captions_per_image=5"],
    "img32x5s": ["train.batch_size=32", "data.captions_per_image=5", "train.reference_batch_pairs=32"],
    "img32x5": ["train.batch_size=32", "data.captions_per_image=5"],
}


def base_assignments(args) -> list[str]:
    return [
        "data.image_size=64", "data.augment=", "data.max_caption_length=20", "data.shuffle_buffer=4096",
        "model.backbone=small_cnn", "model.backbone_weights=none", f"model.embedding_size={args.width}",
        f"model.lstm_units={args.width}", "model.lstm_dropout=0.0", "model.init_scale=0.08",
        "train.optimizer=sgd", "train.learning_rate=2.0", "train.lr_schedule=staircase",
        f"train.lr_decay_epochs={args.decay_passes}", "train.lr_decay_factor=0.5", "train.clip_gradient_norm=5.0",
        f"train.epochs={args.passes}", "train.fine_tune_epochs=0", "train.freeze_backbone=true",
        "train.feature_cache=true", "train.jit_compile=true", f"train.seed={args.seed}",
    ]


def perplexities(run_dir: str) -> dict[int, float]:
    """epoch -> validation perplexity, from the run's TensorBoard log."""
    out = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "logs", "validation", "events.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == "perplexity":
                    out[int(event.step)] = float(tf.make_ndarray(value.tensor))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, help="a converted data dir (e.g. the Flickr8k subset)")
    parser.add_argument("--out", default=None, help="where the run dirs go (default: a temporary dir)")
    parser.add_argument("--passes", type=float, default=10.0)
    parser.add_argument("--decay-passes", type=float, default=2.0)
    parser.add_argument("--warmup-passes", type=float, default=0.5)
    parser.add_argument("--width", type=int, default=256, help="embedding and LSTM width")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = parser.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="im2txt_batch_")
    print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs; run dirs under {out}", flush=True)
    results, seconds = {}, {}
    for name in args.only:
        assignments = base_assignments(args) + SETTINGS[name]
        if name == "img32x5s":
            assignments.append(f"train.warmup_epochs={args.warmup_passes}")
        config = config_lib.override(config_lib.get_preset("im2txt"), assignments)
        run_dir = os.path.join(out, name)
        began = time.time()
        history = train(config, args.data, run_dir, verbose=0)
        seconds[name] = time.time() - began
        results[name] = perplexities(run_dir)
        print(f"{name}: {seconds[name]:.0f}s, {history['steps_per_epoch']} steps/pass, "
              f"load average {os.getloadavg()}", flush=True)
    epochs = sorted(set().union(*(r.keys() for r in results.values())))
    print("\n| passes | " + " | ".join(args.only) + " |")
    print("|---" * (len(args.only) + 1) + "|")
    for e in epochs:
        print(f"| {e} | " + " | ".join(f"{results[n].get(e, float('nan')):.2f}" for n in args.only) + " |")
    print("| seconds | " + " | ".join(f"{seconds[n]:.0f}" for n in args.only) + " |")


if __name__ == "__main__":
    main()
