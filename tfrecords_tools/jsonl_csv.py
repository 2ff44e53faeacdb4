"""Your own data: JSON Lines or CSV, one record per line/row.

Each record names an image (a path relative to `--root`, default the folder
of the file) and its caption, or in JSONL a list of captions. Records of the
same image are merged (captions in file order), so "one caption per line" and
"all captions in one line" both work. An optional split column says train,
val or test (dev/validation mean val, restval means train); without one (or
where it is empty) an image's split comes from a stable hash of its path
(`--val-fraction`, `--test-fraction`, default 5% each): deterministic,
independent of the file's order, and an image never moves when more are added.

    {"image": "imgs/1.jpg", "caption": "a dog", "split": "train"}
    {"image": "imgs/2.jpg", "captions": ["a cat", "a cat on a mat"]}

    image,caption,split
    imgs/1.jpg,a dog,train

    python -m tfrecords_tools jsonl --file data.jsonl --out DIR [--root DIR]
    python -m tfrecords_tools csv --file data.csv --out DIR [--image-key image --caption-key caption]

Malformed lines, records without an image or caption and unknown split names
are counted as "bad_line"; a record that puts an image into another split
than an earlier record did is counted as "split_conflict" (the first wins).
"""

from __future__ import annotations

import collections
import csv
import io
import json
import os
from typing import Iterator

from caption_app import io_utils
from tfrecords_tools.source_api import ConversionError, Item, hash_split, image_path, read_text

FORMATS = ("jsonl", "csv")
SPLIT_ALIASES = {"train": "train", "restval": "train", "val": "val", "dev": "val", "validation": "val",
                 "test": "test"}
DEFAULT_FRACTION = 0.05
DEFAULT_IMAGE_KEY, DEFAULT_CAPTION_KEY, DEFAULT_SPLIT_KEY = "image", "caption", "split"


def _records(path: str, fmt: str) -> Iterator[tuple[str, object]]:
    """(`file:line`, record dict or None when the line is malformed)."""
    base = os.path.basename(path)
    text = read_text(path)
    if fmt == "jsonl":
        for line_no, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested too deep
                record = None
            yield f"{base}:{line_no}", record if isinstance(record, dict) else None
    else:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        while True:
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error:  # e.g. a cell over csv.field_size_limit(); the reader goes on after it
                yield f"{base}:{reader.line_num + 1}", None
                continue
            bad = None in record or None in record.values()  # more or fewer cells than the header
            yield f"{base}:{reader.line_num}", None if bad else record


def read_records(path: str | os.PathLike, fmt: str, *, root: str | os.PathLike | None = None,
                 image_key: str = DEFAULT_IMAGE_KEY, caption_key: str = DEFAULT_CAPTION_KEY,
                 split_key: str = DEFAULT_SPLIT_KEY, val_fraction: float = DEFAULT_FRACTION,
                 test_fraction: float = DEFAULT_FRACTION) -> tuple[dict[str, list[Item]], dict[str, list[str]]]:
    """Reads a JSONL or CSV file into items per split (first-appearance order).

    Args:
      path: the file.
      fmt: "jsonl" or "csv".
      root: image paths are relative to it (default: the file's folder).
      image_key, caption_key, split_key: the field/column names. In JSONL the
        caption field may hold a list of captions; `captions` is accepted as
        well as `caption_key`.
      val_fraction, test_fraction: the hash split of images without a split.
    """
    path = os.fspath(path)
    if fmt not in FORMATS:
        raise ConversionError(f"unknown format {fmt!r}; choose {', '.join(FORMATS)}")
    if not io_utils.exists(path):
        raise ConversionError(f"{path} does not exist")
    root = os.fspath(root) if root is not None else os.path.dirname(io_utils.abspath(path))
    if not io_utils.isdir(root):
        raise ConversionError(f"image root {root} does not exist (--root)")
    hash_split("", val_fraction, test_fraction)  # checks the fractions

    captions: dict[str, list[str]] = collections.OrderedDict()
    split_of: dict[str, str] = {}
    skipped: dict[str, list[str]] = collections.defaultdict(list)
    for where, record in _records(path, fmt):
        image = record.get(image_key) if record else None
        caption = None
        if record:
            caption = record.get(caption_key, record.get("captions") if fmt == "jsonl" else None)
        if isinstance(caption, str):
            caption = [caption]
        if (not isinstance(image, str) or not isinstance(caption, list)
                or not all(isinstance(c, str) for c in caption)):
            skipped["bad_line"].append(where)
            continue
        name = os.path.normpath(image.replace("\\", "/")) if image.strip() else image
        if image_path(root, image) is None:
            skipped["unsafe_path"].append(image)
            continue
        given = record.get(split_key)
        if given not in (None, ""):
            split = SPLIT_ALIASES.get(str(given).strip().lower())
            if split is None:
                skipped["bad_line"].append(f"{where} (split {given!r})")
                continue
        else:
            split = hash_split(name, val_fraction, test_fraction)
        if split_of.setdefault(name, split) != split:
            skipped["split_conflict"].append(where)
            continue
        captions.setdefault(name, []).extend(caption)

    items: dict[str, list[Item]] = {"train": [], "val": [], "test": []}
    for name, caps in captions.items():
        items[split_of[name]].append(
            Item(image_id=name, path=image_path(root, name), captions=tuple(caps), root=root))
    return items, dict(skipped)


def convert_records(path: str | os.PathLike, fmt: str, out_dir: str | os.PathLike, *,
                    root: str | os.PathLike | None = None, image_key: str = DEFAULT_IMAGE_KEY,
                    caption_key: str = DEFAULT_CAPTION_KEY, split_key: str = DEFAULT_SPLIT_KEY,
                    val_fraction: float = DEFAULT_FRACTION, test_fraction: float = DEFAULT_FRACTION,
                    **writer_kwargs) -> dict:
    """Converts a JSONL or CSV file into `out_dir`; `writer_kwargs` go to `writer.write_dataset`."""
    from tfrecords_tools import writer  # loads TensorFlow, so only when converting (see source_api)

    items_by_split, skipped = read_records(path, fmt, root=root, image_key=image_key,
                                           caption_key=caption_key, split_key=split_key,
                                           val_fraction=val_fraction, test_fraction=test_fraction)
    info = {"file": io_utils.abspath(path), "format": fmt,
            "root": io_utils.abspath(root) if root else os.path.dirname(io_utils.abspath(path)),
            "keys": {"image": image_key, "caption": caption_key, "split": split_key},
            "hash_split": {"val": val_fraction, "test": test_fraction}}
    return writer.write_dataset(out_dir, items_by_split, source=fmt, extra_skipped=skipped,
                                source_info=info, **writer_kwargs)
