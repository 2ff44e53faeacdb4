"""Benchmark (not a test): what each decoding strategy costs on a trained run, side by side in one process.

    python bench/decode_cost.py RUN_DIR [--batch 32] [--rounds 5]

Loads the run's `TrainedCaptioner` (caption_app/inference/captioner.py) and times `generate` on the
first `--batch` test images of the run's data (encode + search, one traced function per strategy,
interleaved A B C ..., median): beam 3 (the issue's reference), sampling K=5 (plain, and top-p 0.9),
greedy, and beam 3 with no-repeat 2. Prints each one's ms, its ratio to beam 3, the mean length of
the best caption, and the load average. Compare ratios of one run only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import tensorflow as tf

    from caption_app.data import records as records_lib
    from caption_app.data.pipeline import decode_image
    from caption_app.inference.captioner import TrainedCaptioner
    from caption_app.inference.settings import DecodeSettings
    from caption_app.runs import loader

    captioner = TrainedCaptioner.from_run_dir(args.run_dir)
    manifest = loader.load_manifest(args.run_dir)
    records = tf.data.TFRecordDataset(manifest.files("test")).take(args.batch)
    images = tf.stack([decode_image(records_lib.parse_example(r)["encoded"], captioner.image_size) for r in records])
    length = captioner.decode.max_length
    settings = {
        "beam 3": DecodeSettings(beam_size=3, max_length=length),
        "sample K=5": DecodeSettings(strategy="sample", num_captions=5, max_length=length),
        "sample K=5, top-p 0.9": DecodeSettings(strategy="sample", num_captions=5, max_length=length, top_p=0.9),
        "greedy": DecodeSettings(strategy="greedy", num_captions=1, max_length=length),
        "beam 3, no-repeat 2": DecodeSettings(beam_size=3, max_length=length, no_repeat_ngram=2),
    }
    spec = tf.TensorSpec([None, captioner.image_size, captioner.image_size, 3], tf.float32)
    functions = {name: tf.function(lambda x, s=s: captioner.generate(x, s), input_signature=[spec])
                 for name, s in settings.items()}
    for fn in functions.values():  # trace and warm up
        fn(images)
        fn(images)
    samples: dict[str, list[float]] = {name: [] for name in functions}
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    for _ in range(args.rounds):
        for name, fn in functions.items():
            began = time.perf_counter()
            fn(images)
            samples[name].append(time.perf_counter() - began)
    load += " -> " + "/".join(f"{x:.1f}" for x in os.getloadavg())
    median = {name: statistics.median(v) for name, v in samples.items()}
    words = {}
    for name, s in settings.items():
        result = captioner.generate(images, s)
        words[name] = float(tf.reduce_mean(tf.cast(result.lengths[:, 0], tf.float32)))
    print(f"run dir {args.run_dir}, batch {len(images)}, max length {length}, load {load}, TF {tf.__version__}")
    print(f"{'strategy':<24} {'ms':>8} {'vs beam 3':>10} {'best caption words':>20}")
    for name in settings:
        print(f"{name:<24} {median[name] * 1e3:8.1f} {median[name] / median['beam 3']:9.2f}x {words[name]:20.1f}")


if __name__ == "__main__":
    main()
