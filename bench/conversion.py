"""Benchmark (not a test): conversion speed on the shared Flickr8k subset.

    python bench/conversion.py [--root ../shared/data/flickr8k_1k] [--workers 0 2 8]

Converts the subset once per worker count (0 = the writer's default, Python's
thread-pool size) into a temporary dir and prints images/s (images actually
read, checked and written; the subset lists 8,000 images of which 991 are
present, the absent ones cost a failed open each), then scales the best rate
on paper to COCO 2014's 123,287 images. The machine's other load is printed:
compare only rows of one run.

`--beam-workers 2` then converts the same present images with the Apache Beam
pipeline (`--runner direct`, that many worker processes, multi_processing) beside
the threaded converter on the same items: on a 20-image slice (best of 2: the
pipeline's start-up, worker processes importing TensorFlow, stage set-up) and on
all of them (`--repeat` times each, under other ids), so the per-image cost is
(all - slice) / (images - 20). From it the
time for COCO (123,287 images) and for 3.3M images (Conceptual Captions) on N
workers is projected (per-image cost / N + start-up; the runner's own overheads
on a cluster, and the disk or object store, are not in it).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfrecords_tools import flickr8k  # noqa: E402

COCO_IMAGES = 123_287  # train2014 82,783 + val2014 40,504
CC_IMAGES = 3_300_000  # Conceptual Captions
SLICE = 20


def main() -> None:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default=os.path.join(os.path.dirname(here), "shared", "data", "flickr8k_1k"))
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 8])
    parser.add_argument("--beam-workers", type=int, default=0,
                        help="also compare the Beam DirectRunner with this many processes (0: skip)")
    parser.add_argument("--repeat", type=int, default=4,
                        help="with --beam-workers: each present image this many times (default %(default)s)")
    args = parser.parse_args()
    images, text = os.path.join(args.root, "Flicker8k_Dataset"), os.path.join(args.root, "Flickr8k_text")
    if not os.path.isdir(images):
        sys.exit(f"{images} is absent; pass --root (the Flickr8k layout)")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} "
          f"at start")
    rates = {}
    for workers in args.workers:
        with tempfile.TemporaryDirectory() as out:
            began = time.perf_counter()
            manifest = flickr8k.convert_flickr8k(images, text, out, num_workers=workers or None,
                                                 progress=False, verbose=False)
            seconds = time.perf_counter() - began
        written = sum(s["num_images"] for s in manifest["splits"].values())
        rates[workers] = written / seconds
        print(f"workers {workers or 'default':>7}: {written} images in {seconds:6.2f} s = "
              f"{rates[workers]:6.1f} images/s (load average now {os.getloadavg()[0]:.2f})")
    best = max(rates.values())
    print(f"COCO 2014 ({COCO_IMAGES:,} images) at {best:.1f} images/s: about {COCO_IMAGES / best / 60:.0f} min "
          "on this machine (if I/O keeps up; conversion reads each image twice and decodes it once)")
    if args.beam_workers:
        beam_side_by_side(images, text, args.beam_workers, args.repeat)


def beam_side_by_side(images: str, text: str, workers: int, repeat: int) -> None:
    """The threaded converter and the Beam DirectRunner (`workers` processes) on the present images."""
    from tfrecords_tools import writer

    items_by_split, _ = flickr8k.read_flickr8k(images, text)
    # the present images, each `repeat` times under other ids (more work against the start-up)
    items_by_split = {split: [dataclasses.replace(i, image_id=f"{i.image_id}_{r}") for r in range(repeat)
                              for i in items if os.path.isfile(i.path)]
                      for split, items in items_by_split.items()}
    total = sum(len(items) for items in items_by_split.values())
    small = {split: items[:SLICE // 3 + (split == "train")] for split, items in items_by_split.items()}
    n_small = sum(len(items) for items in small.values())
    beam_args = [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"]
    runs = {"threaded": dict(num_workers=workers), "beam": dict(runner="direct", pipeline_args=beam_args)}
    times = {}
    for name, kw in runs.items():
        for label, items in (("slice", small), ("slice", small), ("all", items_by_split)):
            with tempfile.TemporaryDirectory() as out:
                began = time.perf_counter()
                writer.write_dataset(out, items, source="flickr8k", progress=False, verbose=False, **kw)
                took = time.perf_counter() - began
                times[name, label] = min(took, times.get((name, label), took))  # the slice: best of 2
        per_image = (times[name, "all"] - times[name, "slice"]) / (total - n_small)
        start = max(0.0, times[name, "slice"] - n_small * per_image)
        print(f"{name:>8} ({workers} {'processes' if name == 'beam' else 'threads'}): {total} images in "
              f"{times[name, 'all']:6.2f} s = {total / times[name, 'all']:6.1f} images/s overall; "
              f"{n_small}-image slice {times[name, 'slice']:5.2f} s; per image {per_image * 1000:5.2f} ms "
              f"({1 / per_image:6.1f} images/s after start-up {start:4.1f} s) "
              f"(load average now {os.getloadavg()[0]:.2f})")
        if name == "beam":
            # per-image cost measured over `workers` processes on this machine: one worker's cost is
            # `workers` times it; N workers on N machines take per_worker / N per image.
            per_worker = per_image * workers
            for n in (1, 8, 32, 128):
                print(f"    projected on {n:3d} workers: COCO {_hms(COCO_IMAGES * per_worker / n + start)}, "
                      f"3.3M images {_hms(CC_IMAGES * per_worker / n + start)}")


def _hms(seconds: float) -> str:
    h, rest = divmod(int(round(seconds)), 3600)
    return f"{h:d} h {rest // 60:02d} min" if h else f"{rest // 60:d} min {rest % 60:02d} s"


if __name__ == "__main__":
    main()
