"""The one writer every source uses: checks, shards, vocabulary, manifest.

A source module (`flickr8k`, `shapes`, ...) only turns its raw layout into
`Item`s per split; `write_dataset` does the rest:

1. deletes `OUT/manifest.json` (first), `OUT/vocab.txt` and the old shards of
   the splits it writes, so a killed run never leaves a manifest that points at
   half-new shards;
2. reads and fully decodes every image in a thread pool (PIL), skipping and
   counting bad inputs (see `SKIP_REASONS`) instead of crashing;
3. drops empty captions, builds the vocabulary from the train split only and
   saves `OUT/vocab.txt`;
4. writes `OUT/{split}-NNNNN-of-MMMMM.tfrecord` shards, one record per image
   with its original bytes unchanged, each shard under a `.tmp` name renamed
   when complete;
5. writes `OUT/manifest.json` last, atomically.

Same input -> byte-identical shards and vocabulary: records keep the input
order, whatever the number of workers.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import datetime
import glob
import io
import json
import math
import os
from typing import Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

import tensorflow as tf
import tqdm
from PIL import Image

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
    "unsupported_format": "image decodes with PIL but is not JPEG/PNG/GIF/BMP (TensorFlow cannot decode it)",
    "too_large": "image exceeds PIL's decompression-bomb limit",
    "duplicate": "image id already written (same split or an earlier one)",
    "empty_caption": "caption empty, whitespace or punctuation only (caption dropped)",
    "no_captions": "image has no non-empty caption (image dropped)",
    "bad_line": "line of a caption file that could not be parsed",
}

# Formats `tf.io.decode_image` reads. MPO is a JPEG with extra frames (camera output).
DECODABLE_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "BMP"})

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
      progress: show tqdm progress bars (stderr).
      verbose: print the summary (stdout) at the end.

    Returns:
      The manifest dict, as written to `out_dir/manifest.json`.

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
    split_names = list(items_by_split) + [s for s in records.SPLITS if s not in items_by_split]
    for split in split_names:
        if not split or not all(c.isalnum() or c == "_" for c in split):
            raise ConversionError(f"split name {split!r} must be letters, digits or '_'")

    # Threads: PIL decodes and file reads release the GIL; processes would re-import TF.
    workers = num_workers or min(32, (os.cpu_count() or 1) + 4)
    window = 4 * workers  # results read ahead of the writer, bounding memory
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    _remove_old_output(out_dir, split_names)

    skipped = _Skipped()
    for reason, names in (extra_skipped or {}).items():
        for name in names:
            skipped.add(reason, name)

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
    sizes: dict[str, int] = {}  # image_id -> byte size of the checked file
    with concurrent.futures.ThreadPoolExecutor(workers) as pool, _bar(
            progress, len(all_candidates), "checking images") as bar:
        for item, (reason, size) in zip(all_candidates,
                                        _ordered_map(pool, _check_image, all_candidates, window)):
            bar.update()
            if reason:
                skipped.add(reason, item.image_id)
            else:
                sizes[item.image_id] = size

    # Captions of the images that survived: strip, drop those without a word.
    # One tokenizer pass gives the empty captions, the lengths and the train
    # split's word counts (the vocabulary).
    kept: dict[str, list[Item]] = {}
    lengths: dict[str, list[int]] = {}  # split -> words of each kept caption
    train_counts: collections.Counter = collections.Counter()
    for split in split_names:
        images = [item for item in candidates[split] if item.image_id in sizes]
        stripped = [[c.strip() for c in item.captions] for item in images]
        words = vocab_lib.split_words((c for cs in stripped for c in cs), settings)
        kept[split], lengths[split] = [], []
        for item, captions in zip(images, stripped):
            good = []
            for i, caption in enumerate(captions):
                caption_words = next(words)
                if not caption_words:
                    skipped.add("empty_caption", f"{item.image_id}#{i}")
                else:
                    good.append(caption)
                    lengths[split].append(len(caption_words))
                    if split == "train":
                        train_counts.update(caption_words)
            if good:
                kept[split].append(dataclasses.replace(item, captions=tuple(good)))
            else:
                skipped.add("no_captions", item.image_id)

    if not kept["train"]:
        raise ConversionError(
            "no usable train image remains after skipping bad inputs "
            f"({skipped.summary_line()}); check the image and caption paths")

    vocab = vocab_lib.Vocabulary.build(train_counts, min_word_count)

    # Pass 2: shards, the original bytes re-read in order.
    splits_info = {}
    total = sum(len(items) for items in kept.values())
    with concurrent.futures.ThreadPoolExecutor(workers) as pool, _bar(
            progress, total, "writing shards") as bar:
        for split in split_names:
            items = kept[split]
            num_shards = math.ceil(len(items) / images_per_shard)
            encoded = _ordered_map(pool, _read_bytes, items, window)
            files = []
            for shard in range(num_shards):
                lo, hi = len(items) * shard // num_shards, len(items) * (shard + 1) // num_shards
                name = records.shard_name(split, shard, num_shards)
                _write_shard(os.path.join(out_dir, name),
                             _serialized(items[lo:hi], encoded, sizes, bar))
                files.append(name)
            splits_info[split] = {
                "num_images": len(items),
                "num_captions": sum(len(item.captions) for item in items),
                "num_shards": num_shards,
                "files": files,
            }

    vocab_file = os.path.basename(vocab_lib.vocab_path(out_dir))
    vocab.save(os.path.join(out_dir, vocab_file))

    manifest = {
        "format_version": manifest_lib.FORMAT_VERSION,
        "source": source,
        "splits": splits_info,
        "tokenizer": settings.to_dict(),
        "vocab_size": vocab.size,
        "vocab_file": vocab_file,
        "min_word_count": min_word_count,
        "max_caption_words": max(lengths["train"]),
        "max_captions_per_image": max(
            (len(item.captions) for items in kept.values() for item in items), default=0),
        "images_per_shard": images_per_shard,
        "skipped": skipped.to_dict(),
        "source_info": dict(source_info or {}),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    path = os.path.join(out_dir, manifest_lib.MANIFEST)
    with open(path + ".tmp", "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    os.replace(path + ".tmp", path)
    if verbose:
        print(format_summary(manifest, out_dir))
    return manifest


def format_summary(manifest: Mapping, out_dir: str | os.PathLike) -> str:
    """The human-readable summary of a written manifest."""
    lines = [f"Wrote {manifest['source']} to {os.fspath(out_dir)}"]
    for split, info in manifest["splits"].items():
        lines.append(f"  {split:5s}: {info['num_images']:7d} images {info['num_captions']:8d} "
                     f"captions {info['num_shards']:4d} shards")
    lines.append(f"  vocabulary: {manifest['vocab_size']} ids (special tokens included, words seen "
                 f">= {manifest['min_word_count']} times in train); longest train caption "
                 f"{manifest['max_caption_words']} words")
    if manifest["skipped"]:
        lines.append("Skipped:")
        for reason, info in manifest["skipped"].items():
            shown = ", ".join(info["examples"])
            more = ", ..." if info["count"] > len(info["examples"]) else ""
            why = SKIP_REASONS.get(reason, "")
            lines.append(f"  {reason}: {info['count']}" + (f" ({why})" if why else "")
                         + f": {shown}{more}")
    else:
        lines.append("Skipped: nothing")
    return "\n".join(lines)


class _Skipped:
    """Counts per reason, with the first few names of each."""

    def __init__(self):
        self.counts: collections.Counter = collections.Counter()
        self.examples: dict[str, list[str]] = collections.defaultdict(list)

    def add(self, reason: str, name: str) -> None:
        self.counts[reason] += 1
        if len(self.examples[reason]) < NUM_EXAMPLES:
            self.examples[reason].append(name)

    def to_dict(self) -> dict:
        return {r: {"count": self.counts[r], "examples": list(self.examples[r])}
                for r in sorted(self.counts)}

    def summary_line(self) -> str:
        return ", ".join(f"{r}: {n}" for r, n in sorted(self.counts.items())) or "nothing skipped"


def _remove_old_output(out_dir: str, splits: Iterable[str]) -> None:
    """Deletes the manifest first, then the vocabulary and old shards (and leftover
    temp files) of `splits`."""
    manifest_path = os.path.join(out_dir, manifest_lib.MANIFEST)
    vocab_path = vocab_lib.vocab_path(out_dir)
    for path in (manifest_path, manifest_path + ".tmp", vocab_path, vocab_path + ".tmp"):
        if os.path.lexists(path):
            os.remove(path)
    for split in splits:
        pattern = records.shard_pattern(split)
        for path in glob.glob(os.path.join(glob.escape(out_dir), pattern)) + glob.glob(
                os.path.join(glob.escape(out_dir), pattern + ".tmp")):
            os.remove(path)


def _check_image(item: Item) -> tuple[str | None, int]:
    """(skip reason or None, byte size): reads and fully decodes one image."""
    try:
        with open(item.path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return "missing", 0
    except OSError:
        return "unreadable", 0
    if not data:
        return "empty_file", 0
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            image_format = image.format
    except Image.DecompressionBombError:
        return "too_large", 0
    except Exception as e:  # PIL raises many types for bad data; all mean "not an image"
        return ("truncated" if "truncated" in str(e).lower() else "corrupt"), 0
    if image_format not in DECODABLE_FORMATS:
        return "unsupported_format", 0
    return None, len(data)


def _read_bytes(item: Item) -> bytes:
    try:
        with open(item.path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConversionError(f"{item.path} could be read when checked but not now ({e}); "
                              "was it changed during the conversion? Run again") from e


def _serialized(items: Sequence[Item], encoded: Iterator[bytes], sizes: Mapping[str, int],
                bar) -> Iterator[bytes]:
    for item in items:
        data = next(encoded)
        if len(data) != sizes[item.image_id]:
            raise ConversionError(f"{item.path} changed while it was being converted; run again")
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
