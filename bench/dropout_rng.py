"""Benchmark (not a test): where dropout's time goes under XLA on this CPU.

    python bench/dropout_rng.py [--rows 4960] [--width 512] [--rounds 7]

Forward + backward of tanh(dropout(x) @ W) summed, x [rows, width] (4,960 = 160
caption rows x 31 steps, the feature-cache benchmark's decoder input), rate 0.3,
each variant in its own tf.function, with XLA (jit_compile=True) and without; the
variants alternate call by call (one call each per round, median over rounds).
The keep-mask comes from:

- none: no dropout (the floor: the matmul and its gradient);
- keras.layers.Dropout: keras.random.dropout -> tf.nn.experimental.stateless_dropout
  with its default rng_alg (auto_select);
- PhiloxDropout: the decoder's layer (caption_app/model/lstm_decoder.py), the same
  op with rng_alg="philox";
- stateless_uniform <alg>: tf.random.stateless_uniform >= rate, alg philox /
  threefry / auto_select (threefry has no CPU kernel without XLA);
- Generator philox: a stateful tf.random.Generator's uniform;
- tf.random.uniform: the stateful legacy op.

With --hlo it also prints, per algorithm, which TensorFlow ops XLA fused into the
per-element loop of the optimized HLO.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from caption_app.model.lstm_decoder import PhiloxDropout  # noqa: E402

RATE = 0.3


def variants() -> dict:
    seed = tf.Variable([1, 2], dtype=tf.int32)
    generator = tf.random.Generator.from_seed(1, alg="philox")
    keras_layer, philox_layer = keras.layers.Dropout(RATE, seed=1), PhiloxDropout(RATE, seed=1)

    def keep(uniform, x):
        return tf.where(uniform >= RATE, x / (1 - RATE), tf.zeros_like(x))

    def stateless(alg):
        return lambda x: keep(tf.random.stateless_uniform(tf.shape(x), seed=seed.assign_add([0, 1]), alg=alg), x)

    return {
        "none": lambda x: x,
        "keras.layers.Dropout (auto_select)": lambda x: keras_layer(x, training=True),
        "PhiloxDropout (philox)": lambda x: philox_layer(x, training=True),
        "stateless_uniform philox": stateless("philox"),
        "stateless_uniform threefry": stateless("threefry"),
        "stateless_uniform auto_select": stateless("auto_select"),
        "Generator philox": lambda x: keep(generator.uniform(tf.shape(x)), x),
        "tf.random.uniform": lambda x: keep(tf.random.uniform(tf.shape(x)), x),
    }


def fused_ops(alg: str, x) -> collections.Counter:
    """TensorFlow op types of the instructions in the optimized HLO's last (per-element) fusion."""
    @tf.function(jit_compile=True)
    def f(x, s):
        return tf.nn.experimental.stateless_dropout(x, RATE, seed=s, rng_alg=alg)

    hlo = f.experimental_get_compiler_ir(x, tf.constant([1, 2]))(stage="optimized_hlo")
    fusion = re.search(r"^%fused_computation \(.*?^}", hlo, re.S | re.M).group(0)
    return collections.Counter(re.findall(r'op_type="(\w+)"', fusion))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=4960)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--hlo", action="store_true")
    args = parser.parse_args()
    x = tf.random.normal([args.rows, args.width])
    w = tf.Variable(tf.random.normal([args.width, args.width]) * 0.05)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; x [{args.rows}, {args.width}], "
          f"rate {RATE}, forward + backward, median of {args.rounds} alternating calls", flush=True)

    steps = {}
    for jit in (True, False):
        for name, dropout in variants().items():
            @tf.function(jit_compile=jit)
            def step(x, dropout=dropout):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    loss = tf.reduce_sum(tf.tanh(dropout(x) @ w))
                return tape.gradient(loss, [x, w])
            try:
                step(x)  # trace and compile, untimed
                steps[(jit, name)] = step
            except tf.errors.InvalidArgumentError as err:  # threefry has no non-XLA CPU kernel
                print(f"{'XLA' if jit else 'no XLA'}: {name}: not available ({err.message.splitlines()[0][:80]})")
    times = collections.defaultdict(list)
    for _ in range(args.rounds):
        for key, step in steps.items():
            began = time.perf_counter()
            step(x)[0].numpy()
            times[key].append(time.perf_counter() - began)
    for jit in (True, False):
        floor = statistics.median(times[(jit, "none")])
        for (j, name), t in times.items():
            if j == jit:
                ms = 1000 * statistics.median(t)
                print(f"{'XLA' if jit else 'no XLA':7s} {name:36s} {ms:8.1f} ms  ({ms / 1000 / floor:5.2f}x none)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.hlo:
        for alg in ("auto_select", "philox"):
            print(f"XLA per-element fusion, rng_alg={alg}: {dict(fused_ops(alg, x))}")


if __name__ == "__main__":
    main()
