"""Benchmark (not a test): length buckets off vs on, side by side in one process.

    python bench/length_buckets.py [--root ../shared/data/flickr8k_1k] [--steps 8] [--rounds 3]

1. Decoder positions per real token on the Flickr8k caption lengths: the
   `im2txt` preset's train batches (6 images x 5 captions) over one epoch of
   steps, padded to one length (`data.length_buckets=1`, as before) and by
   length bucket (the default): positions = what the LSTM and the logits layer
   compute (T-1 per caption row), real = non-padding targets. The images are
   decoded at 75 px (token counts do not depend on them).
2. The `shapes` preset (the demo) on the embedded shapes dataset: training
   time per epoch = steps per epoch x the mean seconds per train step, the two
   sides' steps alternating (A B A B ...) after every bucket's shape compiled.

The load average is printed around each part; compare only numbers of one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def _context(config, data_dir: str, run_dir: str):
    from caption_app import run_dir as run_dir_lib

    return run_dir_lib.RunContext.create(config, data_dir, run_dir)


def token_ratios(data_dir: str) -> dict[str, float]:
    """{"one length": positions per real target token, "buckets": the same with length buckets}."""
    from caption_app import budget as budget_lib
    from caption_app import config as config_lib
    from caption_app.data import manifest as manifest_lib
    from caption_app.data.pipeline import make_dataset, resolve_bucket_lengths, resolve_tensor_sizes
    from caption_app.data.vocabulary import Vocabulary

    manifest = manifest_lib.load(data_dir)
    vocab = Vocabulary.load(manifest.vocab_path)
    out = {}
    for name, buckets in (("one length", "1"), ("buckets", "4")):
        config = config_lib.override(config_lib.get_preset("im2txt"), [
            "model.backbone_weights=none", "data.augment=", "data.image_size=75",
            f"data.length_buckets={buckets}"])
        sizes = resolve_tensor_sizes(config, manifest)
        steps = budget_lib.budget_for(config, manifest).steps_per_epoch
        positions = real = 0
        for _, targets in make_dataset(config, manifest, vocab, "train", training=True, sizes=sizes).take(steps):
            positions += int(targets.shape[0] * targets.shape[1] * targets.shape[2])
            real += int((targets.numpy() != 0).sum())
        out[name] = positions / real
        out[f"{name} lengths"] = resolve_bucket_lengths(config, manifest, sizes.caption_length)
    return out


def _step_times(sides: dict, *, steps: int, rounds: int) -> dict[str, float]:
    """Mean seconds per train step of each side {name: (fit_model, iterator)}: `rounds` x `steps`
    steps per side, the sides alternating step by step (A B A B ...), so that a burst of load
    on the shared machine falls on both. A mean, not a median: the buckets' steps differ in cost."""
    totals = {name: 0.0 for name in sides}
    for _ in range(rounds * steps):
        for name, (model, iterator) in sides.items():
            began = time.perf_counter()
            inputs, targets = next(iterator)[:2]  # waiting for the input pipeline counts too
            model.train_on_batch(inputs, targets)
            totals[name] += time.perf_counter() - began
    return {name: total / (rounds * steps) for name, total in totals.items()}


def warm_up(model, dataset, num_shapes: int, max_batches: int = 200):
    """An iterator over `dataset` after one train step on a batch of each of its `num_shapes`
    shapes (each bucket compiles once, outside the timing)."""
    iterator = iter(dataset)
    shapes = set()
    for _ in range(max_batches):
        inputs, targets = next(iterator)[:2]
        if tuple(targets.shape) not in shapes:
            shapes.add(tuple(targets.shape))
            model.train_on_batch(inputs, targets)
            if len(shapes) == num_shapes:
                break
    return iterator


def shapes_epoch_times(data_dir: str, work: str, *, steps: int, rounds: int) -> dict:
    """Seconds per epoch of the `shapes` preset's training, buckets off vs on."""
    import keras

    from caption_app import budget as budget_lib
    from caption_app import config as config_lib
    from caption_app.data.pipeline import make_dataset, resolve_bucket_lengths
    from caption_app.distribute import FitModel
    from caption_app.model.loss import MaskedCrossEntropy

    sides, info = {}, {}
    for name, buckets in (("one length", "1"), ("buckets", "4")):
        config = config_lib.override(config_lib.get_preset("shapes"), [f"data.length_buckets={buckets}"])
        ctx = _context(config, data_dir, os.path.join(work, name.replace(" ", "_")))
        lengths = resolve_bucket_lengths(config, ctx.manifest, ctx.sizes.caption_length)
        fit_model = FitModel(ctx.model)
        fit_model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=MaskedCrossEntropy(), jit_compile=True)
        dataset = make_dataset(config, ctx.manifest, ctx.vocab, "train", training=True, sizes=ctx.sizes).repeat()
        sides[name] = (fit_model, warm_up(fit_model, dataset, len(lengths)))
        info[f"{name} lengths"] = lengths
        info["steps per epoch"] = budget_lib.budget_for(config, ctx.manifest).steps_per_epoch
        ctx.release()
    per_step = _step_times(sides, steps=steps, rounds=rounds)
    for name, seconds in per_step.items():
        info[name] = seconds * info["steps per epoch"]
    return info


def main() -> None:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default=os.path.join(os.path.dirname(here), "shared", "data", "flickr8k_1k"))
    parser.add_argument("--steps", type=int, default=10, help="steps per side and round (shapes epoch)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (timed steps per side: rounds x steps)")
    parser.add_argument("--skip", default="", help="tokens,shapes")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    from tfrecords_tools import flickr8k
    from tfrecords_tools.shapes import convert_shapes

    print(f"machine: {os.cpu_count()} CPUs; load before: {_load()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_buckets_") as tmp:
        if "tokens" not in skip:
            if os.path.isdir(os.path.join(args.root, "Flicker8k_Dataset")):
                data = os.path.join(tmp, "flickr8k")
                flickr8k.convert_flickr8k(os.path.join(args.root, "Flicker8k_Dataset"),
                                          os.path.join(args.root, "Flickr8k_text"), data, progress=False,
                                          verbose=False)
                load = _load()
                r = token_ratios(data)
                print(f"decoder positions per real target token, Flickr8k subset train captions (im2txt preset, "
                      f"6 images x 5 captions, one epoch of steps): one length {r['one length']:.2f} "
                      f"(padded to {r['one length lengths'][-1]}), buckets {r['buckets']:.2f} "
                      f"(lengths {'/'.join(map(str, r['buckets lengths']))}); load {load} -> {_load()}", flush=True)
            else:
                print(f"tokens: {args.root} not found, skipped", flush=True)
        if "shapes" not in skip:
            data = os.path.join(tmp, "shapes")
            convert_shapes(data, progress=False, verbose=False)
            load = _load()
            r = shapes_epoch_times(data, tmp, steps=args.steps, rounds=args.rounds)
            print(f"shapes preset, seconds per epoch ({r['steps per epoch']} steps x the mean of "
                  f"{args.rounds * args.steps} alternating steps per side): one length {r['one length']:.1f} s "
                  f"(padded to {r['one length lengths'][-1]}), buckets {r['buckets']:.1f} s "
                  f"(lengths {'/'.join(map(str, r['buckets lengths']))}): "
                  f"{r['one length'] / r['buckets']:.2f}x; load {load} -> {_load()}", flush=True)


if __name__ == "__main__":
    main()
