"""Benchmark (not a test): length buckets off vs on, side by side in one process.

    python bench/length_buckets.py [--root ../shared/data/flickr8k_1k] [--steps 8] [--rounds 3]

1. Decoder positions per real token on the Flickr8k caption lengths: the
   `im2txt` preset's train batches (6 images x 5 captions) over one epoch of
   steps, padded to one length (`data.length_buckets=1`, as before), by
   length bucket (the default) and with captions cut to the bucket of an
   image's 2nd or 3rd longest caption (`data.bucket_caption_rank`):
   positions = what the LSTM and the logits layer compute (T-1 per caption
   row), real = non-padding targets; with the fraction of target tokens cut
   and of captions losing their `<end>`. The images are decoded at 75 px
   (token counts do not depend on them). Then the same rules over every
   image of the caption file (`caption_file_ratios`: all 8,091 Flickr8k
   images, whose files the subset mostly lacks).
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
    from caption_app.runs import context as run_context

    return run_context.RunContext.create(config, data_dir, run_dir)


# Settings compared by `token_ratios`: name -> --set assignments on the im2txt preset.
TOKEN_SETTINGS = {
    "one length": ["data.length_buckets=1"],
    "buckets": [],  # the default: 4 buckets, each image's longest caption decides
    "buckets, rank 2": ["data.bucket_caption_rank=2"],
    "6 buckets, rank 2": ["data.length_buckets=6", "data.bucket_caption_rank=2"],
    "buckets, rank 3": ["data.bucket_caption_rank=3"],
}


def _token_config(assignments: list[str]):
    from caption_app import config as config_lib

    return config_lib.override(config_lib.get_preset("im2txt"), [
        "model.backbone_weights=none", "data.augment=", "data.image_size=75", *assignments])


def _ratios(positions: int, kept: int, uncut: int, lost: int, captions: int, lengths) -> dict:
    return {"positions per real": positions / kept, "positions per caption token": positions / uncut,
            "cut tokens": 1 - kept / uncut, "lost ends": lost / captions, "lengths": tuple(lengths)}


def token_ratios(data_dir: str, settings: dict = TOKEN_SETTINGS) -> dict[str, dict]:
    """name -> counts over one epoch of the `im2txt` preset's train batches with that setting:
    "positions per real" (decoder positions per real target token computed), "positions per
    caption token" (per target token of the captions uncut, as one length has them), "cut
    tokens" (the fraction of those cut to buckets), "lost ends" (the fraction of captions cut to
    a bucket, losing their <end>), "lengths" (the buckets)."""
    import numpy as np

    from caption_app.training import budget as budget_lib
    from caption_app.data import manifest as manifest_lib
    from caption_app.data.pipeline import make_dataset, resolve_bucket_lengths, resolve_tensor_sizes
    from caption_app.data.vocabulary import Vocabulary

    manifest = manifest_lib.load(data_dir)
    vocab = Vocabulary.load(manifest.vocab_path)
    base = _token_config(TOKEN_SETTINGS["one length"])
    full = {}  # image id -> target tokens of each of its captions, uncut (at most T - 1)
    for _, targets, extras in make_dataset(base, manifest, vocab, "train", training=False, with_ids=True):
        for image_id, rows in zip(extras["image_id"].numpy(), targets.numpy()):
            full[image_id] = [int(n) for n in np.count_nonzero(rows, axis=-1) if n]
    out = {}
    for name, assignments in settings.items():
        config = _token_config(assignments)
        sizes = resolve_tensor_sizes(config, manifest)
        steps = budget_lib.budget_for(config, manifest).steps_per_epoch
        positions = kept = uncut = lost = captions = 0
        for _, targets, extras in make_dataset(config, manifest, vocab, "train", training=True, sizes=sizes,
                                               with_ids=True).take(steps):
            t = targets.numpy()
            positions += t.size
            kept += int(np.count_nonzero(t))
            for image_id in extras["image_id"].numpy():  # every image brings all its captions (5 of 5)
                uncut += sum(full[image_id])
                lost += sum(n > t.shape[-1] for n in full[image_id])
                captions += len(full[image_id])
        out[name] = _ratios(positions, kept, uncut, lost, captions,
                            resolve_bucket_lengths(config, manifest, sizes.caption_length))
    return out


def caption_file_ratios(data_dir: str, token_file: str, settings: dict = TOKEN_SETTINGS) -> dict[str, dict]:
    """`token_ratios`' counts over every image of a Flickr8k caption file (images or not), each
    image once: its captions through the pipeline's `caption_ids` and `cut_to_bucket` with the
    converted data's vocabulary and tokenizer, the buckets chosen from these images' longest
    captions as the manifest's histogram would be; positions = 5 rows x (bucket - 1)."""
    import bisect
    import collections
    import dataclasses

    import numpy as np
    import tensorflow as tf

    from caption_app.data import manifest as manifest_lib
    from caption_app.data.pipeline import caption_ids, cut_to_bucket, resolve_bucket_lengths, resolve_tensor_sizes
    from caption_app.data.vocabulary import Vocabulary

    manifest = manifest_lib.load(data_dir)
    vocab = Vocabulary.load(manifest.vocab_path)
    table = vocab.lookup_table()
    texts = collections.defaultdict(list)
    with open(token_file, encoding="utf-8") as f:
        for line in f:
            key, _, text = line.rstrip("\n").partition("\t")
            texts[key.split("#")[0]].append(text)
    sizes = resolve_tensor_sizes(_token_config([]), manifest)
    ds = tf.data.Dataset.from_tensor_slices(tf.ragged.constant(list(texts.values())))
    ids = [x.numpy() for x in ds.map(lambda c: caption_ids(c, table, manifest.tokenizer, sizes.num_captions,
                                                           sizes.caption_length))]
    longest = collections.Counter(int(np.count_nonzero(x, axis=-1).max()) - 2 for x in ids)  # words
    manifest = dataclasses.replace(manifest, longest_caption_words=dict(longest))
    out = {"images": len(ids)}
    for name, assignments in settings.items():
        config = _token_config(assignments)
        lengths = resolve_bucket_lengths(config, manifest, sizes.caption_length)
        positions = kept = uncut = lost = captions = 0
        for x in ids:
            cut = cut_to_bucket(tf.constant(x), lengths, config.data.bucket_caption_rank).numpy()
            bucket = lengths[bisect.bisect_left(lengths, cut.shape[-1])] if len(lengths) > 1 else lengths[0]
            tokens = np.count_nonzero(x, axis=-1)
            positions += x.shape[0] * (bucket - 1)
            kept += int(np.maximum(np.count_nonzero(cut, axis=-1) - 1, 0).sum())
            uncut += int(np.maximum(tokens - 1, 0).sum())
            lost += int((tokens > bucket).sum())
            captions += int((tokens > 0).sum())
        out[name] = _ratios(positions, kept, uncut, lost, captions, lengths)
    return out


