"""Benchmark (not a test): the cost of the training loss's form under XLA on this CPU.

    python bench/loss_form.py [--vocab 12000] [--rows 6,5,20] [--rounds 7]

Forward + backward (gradient with respect to the logits) of the summed masked token loss
over logits [images, captions, steps, vocab] (default: an im2txt batch of 6 images x 5
captions x 20 steps, a COCO-sized vocabulary), each form in its own XLA-compiled
tf.function; the forms alternate call by call (median over rounds):

- keras sparse CE: keras.losses.sparse_categorical_crossentropy (the project's loss before);
- smoothed, two softmaxes: the above plus a separate log_softmax for the label-smoothing term
  (the first label-smoothing code);
- logsumexp (the project's `token_loss`): logsumexp(z) - z[target], and for label smoothing
  - e * (mean(z) - z[target]); no [..., V] log-probabilities materialized.

It also checks that every form gives the same loss.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402

from caption_app.model.loss import token_loss  # noqa: E402


def keras_ce(targets, logits, e):
    nll = keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True)
    if e:
        nll = (1 - e) * nll - e * ops.mean(ops.log_softmax(logits, axis=-1), axis=-1)
    return nll * ops.cast(ops.not_equal(targets, 0), "float32")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, default=12000)
    p.add_argument("--rows", default="6,5,20")
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    shape = tuple(int(n) for n in args.rows.split(","))
    logits = tf.Variable(rng.normal(size=shape + (args.vocab,)).astype("float32"))
    targets = tf.constant(rng.integers(0, args.vocab, shape).astype("int32"))

    def step(fn, e):
        @tf.function(jit_compile=True)
        def run():
            with tf.GradientTape() as tape:
                total = tf.reduce_sum(fn(targets, logits * 1.0, e))
            return total, tape.gradient(total, logits)
        return run

    forms = {
        "keras sparse CE (plain)": step(keras_ce, 0.0),
        "logsumexp (plain)": step(lambda t, z, e: token_loss(t, z)[0], 0.0),
        "keras CE + log_softmax (smoothed 0.1)": step(keras_ce, 0.1),
        "logsumexp (smoothed 0.1)": step(lambda t, z, e: token_loss(t, z, e)[0], 0.1),
    }
    values = {name: float(fn()[0]) for name, fn in forms.items()}
    times = {name: [] for name in forms}
    for _ in range(args.rounds):
        for name, fn in forms.items():
            began = time.perf_counter()
            for _ in range(5):
                fn()[0].numpy()
            times[name].append((time.perf_counter() - began) / 5)
    base = statistics.median(times["keras sparse CE (plain)"])
    print(f"logits {shape + (args.vocab,)}, forward + backward under XLA, median of {args.rounds} rounds")
    for name in forms:
        median = statistics.median(times[name])
        print(f"  {name:<40} {median * 1e3:7.2f} ms  {median / base:5.2f}x  loss {values[name]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
