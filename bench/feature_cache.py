"""Benchmark (not a test): one frozen-phase epoch with and without the feature cache.

    python bench/feature_cache.py [--root ../shared/data/flickr8k_1k] [--steps 4] [--rounds 3] [--set key=value ...]

Converts the shared Flickr8k subset (753 train / 113 val images), builds the
`im2txt` preset's model (InceptionV3 at 299x299, random weights: no download;
no augmentation, which the cache refuses) with the backbone frozen, and times
side by side in one process, training batches by length bucket as `train` does:

- uncached: train steps of the full model (backbone forward every step),
- the one-off cache build (backbone forward once per train and val image),
- cached: train steps of the head on the cached features.

Each side first steps once on a batch of each length bucket (tracing, one XLA
compilation per bucket), untimed; then `--rounds` x `--steps` steps per side,
the sides alternating step by step (A B A B ...). An epoch's time is the steps
per epoch x the mean seconds per step. Other processes share the CPUs: the load
average is printed; compare only numbers of one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from caption_app import config as config_lib  # noqa: E402
from caption_app import feature_cache  # noqa: E402
from caption_app.runs import context as run_context  # noqa: E402
from caption_app.data import manifest as manifest_lib  # noqa: E402
from caption_app.data.pipeline import make_dataset, resolve_bucket_lengths  # noqa: E402
from caption_app.model import show_and_tell  # noqa: E402
from caption_app.model.loss import MaskedCrossEntropy  # noqa: E402
from caption_app.training.optimizers import make_optimizer  # noqa: E402
from caption_app.training.budget import budget_for  # noqa: E402
from tfrecords_tools import flickr8k  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from length_buckets import _step_times, warm_up  # noqa: E402


def _compiled(model, config):
    model.compile(optimizer=make_optimizer(config, 0.01), loss=MaskedCrossEntropy(),
                  jit_compile=config.train.jit_compile)
    return model


def main() -> None:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default=os.path.join(os.path.dirname(here), "shared", "data", "flickr8k_1k"))
    parser.add_argument("--data", default=None, help="an already converted data dir (skips the conversion)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per side and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (timed steps per side: rounds x steps)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--work-dir", default=None,
                        help="keep the converted data and the cache here between runs (default: a temp dir); "
                             "a cache with the same key is reused and its build is not timed again")
    args = parser.parse_args()

    config = config_lib.override(config_lib.get_preset("im2txt"), [
        "model.backbone_weights=none", "data.augment=", "train.freeze_backbone=true",
        "train.feature_cache=true",
        # The batch the recorded results used (the preset's is now 6 images x 5 captions).
        "train.batch_size=32", "data.captions_per_image=0", *args.set])
    with tempfile.TemporaryDirectory() as temp:
        tmp = args.work_dir or temp
        data_dir = args.data
        if data_dir is None and os.path.exists(os.path.join(tmp, "data", manifest_lib.MANIFEST)):
            data_dir = os.path.join(tmp, "data")
        if data_dir is None:
            data_dir = os.path.join(tmp, "data")
            flickr8k.convert_flickr8k(os.path.join(args.root, "Flicker8k_Dataset"),
                                      os.path.join(args.root, "Flickr8k_text"), data_dir,
                                      progress=False, verbose=False)
        # The frozen phase's setup, as `train` does it (seeded model, backbone frozen below).
        ctx = run_context.RunContext.create(config, data_dir, os.path.join(tmp, "run"))
        manifest, vocab, sizes, model = ctx.manifest, ctx.vocab, ctx.sizes, ctx.model
        t = config.train
        epoch_steps = budget_for(config, manifest).steps_per_epoch
        steps = args.steps
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
              f"{config.model.backbone} at {sizes.image_size}px, batch {t.batch_size} images x "
              f"{sizes.num_captions} captions, LSTM dropout {config.model.lstm_dropout}, "
              f"XLA {'on' if t.jit_compile else 'off'}; {manifest.split('train').num_images} train images = "
              f"{epoch_steps} steps/epoch; timing {args.rounds} x {steps} steps per side", flush=True)

        show_and_tell.set_backbone_trainable(model, False)
        lengths = resolve_bucket_lengths(config, manifest, sizes.caption_length)
        print(f"length buckets {'/'.join(map(str, lengths))}: each side first steps once on a batch of each "
              "(XLA compiles each shape once), untimed", flush=True)

        train_ds = make_dataset(config, manifest, vocab, "train", training=True, sizes=sizes).repeat()
        uncached_model = _compiled(model, config)
        uncached_it = warm_up(uncached_model, train_ds, len(lengths))

        began = time.perf_counter()
        cache_dir = feature_cache.ensure_cache(ctx, verbose=False)
        info = feature_cache.load_info(cache_dir)
        build = info["seconds"]
        reused = time.perf_counter() - began < build
        cached_images = sum(s["num_images"] for s in info["splits"].values())
        print(f"cache build: {build:.1f} s for {cached_images} images (train + val), "
              f"{cached_images / build:.1f} images/s{' (reused: timed when it was built)' if reused else ''}",
              flush=True)

        head = _compiled(feature_cache.build_head(model), config)
        cached_ds = feature_cache.make_cached_dataset(ctx, cache_dir, "train", training=True).repeat()
        cached_it = warm_up(head, cached_ds, len(lengths))
        load = f"{os.getloadavg()[0]:.2f}"
        per_step = _step_times({"uncached": (uncached_model, uncached_it), "cached": (head, cached_it)},
                               steps=steps, rounds=args.rounds)
        load += f" -> {os.getloadavg()[0]:.2f}"

    u_epoch, c_epoch = per_step["uncached"] * epoch_steps, per_step["cached"] * epoch_steps
    print(f"\none frozen-phase epoch ({epoch_steps} steps x the mean seconds per step of "
          f"{args.rounds * steps} alternating steps per side; load average {load}):")
    print(f"  uncached        {u_epoch:8.1f} s   ({per_step['uncached']:.3f} s/step)")
    print(f"  cached          {c_epoch:8.2f} s   ({per_step['cached']:.3f} s/step)   ratio uncached/cached "
          f"{u_epoch / c_epoch:.1f}x")
    print(f"  cache build     {build:8.1f} s   (once; pays for itself after "
          f"{build / max(u_epoch - c_epoch, 1e-9):.2f} epochs)")


if __name__ == "__main__":
    main()
