"""The one writer every source uses: checks, shards, vocabulary, manifest.

A source module (`flickr8k`, `shapes`, ...) only turns its raw layout into
`Item`s per split; `write_dataset` does the rest:

1. deletes `OUT/manifest.json` (first), `OUT/vocab.txt` and the old shards of
   the splits it writes, so a killed run never leaves a manifest that points at
   half-new shards;
2. reads every image in a thread pool (PIL), checks the header's size before
   decoding, fully decodes it, and skips and counts bad inputs (see
   `SKIP_REASONS`) instead of crashing;
3. drops empty captions and captions that are not valid UTF-8, builds the
   vocabulary from the train split only and saves `OUT/vocab.txt`;
4. writes `OUT/{split}-NNNNN-of-MMMMM.tfrecord` shards, one record per image,
   each shard under a `.tmp` name renamed when complete. Records keep the
   original bytes, except for images `tf.io.decode_image` would decode wrongly
   or not at all (see `REENCODE_REASONS`: EXIF rotation, CMYK, transparency,
   formats other than JPEG/PNG/GIF), which are stored re-encoded as 8-bit RGB;
5. writes `OUT/manifest.json` last, atomically.

Same input -> byte-identical shards and vocabulary: records keep the input
order, whatever the number of workers.

Many machines: `part=(index, count)` converts only the images whose id hashes
to `index` (out of `count`) into `OUT/parts/part-IIIII-of-NNNNN/` with a
`part.json` (counts, skips and the train split's word counts); `merge_parts`
then links every part's shards into `OUT` under global names and writes the
one vocabulary (built from all train captions) and manifest.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import glob
import hashlib
import io
import json
import math
import os
import shutil
from typing import Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

import tensorflow as tf
import numpy as np
import tqdm
from PIL import Image, ImageOps

from caption_app import io_utils
from caption_app.data import manifest as manifest_lib
from caption_app.data import records
from caption_app.data import vocabulary as vocab_lib

# Why an input was skipped; keys are the manifest's "skipped" reasons.
SKIP_REASONS = {
    "missing": "image file does not exist",
    "unreadable": "image file could not be read (permissions, a directory, ...)",
    "empty_file": "image file is zero bytes",
    "truncated": "image file is cut short",
    "corrupt": "image file is not a decodable image",
    "too_large": "image header claims more pixels than max_pixels (checked before decoding)",
    "unsafe_path": "file name from the annotations is absolute or climbs out of the image root ('..')",
    "duplicate": "image id already written (same split or an earlier one)",
    "bad_encoding": "caption is not valid UTF-8 (caption dropped)",
    "empty_caption": "caption empty, whitespace or punctuation only (caption dropped)",
    "no_captions": "image has no non-empty caption (image dropped)",
    "bad_line": "line of a caption file that could not be parsed",
    "split_conflict": "record puts an image into another split than an earlier record (first kept)",
}

# Why an image was stored re-encoded instead of as published; keys are the
# manifest's "reencoded" reasons. TensorFlow ignores EXIF orientation, drops
# transparency (showing whatever colour transparent pixels hide) and has no
# TIFF/WebP-animation/palette-BMP support worth trusting; these are rare, so
# everything else keeps its original bytes.
REENCODE_REASONS = {
    "exif_orientation": "EXIF orientation applied to the pixels (JPEG quality 95, or PNG)",
    "cmyk": "CMYK/YCCK JPEG converted to RGB (JPEG quality 95)",
    "alpha": "transparency composited onto white (PNG)",
    "format": "not JPEG/PNG/GIF (BMP, TIFF, WebP, ...): first frame as PNG",
    "high_bit_depth": "16/32-bit or float pixels scaled to 8 bits (PNG)",
}

# Formats kept as published (`tf.io.decode_image` reads them correctly). MPO is
# a JPEG with extra frames (camera output).
KEPT_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF"})
JPEG_FORMATS = frozenset({"JPEG", "MPO"})

# PIL's own decompression-bomb limit (about 89 megapixels, e.g. 9459 x 9459).
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS

PARTS_DIR = "parts"
PART_FILE = "part.json"

NUM_EXAMPLES = 5  # names kept per skip reason

_T = TypeVar("_T")
_R = TypeVar("_R")


class ConversionError(ValueError):
    """A problem with the input the user has to fix (message says what and how)."""


@dataclasses.dataclass(frozen=True)
class Item:
    """One image of a source, before any check.

    Attributes:
      image_id: the id stored in the record (the file name for Flickr8k).
      path: the image file.
      captions: its raw captions, in the source's order.
    """

    image_id: str
    path: str
    captions: tuple[str, ...]


def write_dataset(
    out_dir: str | os.PathLike,
    items_by_split: Mapping[str, Sequence[Item]],
    *,
    source: str,
    min_word_count: int = 4,
    num_workers: int | None = None,
    images_per_shard: int = 1000,
    settings: vocab_lib.TokenizerSettings = vocab_lib.TokenizerSettings(),
    extra_skipped: Mapping[str, Sequence[str]] | None = None,
    source_info: Mapping | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    part: tuple[int, int] | None = None,
    progress: bool = True,
    verbose: bool = True,
) -> dict:
    """Converts items into TFRecord shards, `vocab.txt` and `manifest.json`.

    Args:
      out_dir: the data dir to write (created if needed).
      items_by_split: split name -> items, in the order to write them. Must have
        "train"; "train", "val" and "test" always get a manifest entry.
      source: the source's name, stored in the manifest.
      min_word_count: a train word seen fewer times maps to `<unk>`.
      num_workers: threads that read and decode images (None: Python's default).
      images_per_shard: shards per split = ceil(images / images_per_shard).
      settings: the tokenizer settings (stored in the manifest).
      extra_skipped: reason -> names the source already skipped (e.g. malformed
        lines); merged into the manifest's "skipped".
      source_info: JSON-serializable facts about the source, stored as is.
      max_pixels: images whose header claims more pixels are skipped as
        "too_large" before any decoding.
      part: (index, count): convert only the images whose id hashes to `index`
        into `part_dir(out_dir, index, count)` and write its `part.json`
        instead of the vocabulary and manifest (see `merge_parts`).
      progress: show tqdm progress bars (stderr).
      verbose: print the summary (stdout) at the end.

    Returns:
      The manifest dict, as written to `out_dir/manifest.json` (with `part`:
      the part's dict, as written to its `part.json`).

    Raises:
      ConversionError: no usable train image remains, or an argument is invalid.
    """
    if "train" not in items_by_split:
        raise ConversionError(f"no 'train' split given (got {sorted(items_by_split)}); "
                              "the vocabulary is built from the train split")
    if min_word_count < 1:
        raise ConversionError(f"min_word_count must be >= 1, got {min_word_count}")
    if images_per_shard < 1:
        raise ConversionError(f"images_per_shard must be >= 1, got {images_per_shard}")
    if num_workers is not None and num_workers < 1:
        raise ConversionError(f"num_workers must be >= 1, got {num_workers}")
    if max_pixels < 1:
        raise ConversionError(f"max_pixels must be >= 1, got {max_pixels}")
    if part is not None:
        check_part(*part)
    split_names = list(items_by_split) + [s for s in records.SPLITS if s not in items_by_split]
    for split in split_names:
        if not split or not all(c.isalnum() or c == "_" for c in split):
            raise ConversionError(f"split name {split!r} must be letters, digits or '_'")

    # Threads: PIL decodes and file reads release the GIL; processes would re-import TF.
    workers = num_workers or min(32, (os.cpu_count() or 1) + 4)
    out_dir = os.fspath(out_dir)
    target = out_dir if part is None else part_dir(out_dir, *part)
    os.makedirs(target, exist_ok=True)
    _remove_old_output(target, split_names)

    skipped = _Counted()
    if part is None or part[0] == 0:  # the source's own skips are counted once, in part 0
        for reason, names in (extra_skipped or {}).items():
            for name in names:
                skipped.add(reason, name)
    if part is not None:
        items_by_split = {split: [item for item in items if in_part(item.image_id, *part)]
                          for split, items in items_by_split.items()}

    converted = _convert(target, split_names, items_by_split, skipped, workers=workers,
                         images_per_shard=images_per_shard, settings=settings,
                         max_pixels=max_pixels, progress=progress)
    common = dict(source=source, settings=settings, min_word_count=min_word_count,
                  images_per_shard=images_per_shard, source_info=dict(source_info or {}))
    if part is not None:
        info = _write_part(target, part, converted, **common)
        if verbose:
            print(f"Wrote part {part[0]} of {part[1]} to {target}: "
                  + ", ".join(f"{s} {v['num_images']}" for s, v in info["splits"].items())
                  + f" images; skipped: {skipped.summary_line()}. "
                  "Merge with `python -m tfrecords_tools merge --out OUT` when every part is done.")
        return info
    if not converted["splits"]["train"].num_images:
        raise ConversionError(
            "no usable train image remains after skipping bad inputs "
            f"({skipped.summary_line()}); check the image and caption paths")
    return _finish(out_dir, converted, verbose=verbose, **common)


def _convert(target: str, split_names: Sequence[str], items_by_split: Mapping[str, Sequence[Item]],
             skipped: "_Counted", *, workers: int, images_per_shard: int,
             settings: vocab_lib.TokenizerSettings, max_pixels: int, progress: bool) -> dict:
    """Checks images and captions, writes the shards into `target`.

    Returns:
      {"splits": split -> manifest.SplitInfo,
       "train_counts": Counter of train words, "max_caption_words",
       "max_captions_per_image", "skipped": _Counted, "reencoded": _Counted}
    """
    window = 4 * workers  # results read ahead of the writer, bounding memory
    reencoded = _Counted()

    # Pass 1: ids, then every image read and decoded (nothing kept in memory).
    candidates: dict[str, list[Item]] = {}
    seen_ids: set[str] = set()
    for split in split_names:
        candidates[split] = []
        for item in items_by_split.get(split, ()):
            if item.image_id in seen_ids:
                skipped.add("duplicate", f"{split}:{item.image_id}")
                continue
            seen_ids.add(item.image_id)
            candidates[split].append(item)
    all_candidates = [item for split in split_names for item in candidates[split]]
    checked: dict[str, tuple[int, str | None]] = {}  # image_id -> (byte size, re-encode reason)
    check = functools.partial(_check_image, max_pixels=max_pixels)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool, _bar(
            progress, len(all_candidates), "checking images") as bar:
        for item, (reason, size, fix) in zip(all_candidates,
                                             _ordered_map(pool, check, all_candidates, window)):
            bar.update()
            if reason:
                skipped.add(reason, item.image_id)
            else:
                checked[item.image_id] = (size, fix)
                if fix:
                    reencoded.add(fix, item.image_id)

    # Captions of the images that survived: strip, drop those that are not
    # valid UTF-8 (sources decode bytes with errors="surrogateescape") or have
    # no word. One tokenizer pass gives the empty captions, the lengths and the
    # train split's word counts (the vocabulary).
    kept: dict[str, list[Item]] = {}
    max_words: dict[str, int] = {}
    train_counts: collections.Counter = collections.Counter()
    for split in split_names:
        images = [item for item in candidates[split] if item.image_id in checked]
        stripped = []  # per image: [(index in the source, stripped caption)]
        for item in images:
            good = []
            for i, caption in enumerate(item.captions):
                if _valid_utf8(caption):
                    good.append((i, caption.strip()))
                else:
                    skipped.add("bad_encoding", f"{item.image_id}#{i}")
            stripped.append(good)
        words = vocab_lib.split_words((c for cs in stripped for _, c in cs), settings)
        kept[split], max_words[split] = [], 0
        for item, captions in zip(images, stripped):
            good = []
            for i, caption in captions:
                caption_words = next(words)
                if not caption_words:
                    skipped.add("empty_caption", f"{item.image_id}#{i}")
                else:
                    good.append(caption)
                    max_words[split] = max(max_words[split], len(caption_words))
                    if split == "train":
                        train_counts.update(caption_words)
            if good:
                kept[split].append(dataclasses.replace(item, captions=tuple(good)))
            else:
                skipped.add("no_captions", item.image_id)

    # Pass 2: shards, the original bytes re-read in order (re-encoded where needed).
    splits_info = {}
    total = sum(len(items) for items in kept.values())
    with concurrent.futures.ThreadPoolExecutor(workers) as pool, _bar(
            progress, total, "writing shards") as bar:
        for split in split_names:
            items = kept[split]
            num_shards = math.ceil(len(items) / images_per_shard)
            encoded = _ordered_map(pool, functools.partial(_stored_bytes, checked=checked), items, window)
            files = []
            for shard in range(num_shards):
                lo, hi = len(items) * shard // num_shards, len(items) * (shard + 1) // num_shards
                name = records.shard_name(split, shard, num_shards)
                _write_shard(os.path.join(target, name), _serialized(items[lo:hi], encoded, bar))
                files.append(name)
            splits_info[split] = manifest_lib.SplitInfo(
                num_images=len(items), num_captions=sum(len(item.captions) for item in items),
                files=tuple(files))
    return {
        "splits": splits_info,
        "train_counts": train_counts,
        "max_caption_words": max_words["train"],
        "max_captions_per_image": max(
            (len(item.captions) for items in kept.values() for item in items), default=0),
        "skipped": skipped,
        "reencoded": reencoded,
    }


def _finish(out_dir: str, converted: Mapping, *, source: str, settings: vocab_lib.TokenizerSettings,
            min_word_count: int, images_per_shard: int, source_info: dict, verbose: bool,
            merged_parts: int | None = None) -> dict:
    """Writes `vocab.txt` and, last, `manifest.json` for shards already in `out_dir`."""
    vocab = vocab_lib.Vocabulary.build(converted["train_counts"], min_word_count)
    vocab_file = os.path.basename(vocab_lib.vocab_path(out_dir))
    vocab.save(os.path.join(out_dir, vocab_file))
    manifest = manifest_lib.write(
        out_dir, source=source, splits=converted["splits"], tokenizer=settings, vocab_size=vocab.size,
        vocab_file=vocab_file, min_word_count=min_word_count,
        max_caption_words=converted["max_caption_words"],
        max_captions_per_image=converted["max_captions_per_image"], images_per_shard=images_per_shard,
        skipped=converted["skipped"].to_dict(), reencoded=converted["reencoded"].to_dict(),
        source_info=source_info, merged_parts=merged_parts)
    if verbose:
        print(format_summary(manifest, out_dir))
    return manifest


# ---------------------------------------------------------------------------- parts (many machines)


def check_part(index: int, count: int) -> None:
    """Raises ConversionError unless 0 <= index < count."""
    if count < 1 or not 0 <= index < count:
        raise ConversionError(f"shard index {index} of {count} shards: need 0 <= index < count "
                              "(--shard-index I --num-shards N)")


def in_part(image_id: str, index: int, count: int) -> bool:
    """Whether `image_id` belongs to part `index` of `count`: a stable hash of the id,
    so every machine agrees without talking to the others, whatever the input order."""
    digest = hashlib.sha1(image_id.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % count == index


def part_dir(out_dir: str | os.PathLike, index: int, count: int) -> str:
    """`OUT/parts/part-IIIII-of-NNNNN`: where part `index` of `count` writes."""
    return os.path.join(os.fspath(out_dir), PARTS_DIR, f"part-{index:05d}-of-{count:05d}")


def _write_part(target: str, part: tuple[int, int], converted: Mapping, *, source: str,
                settings: vocab_lib.TokenizerSettings, min_word_count: int, images_per_shard: int,
                source_info: dict) -> dict:
    info = {
        "format_version": manifest_lib.FORMAT_VERSION,
        "part": list(part),
        "source": source,
        "splits": {name: split.to_dict() for name, split in converted["splits"].items()},
        "tokenizer": settings.to_dict(),
        "min_word_count": min_word_count,
        "images_per_shard": images_per_shard,
        "max_caption_words": converted["max_caption_words"],
        "max_captions_per_image": converted["max_captions_per_image"],
        "skipped": converted["skipped"].to_dict(),
        "reencoded": converted["reencoded"].to_dict(),
        "source_info": source_info,
        "train_word_counts": dict(sorted(converted["train_counts"].items())),
    }
    io_utils.write_json_atomic(os.path.join(target, PART_FILE), info)
    return info


def merge_parts(out_dir: str | os.PathLike, *, keep_parts: bool = False, verbose: bool = True) -> dict:
    """Combines `OUT/parts/*` (written with `part=`) into one data dir.

    Every part's shards are hard-linked (copied across file systems) into
    `OUT` under global names, part after part; the vocabulary is built from the
    train word counts of all parts; `manifest.json` is written last. The parts
    are deleted afterwards unless `keep_parts` (until then a failed merge can
    simply be run again).

    Returns:
      The manifest dict.

    Raises:
      ConversionError: no parts, a part missing or unfinished, parts that
        disagree on settings, or no train image in any part.
    """
    out_dir = os.fspath(out_dir)
    parts_root = os.path.join(out_dir, PARTS_DIR)
    dirs = sorted(glob.glob(os.path.join(glob.escape(parts_root), "part-?????-of-?????")))
    if not dirs:
        raise ConversionError(f"{parts_root} has no parts; convert with --num-shards N --shard-index I "
                              "(once per I) and --out {out_dir} first")
    counts = {int(os.path.basename(d)[-5:]) for d in dirs}
    if len(counts) != 1:
        raise ConversionError(f"{parts_root} mixes parts of {sorted(counts)} shards; delete the stale "
                              "ones and merge again")
    count = counts.pop()
    parts = []
    for index in range(count):
        path = os.path.join(part_dir(out_dir, index, count), PART_FILE)
        if not os.path.exists(path):
            raise ConversionError(f"part {index} of {count} is missing or unfinished ({path} does not exist); "
                                  f"run the converter again with --num-shards {count} --shard-index {index}")
        with open(path) as f:
            parts.append(json.load(f))
    first = parts[0]
    for key in ("format_version", "source", "tokenizer", "min_word_count", "images_per_shard"):
        differing = [p["part"][0] for p in parts if p[key] != first[key]]
        if differing:
            raise ConversionError(f"parts {differing} were converted with another {key} than part 0 "
                                  f"({first[key]!r}); convert every part with the same arguments")

    split_names = list(dict.fromkeys(s for p in parts for s in p["splits"]))
    _remove_old_output(out_dir, split_names)
    skipped, reencoded = _Counted(), _Counted()
    train_counts: collections.Counter = collections.Counter()
    for p in parts:
        skipped.merge(p["skipped"])
        reencoded.merge(p["reencoded"])
        train_counts.update(p["train_word_counts"])
    splits_info = {}
    for split in split_names:
        in_parts = {p["part"][0]: manifest_lib.SplitInfo.from_dict(p["splits"][split])
                    for p in parts if split in p["splits"]}
        sources = [os.path.join(part_dir(out_dir, index, count), f)
                   for index, info in in_parts.items() for f in info.files]
        files = []
        for shard, src in enumerate(sources):
            name = records.shard_name(split, shard, len(sources))
            _link_or_copy(src, os.path.join(out_dir, name))
            files.append(name)
        splits_info[split] = manifest_lib.SplitInfo(
            num_images=sum(info.num_images for info in in_parts.values()),
            num_captions=sum(info.num_captions for info in in_parts.values()), files=tuple(files))
    if not splits_info["train"].num_images:
        raise ConversionError(f"no part of {parts_root} has a usable train image "
                              f"({skipped.summary_line()}); check the image and caption paths")
    converted = {
        "splits": splits_info, "train_counts": train_counts, "skipped": skipped, "reencoded": reencoded,
        "max_caption_words": max(p["max_caption_words"] for p in parts),
        "max_captions_per_image": max(p["max_captions_per_image"] for p in parts),
    }
    manifest = _finish(out_dir, converted, source=first["source"],
                       settings=vocab_lib.TokenizerSettings.from_dict(first["tokenizer"]),
                       min_word_count=first["min_word_count"], images_per_shard=first["images_per_shard"],
                       source_info=first["source_info"], verbose=verbose, merged_parts=count)
    if not keep_parts:
        shutil.rmtree(parts_root)
    return manifest


def _link_or_copy(src: str, dst: str) -> None:
    tmp = dst + ".tmp"
    if os.path.lexists(tmp):
        os.remove(tmp)
    try:
        os.link(src, tmp)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


# ---------------------------------------------------------------------------- helpers for sources


def image_path(root: str | os.PathLike, name: str) -> str | None:
    """`root/name`, or None when `name` is absolute or climbs out of `root`.

    Annotation files name images; a name like `../../etc/passwd` or
    `/etc/passwd` must not make the converter read (and store) files outside
    the image folder. Sources count such names as "unsafe_path". Checked on
    the name alone (symlinks inside the root are followed as usual).
    """
    name = name.replace("\\", "/")
    norm = os.path.normpath(name)
    if (not name.strip() or os.path.isabs(name) or norm in (".", "..") or norm.startswith("../")
            or (len(name) > 1 and name[1] == ":")):  # "C:..." (a Windows drive)
        return None
    return os.path.join(os.fspath(root), norm)


def hash_split(key: str, val_fraction: float, test_fraction: float) -> str:
    """"train", "val" or "test" from a stable hash of `key`.

    Deterministic and independent of the input order and size: adding images
    later never moves an existing one to another split.
    """
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ConversionError(f"val fraction {val_fraction} and test fraction {test_fraction} must be >= 0 "
                              "and leave some images for train")
    digest = hashlib.sha1(b"split:" + key.encode("utf-8", "surrogateescape")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64  # uniform in [0, 1)
    if u < val_fraction:
        return "val"
    return "test" if u < val_fraction + test_fraction else "train"


def read_text(path: str | os.PathLike) -> str:
    """A text file as UTF-8; invalid bytes become lone surrogates, which the writer
    drops per caption as "bad_encoding" instead of failing the whole file."""
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark
        data = data[3:]
    return data.decode("utf-8", "surrogateescape")


def _valid_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def format_summary(manifest: Mapping, out_dir: str | os.PathLike) -> str:
    """The human-readable summary of a written manifest."""
    lines = [f"Wrote {manifest['source']} to {os.fspath(out_dir)}"]
    for split, info in manifest["splits"].items():
        lines.append(f"  {split:5s}: {info['num_images']:7d} images {info['num_captions']:8d} "
                     f"captions {info['num_shards']:4d} shards")
    lines.append(f"  vocabulary: {manifest['vocab_size']} ids (special tokens included, words seen "
                 f">= {manifest['min_word_count']} times in train); longest train caption "
                 f"{manifest['max_caption_words']} words")
    for title, key, reasons in (("Skipped", "skipped", SKIP_REASONS),
                                ("Re-encoded", "reencoded", REENCODE_REASONS)):
        counted = manifest.get(key) or {}
        if not counted:
            lines.append(f"{title}: nothing")
            continue
        lines.append(f"{title}:")
        for reason, info in counted.items():
            shown = ", ".join(info["examples"])
            more = ", ..." if info["count"] > len(info["examples"]) else ""
            why = reasons.get(reason, "")
            lines.append(f"  {reason}: {info['count']}" + (f" ({why})" if why else "")
                         + f": {shown}{more}")
    return "\n".join(lines)


class _Counted:
    """Counts per reason, with the first few names of each."""

    def __init__(self):
        self.counts: collections.Counter = collections.Counter()
        self.examples: dict[str, list[str]] = collections.defaultdict(list)

    def add(self, reason: str, name: str) -> None:
        self.counts[reason] += 1
        if len(self.examples[reason]) < NUM_EXAMPLES:
            self.examples[reason].append(name)

    def merge(self, counted: Mapping[str, Mapping]) -> None:
        """Adds a `to_dict()` of another count (examples kept up to NUM_EXAMPLES)."""
        for reason, info in counted.items():
            self.counts[reason] += info["count"]
            room = NUM_EXAMPLES - len(self.examples[reason])
            self.examples[reason].extend(info["examples"][:max(0, room)])

    def to_dict(self) -> dict:
        return {r: {"count": self.counts[r], "examples": list(self.examples[r])}
                for r in sorted(self.counts)}

    def summary_line(self) -> str:
        return ", ".join(f"{r}: {n}" for r, n in sorted(self.counts.items())) or "nothing skipped"


def _remove_old_output(out_dir: str, splits: Iterable[str]) -> None:
    """Deletes the manifest (or a part's part.json) first, then the vocabulary and
    old shards (and leftover temp files) of `splits`."""
    manifest_path = os.path.join(out_dir, manifest_lib.MANIFEST)
    part_path = os.path.join(out_dir, PART_FILE)
    vocab_path = vocab_lib.vocab_path(out_dir)
    for path in (manifest_path, manifest_path + ".tmp", part_path, part_path + ".tmp", vocab_path,
                 vocab_path + ".tmp"):
        if os.path.lexists(path):
            os.remove(path)
    for split in splits:
        pattern = records.shard_pattern(split)
        for path in glob.glob(os.path.join(glob.escape(out_dir), pattern)) + glob.glob(
                os.path.join(glob.escape(out_dir), pattern + ".tmp")):
            os.remove(path)


def _check_image(item: Item, max_pixels: int) -> tuple[str | None, int, str | None]:
    """(skip reason or None, byte size, re-encode reason or None): reads one image,
    checks the header's size, then decodes it fully."""
    try:
        with open(item.path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return "missing", 0, None
    except OSError:
        return "unreadable", 0, None
    if not data:
        return "empty_file", 0, None
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            width, height = image.size
            if width * height > max_pixels:
                return "too_large", 0, None
            image.load()
            fix = _reencode_reason(image)
    except Image.DecompressionBombError:
        return "too_large", 0, None
    except Exception as e:  # PIL raises many types for bad data; all mean "not an image"
        return ("truncated" if "truncated" in str(e).lower() else "corrupt"), 0, None
    return None, len(data), fix


def _reencode_reason(image: Image.Image) -> str | None:
    """Why TensorFlow would decode this (loaded) image wrongly, or None when it is fine."""
    if image.getexif().get(_EXIF_ORIENTATION, 1) not in (0, 1):
        return "exif_orientation"
    if image.format not in KEPT_FORMATS:
        return "format"
    if image.mode in ("CMYK", "YCbCr", "LAB"):
        return "cmyk"
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        return "alpha"
    if image.mode in ("I", "F") and image.format != "PNG":
        return "high_bit_depth"
    return None  # RGB, L, P, 1, and 16-bit PNG (TensorFlow scales it to 8 bits itself)


_EXIF_ORIENTATION = 0x0112


def _reencoded(data: bytes) -> bytes:
    """The 8-bit RGB re-encoding of an image that needs one (see REENCODE_REASONS)."""
    with Image.open(io.BytesIO(data)) as image:
        image.seek(0)  # the first frame of animations and multi-page files
        lossy = image.format in JPEG_FORMATS
        image = ImageOps.exif_transpose(image)
        rgb = _to_rgb(image)
    buf = io.BytesIO()
    if lossy:
        rgb.save(buf, "JPEG", quality=95)
    else:
        rgb.save(buf, "PNG")
    return buf.getvalue()


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image -> mode RGB: deep pixels scaled to 8 bits, transparency onto white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 255.0 if image.mode == "F" and pixels.max(initial=0) <= 255 else 65535.0
        image = Image.fromarray(np.clip(np.round(pixels / top * 255), 0, 255).astype(np.uint8), "L")
    if image.mode == "P" or "transparency" in image.info or image.mode in ("LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        white = Image.new("RGB", image.size, (255, 255, 255))
        white.paste(image, mask=image.getchannel("A"))
        return white
    return image.convert("RGB")


def _stored_bytes(item: Item, checked: Mapping[str, tuple[int, str | None]]) -> bytes:
    """What the record stores: the original bytes, or their re-encoding when needed."""
    size, fix = checked[item.image_id]
    try:
        with open(item.path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConversionError(f"{item.path} could be read when checked but not now ({e}); "
                              "was it changed during the conversion? Run again") from e
    if len(data) != size:
        raise ConversionError(f"{item.path} changed while it was being converted; run again")
    return _reencoded(data) if fix else data


def _serialized(items: Sequence[Item], encoded: Iterator[bytes], bar) -> Iterator[bytes]:
    for item in items:
        data = next(encoded)
        bar.update()
        yield records.make_example(item.image_id, data, item.captions).SerializeToString()


def _write_shard(path: str, serialized: Iterable[bytes]) -> None:
    """Writes `path` under a temporary name, renamed only when complete."""
    tmp = path + ".tmp"
    try:
        with tf.io.TFRecordWriter(tmp) as writer:
            for record in serialized:
                writer.write(record)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _ordered_map(pool: concurrent.futures.Executor, fn: Callable[[_T], _R], items: Iterable[_T],
                 window: int) -> Iterator[_R]:
    """`fn` over `items` in `pool`, results in input order, at most `window` in flight."""
    pending: collections.deque = collections.deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


def _bar(enabled: bool, total: int, desc: str) -> tqdm.tqdm:
    return tqdm.tqdm(total=total, desc=desc, unit="img", disable=not enabled, dynamic_ncols=True)
