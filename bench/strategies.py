"""Benchmark (not a test): what the decoding strategies cost, side by side, on a demo-sized fake decoder.

    python bench/strategies.py [--batch 32] [--vocab 40] [--width 256] [--max-length 20] [--rounds 15]

The step function is shaped like the demo's decoder (an LSTM cell of `width` units on a word embedding of
the same width, then a projection to the vocabulary and a log-softmax) with random weights, sharpened and
with an <end> logit that grows with the step, so that captions end after about 10 words, as a trained
model's do (with a flat random model beam search would stop after a few steps and sampling run to
max_length: a comparison of stopping rules, not of costs). Each strategy runs in its own `tf.function`
(no XLA, as served); the calls alternate strategy by strategy, and each time is the median over rounds.

It prints each strategy's time per batch, its step_fn calls and the rows they were given, and the ratios
to Beam(beam_size=3): Sample(num_samples=5) must stay within 1.5x of it. Two more lines time the step_fn
alone on the row counts that beam 3 and sample 5 gave it: the part of each search that no strategy code
can remove (sampling K captions steps every distinct unfinished prefix once, and no fewer).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from caption_app.inference.strategies import Beam, Greedy, Sample  # noqa: E402

START_ID, END_ID = 1, 2


def fake_decoder(vocab: int, width: int, sharpness: float = 4.0, seed: int = 0):
    """(step_fn, initial_state maker): an LSTM-like step with state (h [n, width], c [n, width], t [n, 1]).

    `sharpness` scales the logits: how sure the fake model is of its next word.
    """
    rng = np.random.default_rng(seed)
    embedding = tf.constant(rng.normal(0, 1, (vocab, width)).astype(np.float32))
    kernel = tf.constant(rng.normal(0, (2 * width) ** -0.5, (2 * width, 4 * width)).astype(np.float32))
    bias = tf.zeros([4 * width])
    project = tf.constant(rng.normal(0, 3 * width ** -0.5, (width, vocab)).astype(np.float32))
    end_column = tf.one_hot(END_ID, vocab)  # [vocab]

    def step(ids, state):
        h, c, t = state
        z = tf.matmul(tf.concat([tf.gather(embedding, ids), h], axis=1), kernel) + bias  # [n, 4 * width]
        i, f, g, o = tf.split(z, 4, axis=1)
        c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
        h = tf.sigmoid(o) * tf.tanh(c)
        logits = sharpness * tf.matmul(h, project) + (2.0 * (t - 9.0)) * end_column  # [n, vocab]; <end> from ~10 words
        return tf.nn.log_softmax(logits), (h, c, t + 1.0)

    def initial_state(batch):
        h = tf.constant(rng.normal(0, 0.5, (batch, width)).astype(np.float32))
        return (h, tf.zeros([batch, width]), tf.zeros([batch, 1]))

    return step, initial_state


def row_counts(strategy, step, state, seeds, max_length):
    """The number of rows of each step_fn call in one eager search."""
    counts = []

    def counting(ids, state):
        counts.append(int(ids.shape[0]))
        return step(ids, state)

    strategy.search(counting, state, start_id=START_ID, end_id=END_ID, max_length=max_length, seeds=seeds)
    return counts


def steps_only(step, make_state, counts):
    """A tf.function that runs `step` on these row counts and nothing else: a search's step_fn cost."""
    full = make_state(max(counts))
    counts_t = tf.constant(counts)

    @tf.function
    def run():
        def body(i, total):
            n = counts_t[i]
            log_probs, _ = step(tf.fill([n], 3), tf.nest.map_structure(lambda x: x[:n], full))
            return i + 1, total + tf.reduce_sum(log_probs)

        return tf.while_loop(lambda i, _: i < len(counts), body, (0, 0.0))[1]

    return run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--vocab", type=int, default=40)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--max-length", type=int, default=20)
    p.add_argument("--sharpness", type=float, default=4.0, help="logit scale of the fake model")
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args(argv)
    step, make_state = fake_decoder(args.vocab, args.width, args.sharpness)
    state = make_state(args.batch)
    seeds = tf.range(args.batch)
    candidates = {"beam 3": Beam(beam_size=3), "sample 5": Sample(num_samples=5), "greedy": Greedy(),
                  "sample 5, top-p 0.9 + top-k 10": Sample(num_samples=5, top_p=0.9, top_k=10),
                  "beam 3, no-repeat 2": Beam(beam_size=3, no_repeat_ngram=2)}

    def compiled(strategy):
        @tf.function
        def run(state, seeds):
            return strategy.search(step, state, start_id=START_ID, end_id=END_ID, max_length=args.max_length,
                                   seeds=seeds)

        return lambda: run(state, seeds).ids.numpy()

    functions = {name: compiled(s) for name, s in candidates.items()}
    counts = {name: row_counts(s, step, state, seeds, args.max_length) for name, s in candidates.items()}
    # The step_fn alone on the rows each search fed it: the floor under that search's time.
    for name in ("beam 3", "sample 5"):
        functions[f"{name}: step_fn only"] = lambda run=steps_only(step, make_state, counts[name]): run().numpy()
    for fn in functions.values():
        fn()  # traces
    times = {name: [] for name in functions}
    for _ in range(args.rounds):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"batch {args.batch}, vocab {args.vocab}, width {args.width}, max_length {args.max_length}, "
          f"sharpness {args.sharpness}, {args.rounds} rounds, {os.cpu_count()} CPUs, TensorFlow {tf.__version__}")
    for name in functions:
        rows = counts.get(name.split(":")[0])
        print(f"  {name:32s} {1000 * median[name]:8.1f} ms   {median[name] / median['beam 3']:5.2f}x beam 3"
              + (f"   {len(rows)} step_fn calls, {sum(rows)} rows" if rows and ":" not in name else ""))
    ratio = median["sample 5"] / median["beam 3"]
    floor = median["sample 5: step_fn only"] / median["beam 3: step_fn only"]
    print(f"sample 5 / beam 3 = {ratio:.2f} (limit 1.5; their step_fn calls alone: {floor:.2f}); "
          f"greedy / beam 3 = {median['greedy'] / median['beam 3']:.2f}")
    print("within the limit" if ratio <= 1.5 else "OVER the 1.5x limit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
