"""Converts a caption dataset into TFRecord shards + vocab.txt + manifest.json.

    python -m tfrecords_tools shapes --out data/shapes
    python -m tfrecords_tools flickr8k --images Flicker8k_Dataset --text Flickr8k_text --out data/flickr8k
    python -m tfrecords_tools coco --annotations captions_train2014.json captions_val2014.json \\
        --images train2014 val2014 --split-scheme im2txt --out data/coco
    python -m tfrecords_tools karpathy --json dataset_coco.json --images COCO_ROOT --out data/coco_karpathy
    python -m tfrecords_tools flickr30k --token results_20130124.token --images flickr30k-images --out DIR
    python -m tfrecords_tools jsonl --file data.jsonl --out DIR     (or: csv --file data.csv)
    python -m tfrecords_tools tfds --name coco_captions --data-dir ~/tensorflow_datasets --out DIR
    python -m tfrecords_tools SOURCE ... --runner direct|DataflowRunner|FlinkRunner|SparkRunner [Beam options]
    python -m tfrecords_tools merge --out DIR        (after --num-parts N --part-index I runs)
    python -m tfrecords_tools inspect DIR [--html page.html] [--examples 20]

Argument parsing only; the work is in one module per source, in
`tfrecords_tools.writer` (and `merge`, `inspection`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from caption_app import io_utils
# None of these loads TensorFlow (see source_api): --help and usage errors stay instant.
from caption_app import cli, quiet
from tfrecords_tools import coco, flickr8k, flickr30k, jsonl_csv, karpathy, shapes, source_api, tfds_source


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tfrecords_tools",
        description="Convert a caption dataset into TFRecord shards, vocab.txt and manifest.json.",
        formatter_class=cli.HelpFormatter)
    cli.add_common_arguments(parser, version=True)
    sources = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    add_source = sources.add_parser

    def add_parser(name: str, **kwargs) -> argparse.ArgumentParser:
        p = add_source(name, formatter_class=cli.HelpFormatter, **kwargs)
        cli.add_common_arguments(p)
        return p

    sources.add_parser = add_parser

    def common(p: argparse.ArgumentParser, in_parts: bool = True) -> None:
        p.add_argument("--out", required=True, help="data dir to write")
        p.add_argument("--min-word-count", type=int, default=source_api.DEFAULT_MIN_WORD_COUNT,
                       help="train words seen fewer times become <unk> (default %(default)s)")
        p.add_argument("--vocab", default=None, metavar="FILE",
                       help="use this vocab.txt (e.g. RUN/vocab.txt of an imported im2txt run) instead of building "
                            "one: its word ids are kept, other words become <unk>")
        p.add_argument("--num-workers", type=int, default=None,
                       help="threads reading and checking images (default: Python's default)")
        p.add_argument("--images-per-shard", type=int, default=source_api.DEFAULT_IMAGES_PER_SHARD,
                       help="default %(default)s")
        p.add_argument("--max-pixels", type=int, default=None,
                       help="skip images whose header claims more pixels (default 40000000, the limit serving and caption use)")
        p.add_argument("--max-file-bytes", type=int, default=source_api.DEFAULT_MAX_FILE_BYTES,
                       help="skip larger image files before reading them (default %(default)s, 64 MiB)")
        p.add_argument("--follow-symlinks", action="store_true",
                       help="read image symlinks that lead outside the image folder "
                            "(default: skipped as unsafe_path)")
        p.add_argument("--max-captions-per-image", type=int, default=source_api.DEFAULT_MAX_CAPTIONS_PER_IMAGE,
                       help="keep an image's first N captions, drop and count the rest (default %(default)s)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        p.add_argument("--runner", default=None, metavar="RUNNER",
                       help="convert as an Apache Beam pipeline on this runner: direct, DataflowRunner, "
                            "FlinkRunner or SparkRunner; Beam pipeline options follow as further "
                            "--flags (docs/data.md)")
        if in_parts:
            p.add_argument("--num-parts", type=int, default=None,
                           help="split the work into this many parts, one per machine/process (then run merge)")
            p.add_argument("--part-index", type=int, default=None,
                           help="which part this run converts, 0..num-parts-1")
            # The old names (a "shard" is a record file); kept one release, with a note.
            p.add_argument("--num-shards", dest="deprecated_num_parts", type=int, default=None,
                           help="deprecated: use --num-parts")
            p.add_argument("--shard-index", dest="deprecated_part_index", type=int, default=None,
                           help="deprecated: use --part-index")

    def fractions(p: argparse.ArgumentParser, default: float) -> None:
        p.add_argument("--val-fraction", type=float, default=default,
                       help=f"hash split: fraction of images for val (default {default:.4f})")
        p.add_argument("--test-fraction", type=float, default=default,
                       help=f"hash split: fraction of images for test (default {default:.4f})")

    shapes_parser = sources.add_parser("shapes", help="generate and convert the synthetic shapes dataset")
    common(shapes_parser, in_parts=False)
    shapes_parser.add_argument("--raw-dir", default=None,
                        help="where the generated Flickr8k-layout files go (default OUT/raw)")
    shapes_parser.add_argument("--seed", type=int, default=shapes.DEFAULT_SEED, help="the generator's seed")
    shapes_parser.add_argument("--num-train", type=int, default=shapes.DEFAULT_NUM_TRAIN, help="train images")
    shapes_parser.add_argument("--num-val", type=int, default=shapes.DEFAULT_NUM_VAL, help="val images")
    shapes_parser.add_argument("--num-test", type=int, default=shapes.DEFAULT_NUM_TEST, help="test images")
    shapes_parser.add_argument("--image-size", type=int, default=shapes.DEFAULT_IMAGE_SIZE,
                               help="pixels (default %(default)s)")

    f8k = sources.add_parser("flickr8k", help="convert Flickr8k as published")
    common(f8k)
    f8k.add_argument("--images", required=True, help="the JPEG folder (Flicker8k_Dataset)")
    f8k.add_argument("--text", required=True,
                     help="the Flickr8k_text folder (Flickr8k.token.txt, Flickr_8k.*Images.txt)")

    coco_parser = sources.add_parser("coco", help="convert MS-COCO caption files (2014/2017) as published")
    common(coco_parser)
    coco_parser.add_argument("--annotations", nargs="+", required=True,
                             help="captions_train2014.json captions_val2014.json ...")
    coco_parser.add_argument("--images", nargs="+", required=True,
                             help="image folders searched for each file_name, in order (train2014 val2014)")
    coco_parser.add_argument("--split-scheme", choices=coco.SCHEMES, default=coco.DEFAULT_SCHEME,
                             help="file: each annotation file is a split; im2txt: train2014 + 85%% of "
                                  "val2014 train, 5%% val, 10%% test (default %(default)s)")
    coco_parser.add_argument("--splits", nargs="+", default=None,
                      help="with --split-scheme file: one split name per annotation file "
                           "(default: train/val/test from the file names)")

    karpathy_parser = sources.add_parser("karpathy", help="convert a Karpathy split file (dataset_*.json)")
    common(karpathy_parser)
    karpathy_parser.add_argument("--json", required=True, help="dataset_coco.json / dataset_flickr8k.json / ...")
    karpathy_parser.add_argument("--images", required=True,
                                 help="image root (COCO: the folder holding train2014/ and val2014/)")
    karpathy_parser.add_argument("--restval", choices=karpathy.RESTVAL_CHOICES, default=karpathy.DEFAULT_RESTVAL,
                                 help="where Karpathy's 'restval' images go (default %(default)s)")

    f30k = sources.add_parser("flickr30k", help="convert Flickr30k (results_20130124.token + images)")
    common(f30k)
    f30k.add_argument("--token", required=True, help="results_20130124.token")
    f30k.add_argument("--images", required=True, help="the image folder (flickr30k-images)")
    fractions(f30k, flickr30k.DEFAULT_FRACTION)

    for fmt in ("jsonl", "csv"):
        p = sources.add_parser(fmt, help=f"convert your own {fmt.upper()} file (image path + caption[s])")
        common(p)
        p.add_argument("--file", required=True, help=f"the {fmt.upper()} file")
        p.add_argument("--root", default=None, help="image paths are relative to it (default: the file's folder)")
        p.add_argument("--image-key", default=jsonl_csv.DEFAULT_IMAGE_KEY, help="the field holding the image path")
        p.add_argument("--caption-key", default=jsonl_csv.DEFAULT_CAPTION_KEY,
                       help="the field holding a caption or a list of captions")
        p.add_argument("--split-key", default=jsonl_csv.DEFAULT_SPLIT_KEY,
                       help="the field naming the split (train, val, test); records without it are hash-split")
        fractions(p, jsonl_csv.DEFAULT_FRACTION)

    tfds = sources.add_parser("tfds", help="convert a prepared tensorflow-datasets dataset (coco_captions)")
    common(tfds)
    tfds.add_argument("--name", default=tfds_source.DEFAULT_NAME, help="the TFDS dataset name")
    tfds.add_argument("--data-dir", default=None, help="TFDS data dir (default: TFDS's default)")
    tfds.add_argument("--split-map", nargs="+", default=None, metavar="TFDS_SPLIT=SPLIT",
                      help="default: " + " ".join(f"{a}={b}" for a, b in tfds_source.DEFAULT_SPLIT_MAP.items())
                           + " (validation=val if present)")
    tfds.add_argument("--image-key", default=tfds_source.DEFAULT_IMAGE_KEY, help="the feature holding the image")
    tfds.add_argument("--captions-key", default=tfds_source.DEFAULT_CAPTIONS_KEY,
                      help="the feature holding the captions")
    tfds.add_argument("--id-key", default=tfds_source.DEFAULT_ID_KEY, help="the feature holding the image id")

    merge_parser = sources.add_parser("merge", help="combine OUT/parts/* (from --num-parts runs) into OUT")
    merge_parser.add_argument("--out", required=True, help="the data dir the parts were converted into")
    merge_parser.add_argument("--keep-parts", action="store_true", help="do not delete OUT/parts afterwards")

    inspect = sources.add_parser("inspect", help="counts, caption lengths, vocabulary coverage, HTML examples")
    inspect.add_argument("data_dir", help="a converted data dir")
    inspect.add_argument("--html", default=None, help="the page to write (default DATA_DIR/inspect.html)")
    inspect.add_argument("--examples", type=int, default=20, help="random examples on the page (default 20)")
    inspect.add_argument("--seed", type=int, default=0, help="picks the random examples")
    return parser


def parse_part(args: argparse.Namespace) -> tuple[int, int] | None:
    """(index, count) from --part-index/--num-parts (or their deprecated names), or None."""
    num, index = getattr(args, "num_parts", None), getattr(args, "part_index", None)
    old_num, old_index = getattr(args, "deprecated_num_parts", None), getattr(args, "deprecated_part_index", None)
    if old_num is not None or old_index is not None:
        print("note: --num-shards/--shard-index are deprecated and will be removed; "
              "use --num-parts/--part-index", file=sys.stderr)
        if (num is not None and old_num is not None) or (index is not None and old_index is not None):
            raise SystemExit("error: give --num-parts/--part-index only, not also --num-shards/--shard-index")
        num = old_num if num is None else num
        index = old_index if index is None else index
    if num is None and index is None:
        return None
    if num is None or index is None:
        raise SystemExit("error: --num-parts and --part-index go together")
    return index, num


def main(argv: Sequence[str] | None = None) -> int:
    """Parses `argv` (default sys.argv[1:]), converts, returns the exit code."""
    parser = build_parser()
    args, pipeline_args = parser.parse_known_args(argv)
    if pipeline_args and getattr(args, "runner", None) is None:
        parser.error(f"unrecognized arguments: {' '.join(pipeline_args)}")
    part = parse_part(args)
    quiet.import_tensorflow(args.verbose)
    # Imported here so `--help` and usage errors do not wait for TensorFlow.
    from tfrecords_tools import merge

    try:
        if args.source == "inspect":
            from tfrecords_tools import inspection

            inspection.inspect_data(args.data_dir, html_path=args.html, num_examples=args.examples,
                                    seed=args.seed)
            return 0
        if args.source == "merge":
            merge.merge_parts(args.out, keep_parts=args.keep_parts)
        else:
            kw = dict(min_word_count=args.min_word_count, num_workers=args.num_workers,
                      images_per_shard=args.images_per_shard, max_file_bytes=args.max_file_bytes,
                      follow_symlinks=args.follow_symlinks,
                      max_captions_per_image=args.max_captions_per_image, progress=not args.no_progress)
            if args.max_pixels is not None:
                kw["max_pixels"] = args.max_pixels
            if part is not None:
                kw["part"] = part
            if args.vocab is not None:
                kw["vocab_from"] = args.vocab
            if args.runner is not None:
                kw.update(runner=args.runner, pipeline_args=pipeline_args)
            _convert(args, kw)
    except (source_api.ConversionError, OSError) as e:  # bad input or an unwritable --out
        print(f"error: {e}", file=sys.stderr)
        return 2
    if part is None:
        print(f"Data dir ready: {io_utils.abspath(args.out)} (manifest.json, vocab.txt, shards)")
    return 0


def _convert(args, kw: dict) -> None:
    if args.source == "shapes":
        shapes.convert_shapes(args.out, raw_dir=args.raw_dir, seed=args.seed, num_train=args.num_train,
                              num_val=args.num_val, num_test=args.num_test, image_size=args.image_size, **kw)
    elif args.source == "flickr8k":
        flickr8k.convert_flickr8k(args.images, args.text, args.out, **kw)
    elif args.source == "coco":
        coco.convert_coco(args.annotations, args.images, args.out, split_scheme=args.split_scheme,
                          splits=args.splits, **kw)
    elif args.source == "karpathy":
        karpathy.convert_karpathy(args.json, args.images, args.out, restval=args.restval, **kw)
    elif args.source == "flickr30k":
        flickr30k.convert_flickr30k(args.token, args.images, args.out, val_fraction=args.val_fraction,
                                    test_fraction=args.test_fraction, **kw)
    elif args.source in ("jsonl", "csv"):
        jsonl_csv.convert_records(args.file, args.source, args.out, root=args.root, image_key=args.image_key,
                                  caption_key=args.caption_key, split_key=args.split_key,
                                  val_fraction=args.val_fraction, test_fraction=args.test_fraction, **kw)
    else:
        split_map = None
        if args.split_map:
            pairs = [s.partition("=") for s in args.split_map]
            if not all(sep and a and b for a, sep, b in pairs):
                raise source_api.ConversionError(f"--split-map takes TFDS_SPLIT=SPLIT pairs, got {args.split_map}")
            split_map = {a: b for a, _, b in pairs}
        tfds_source.convert_tfds(args.name, args.out, data_dir=args.data_dir, split_map=split_map,
                                 image_key=args.image_key, captions_key=args.captions_key, id_key=args.id_key,
                                 **kw)


if __name__ == "__main__":
    sys.exit(main())
