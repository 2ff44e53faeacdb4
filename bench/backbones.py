"""Benchmark (not a test): every registry backbone's size and CPU inference speed, side by side.

    python bench/backbones.py [--batch 8] [--rounds 3] [--seconds 4] [--names inception_v3 inception_v4]

For each backbone at its default input size with random weights: parameters,
feature size, input size and forward images/s (batch 8, tf.function, no XLA:
jit_compile="auto" leaves it off on CPU). The rounds are interleaved (every
backbone once per round) so that a change in machine load hits all of them
alike; the median round is reported, with its ratio to the first backbone
(inception_v3) measured in the same run, and the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from caption_app.model import backbones  # noqa: E402


def _images_per_second(forward, images, seconds: float) -> float:
    """Runs `forward` for at least `seconds` (and 2 batches); images per second."""
    batches, began = 0, time.perf_counter()
    while batches < 2 or time.perf_counter() - began < seconds:
        forward(images).numpy()
        batches += 1
    return batches * images.shape[0] / (time.perf_counter() - began)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="per backbone and round")
    others = sorted(set(backbones.BACKBONES) - {"inception_v3"})
    parser.add_argument("--names", nargs="*", default=["inception_v3", *others],
                        help="the first is the baseline of the ratio column")
    args = parser.parse_args()
    tf.get_logger().setLevel("ERROR")  # one tf.function per backbone reads as "retracing" to TF

    load_before = _load()
    rng = np.random.default_rng(0)
    setups = {}
    for name in args.names:
        spec = backbones.get(name)
        model = backbones.build_backbone(name, "none", spec.image_size)
        forward = tf.function(lambda x, model=model: model(x, training=False))
        images = tf.constant(rng.uniform(-1, 1, (args.batch, spec.image_size, spec.image_size, 3)), tf.float32)
        features = forward(images)  # trace
        setups[name] = (spec, model, forward, images, int(features.shape[-1]))
    speeds: dict[str, list[float]] = {name: [] for name in args.names}
    for _ in range(args.rounds):
        for name, (_, _, forward, images, _) in setups.items():
            speeds[name].append(_images_per_second(forward, images, args.seconds))

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, TF {tf.__version__}; forward, batch {args.batch}, "
          f"float32, no XLA, median of {args.rounds} interleaved rounds; load average (1/5/15 min) before "
          f"{load_before}, after {_load()}")
    baseline = statistics.median(speeds[args.names[0]])
    print(f"| backbone | parameters | feature size | input size | CPU images/s | vs {args.names[0]} | rounds |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, (spec, model, _, _, features) in setups.items():
        median = statistics.median(speeds[name])
        rounds = ", ".join(f"{s:.1f}" for s in speeds[name])
        print(f"| {name} | {model.count_params():,} | {features} | {spec.image_size} | {median:.1f} | "
              f"{median / baseline:.2f} | {rounds} |")


if __name__ == "__main__":
    main()
