"""Benchmarks (not tests): train-step time of the `shapes` model, side by side in one process.

    make bench        # or: python bench/run.py [--steps 10]

Prints milliseconds per forward+backward step for the backbone and the
decoder, with and without XLA, with and without LSTM dropout, and the ratios.
Numbers depend on the machine; compare only rows of one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from caption_app.model import backbones  # noqa: E402
from caption_app.model.lstm_decoder import LSTMDecoder  # noqa: E402


def _time(fn, *args, steps: int) -> float:
    fn(*args)  # trace / compile
    began = time.perf_counter()
    for _ in range(steps):
        fn(*args)
    return (time.perf_counter() - began) / steps * 1000


def _grad_step(layer, call, jit: bool):
    @tf.function(jit_compile=jit)
    def step(*args):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(call(*args))
        return tape.gradient(loss, layer.trainable_variables)
    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    b, size, vocab, width, captions, length = args.batch, 64, 31, 256, 5, 19
    images = tf.random.uniform([b, size, size, 3], 0, 255)
    embedding = tf.random.uniform([b, width])
    ids = tf.random.uniform([b, captions, length], 1, vocab, tf.int32)
    backbone = backbones.build_backbone("small_cnn", "none", size)

    rows = {}
    for jit in (False, True):
        rows[("backbone", jit)] = _time(_grad_step(backbone, lambda x: backbone(x, training=True), jit),
                                        images, steps=args.steps)
        for dropout in (0.0, 0.1):
            decoder = LSTMDecoder(vocab, width, width, dropout)
            decoder(embedding, ids)
            rows[(f"decoder dropout={dropout}", jit)] = _time(
                _grad_step(decoder, lambda e, i: decoder(e, i, training=True), jit), embedding, ids,
                steps=args.steps)

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, TF {tf.__version__}; batch {b} images x "
          f"{captions} captions x {length} tokens, 64 px, width {width}")
    print(f"{'forward+backward':<26}{'no XLA ms':>10}{'XLA ms':>10}{'XLA/no XLA':>12}")
    for name in ("backbone", "decoder dropout=0.0", "decoder dropout=0.1"):
        plain, xla = rows[(name, False)], rows[(name, True)]
        print(f"{name:<26}{plain:>10.0f}{xla:>10.0f}{xla / plain:>12.2f}")


if __name__ == "__main__":
    main()
