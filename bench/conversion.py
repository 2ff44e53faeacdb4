"""Benchmark (not a test): conversion speed on the shared Flickr8k subset.

    python bench/conversion.py [--root ../shared/data/flickr8k_1k] [--workers 0 2 8]

Converts the subset once per worker count (0 = the writer's default, Python's
thread-pool size) into a temporary dir and prints images/s (images actually
read, checked and written; the subset lists 8,000 images of which 991 are
present, the absent ones cost a failed open each), then scales the best rate
on paper to COCO 2014's 123,287 images. The machine's other load is printed:
compare only rows of one run.
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

from tfrecords_tools import flickr8k  # noqa: E402

COCO_IMAGES = 123_287  # train2014 82,783 + val2014 40,504


def main() -> None:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default=os.path.join(os.path.dirname(here), "shared", "data", "flickr8k_1k"))
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 8])
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


if __name__ == "__main__":
    main()
