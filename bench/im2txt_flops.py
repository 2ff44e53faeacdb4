"""Benchmark (not a test): FLOPs of the im2txt preset's training on COCO, and the time they take.

    python bench/im2txt_flops.py [--tflops 100] [--vocab-size 12000] [--caption-length 32]

Counts forward FLOPs with TensorFlow's graph profiler (2 FLOPs per
multiply-add) on the preset's own layers, random weights (no download):
the backbone (InceptionV3, 299x299) per image, the image embedding per image,
and one decoder position (word embedding, LSTM cell, logits) per caption
token. A training step is taken as 3x its forward FLOPs (the backward pass
~2x the forward); a frozen backbone runs forward only. Every caption costs
`--caption-length` LSTM positions (the pipeline pads to a fixed length for
XLA: min(data.max_caption_length, longest caption + 2) = 32 on COCO).

Steps per phase come from caption_app.training.budget on im2txt's COCO split
(117,211 train images, 586,363 captions). Time = FLOPs / `--tflops`
(sustained, an assumption to state with the numbers; small per-step batches
are latency-bound and reach a fraction of a GPU's peak).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from caption_app.training import budget as budget_lib  # noqa: E402
from caption_app import config as config_lib  # noqa: E402
from caption_app.model import show_and_tell  # noqa: E402

COCO_IM2TXT_TRAIN = dict(num_images=117_211, num_captions=586_363, max_captions_per_image=7)


def forward_flops(fn, *specs) -> int:
    graph = tf.function(fn).get_concrete_function(*specs).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return tf.compat.v1.profiler.profile(graph, options=options).total_float_ops


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tflops", type=float, nargs="+", default=[25.0, 100.0],
                        help="sustained TFLOP/s assumed for the GPU (one column each)")
    parser.add_argument("--vocab-size", type=int, default=12_000, help="im2txt's configuration.py vocab_size")
    parser.add_argument("--caption-length", type=int, default=32, help="tokens per caption, <start> included")
    parser.add_argument("--set", action="append", default=[], help="config overrides, as for train")
    args = parser.parse_args()
    config = config_lib.override(config_lib.get_preset("im2txt"), args.set)
    model = show_and_tell.build_model(config, args.vocab_size, backbone_weights="none")
    size = int(model.get_layer("image").output.shape[1])
    backbone = model.get_layer(show_and_tell.BACKBONE_LAYER)
    embed = model.get_layer("image_embedding")
    decoder = model.get_layer("decoder")
    h = config.model.lstm_units
    f_backbone = forward_flops(lambda x: backbone(x, training=False), tf.TensorSpec([1, size, size, 3]))
    features = int(backbone.output.shape[-1])
    f_embed = forward_flops(lambda x: embed(x), tf.TensorSpec([1, features]))
    f_position = forward_flops(lambda ids, a, b: decoder.step(ids, [a, b])[0], tf.TensorSpec([1], tf.int32),
                               tf.TensorSpec([1, h]), tf.TensorSpec([1, h]))
    f_caption = args.caption_length * f_position

    budget = budget_lib.resolve_budget(config, **COCO_IM2TXT_TRAIN)
    images = config.train.batch_size
    captions = budget.pairs_per_step / images
    decoder_train = 3 * (images * f_embed + images * captions * f_caption)
    per_step = {
        "phase1 (backbone forward each step)": images * f_backbone + decoder_train,
        "phase1 (feature cache)": decoder_train,
        "phase2 (everything trainable)": 3 * images * f_backbone + decoder_train,
    }
    phase1, phase2 = budget.phases
    cache_build = (COCO_IM2TXT_TRAIN["num_images"] + 2_025) * f_backbone  # train + val images, once

    print(f"forward GFLOPs: backbone {f_backbone / 1e9:.2f}/image, image embedding {f_embed / 1e6:.2f}M/image, "
          f"decoder {f_position / 1e6:.2f}M/position x {args.caption_length} = {f_caption / 1e6:.0f}M/caption")
    print(budget_lib.describe(budget))
    def hours(flops: float) -> str:
        return " | ".join(f"{flops / (t * 1e12) / 3600:,.2f}" for t in args.tflops)

    print("\n| phase | steps | TFLOPs/step (train) | total PFLOPs | "
          + " | ".join(f"hours at {t:g} TFLOP/s" for t in args.tflops) + " | hours per ms of fixed step cost |")
    print("|---" * (5 + len(args.tflops)) + "|")
    for name, flops in per_step.items():
        steps = phase1.steps if name.startswith("phase1") else phase2.steps
        print(f"| {name} | {steps:,} | {flops / 1e12:.3f} | {steps * flops / 1e15:,.0f} | {hours(steps * flops)} | "
              f"{steps * 1e-3 / 3600:.2f} |")
    print(f"| feature cache build (train + val, once) | - | - | {cache_build / 1e15:,.1f} | {hours(cache_build)} | - |")
    im2txt_phase2 = 3 * 32 * f_backbone + 3 * 32 * (f_embed + f_caption)
    print(f"\nim2txt's own phase-2 step (32 images, 1 caption each): {im2txt_phase2 / 1e12:.3f} TFLOPs, "
          f"x 2,000,000 steps = {2e6 * im2txt_phase2 / 1e15:,.0f} PFLOPs")


if __name__ == "__main__":
    main()
