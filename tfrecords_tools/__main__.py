"""Converts a caption dataset into TFRecord shards + vocab.txt + manifest.json.

    python -m tfrecords_tools shapes --out data/shapes
    python -m tfrecords_tools flickr8k --images Flicker8k_Dataset --text Flickr8k_text --out data/flickr8k

Argument parsing only; the work is in `tfrecords_tools.shapes`,
`tfrecords_tools.flickr8k` and `tfrecords_tools.writer`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tfrecords_tools",
        description="Convert a caption dataset into TFRecord shards, vocab.txt and manifest.json.")
    sources = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", required=True, help="data dir to write")
        p.add_argument("--min-word-count", type=int, default=4,
                       help="train words seen fewer times become <unk> (default 4)")
        p.add_argument("--num-workers", type=int, default=None,
                       help="threads reading and checking images (default: Python's default)")
        p.add_argument("--images-per-shard", type=int, default=1000, help="default 1000")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")

    shapes = sources.add_parser("shapes", help="generate and convert the synthetic shapes dataset")
    common(shapes)
    shapes.add_argument("--raw-dir", default=None,
                        help="where the generated Flickr8k-layout files go (default OUT/raw)")
    shapes.add_argument("--seed", type=int, default=0)
    shapes.add_argument("--num-train", type=int, default=3000)
    shapes.add_argument("--num-val", type=int, default=300)
    shapes.add_argument("--num-test", type=int, default=500)
    shapes.add_argument("--image-size", type=int, default=64, help="pixels (default 64)")

    f8k = sources.add_parser("flickr8k", help="convert Flickr8k as published")
    common(f8k)
    f8k.add_argument("--images", required=True, help="the JPEG folder (Flicker8k_Dataset)")
    f8k.add_argument("--text", required=True,
                     help="the Flickr8k_text folder (Flickr8k.token.txt, Flickr_8k.*Images.txt)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parses `argv` (default sys.argv[1:]), converts, returns the exit code."""
    args = _parser().parse_args(argv)
    # Imported here so `--help` and usage errors do not wait for TensorFlow.
    from tfrecords_tools import flickr8k, shapes, writer

    writer_kwargs = dict(min_word_count=args.min_word_count, num_workers=args.num_workers,
                         images_per_shard=args.images_per_shard, progress=not args.no_progress)
    try:
        if args.source == "shapes":
            shapes.convert_shapes(args.out, raw_dir=args.raw_dir, seed=args.seed,
                                  num_train=args.num_train, num_val=args.num_val,
                                  num_test=args.num_test, image_size=args.image_size,
                                  **writer_kwargs)
        else:
            flickr8k.convert_flickr8k(args.images, args.text, args.out, **writer_kwargs)
    except (writer.ConversionError, OSError) as e:  # bad input or an unwritable --out
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"Data dir ready: {os.path.abspath(args.out)} (manifest.json, vocab.txt, shards)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