def _describe(ratios: dict) -> str:
    return "\n".join(
        f"  {name:18s} lengths {'/'.join(map(str, r['lengths'])):22s} positions per real token "
        f"{r['positions per real']:.3f}, per uncut caption token {r['positions per caption token']:.3f}; "
        f"target tokens cut {100 * r['cut tokens']:.2f}%, captions losing <end> {100 * r['lost ends']:.2f}%"
        for name, r in ratios.items() if isinstance(r, dict))


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

    from caption_app.training import budget as budget_lib
    from caption_app import config as config_lib
    from caption_app.data.pipeline import make_dataset, resolve_bucket_lengths
    from caption_app.training.distribute import FitModel
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
                print(f"decoder positions per real target token, Flickr8k subset train images (im2txt preset, "
                      f"6 images x 5 captions, one epoch of steps; real = computed, uncut = before cutting to "
                      f"buckets); load {load} -> {_load()}:\n{_describe(r)}", flush=True)
                token_file = os.path.join(args.root, "Flickr8k_text", "Flickr8k.token.txt")
                load = _load()
                r = caption_file_ratios(data, token_file)
                print(f"the same over all {r['images']} images of {token_file} (each image once, the subset's "
                      f"vocabulary); load {load} -> {_load()}:\n{_describe(r)}", flush=True)
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
