"""The output layout of a conversion, and the order that keeps it consistent.

    OUT/{split}-NNNNN-of-MMMMM.tfrecord   shards (`records.shard_name`)
    OUT/vocab.txt                         the vocabulary
    OUT/manifest.json                     written last: a data dir without one is incomplete
    OUT/parts/part-IIIII-of-NNNNN/        one part of a many-machine conversion (+ part.json)
    OUT/inspect.html                      `tfrecords_tools inspect`'s page
    OUT/raw/                              the shapes generator's Flickr8k-layout files

A conversion never deletes what it did not write. `check_out_dir` refuses an
`--out` that holds anything else, unless it is a previous conversion (has a
manifest or parts; its other files are left alone). The new output is built in
a hidden staging dir (`staging`) inside OUT (or OUT/parts), on the same file
system, and moved into place only when complete (`swap_in`, `swap_in_part`):
a failed conversion leaves the previous data dir as it was. Every file is
written under a `.tmp` name and renamed when complete. OUT may be a URL
(gs://, s3://, hdfs://): every file operation goes through caption_app/io_utils.py,
where a folder moves file by file (the manifest and part.json still last).
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import json
import os
import re
from typing import Iterable, Iterator, Mapping

import tensorflow as tf

from caption_app import io_utils
from caption_app.data import manifest as manifest_lib
from caption_app.data import records
from caption_app.data import vocabulary as vocab_lib
from tfrecords_tools import report
from tfrecords_tools.source_api import ConversionError

PARTS_DIR = "parts"
PART_FILE = "part.json"
HTML_FILE = "inspect.html"  # inspection.HTML_FILE (that module is not imported here)
SHAPES_RAW_DIR = "raw"
STAGING_PREFIX = ".converting-"
_OLD_PREFIX = ".replaced-"
_SHARD_NAME = re.compile(r"^\w+-\d{5}-of-\d{5}\.tfrecord$")
_PART_NAME = re.compile(r"^part-\d{5}-of-\d{5}$")
_TFDS_STAGING = ".tfds_staging-"  # tfds_source stages TFDS images here
NUM_NAMED = 5  # entries named in a refusal


def part_dir(out_dir: str | os.PathLike, index: int, count: int) -> str:
    """`OUT/parts/part-IIIII-of-NNNNN`: where part `index` of `count` writes."""
    return os.path.join(os.fspath(out_dir), PARTS_DIR, f"part-{index:05d}-of-{count:05d}")


def is_shard_name(name: str, split: str | None = None) -> bool:
    """Whether `name` is a plain shard file name (of `split`, if given)."""
    if split is not None:
        return fnmatch.fnmatchcase(name, records.shard_pattern(split)) and bool(_SHARD_NAME.match(name))
    return bool(_SHARD_NAME.match(name))


def _is_own_file(name: str) -> bool:
    """A file name a conversion writes into a data dir or part dir (or its temp name)."""
    name = name.removesuffix(".tmp")
    return (name in (manifest_lib.MANIFEST, vocab_lib.VOCAB_FILE, PART_FILE, HTML_FILE)
            or is_shard_name(name))


def _is_own_entry(folder: str, name: str) -> bool:
    """Whether `folder/name` is something a conversion writes into OUT."""
    path = os.path.join(folder, name)
    if name.startswith((STAGING_PREFIX, _OLD_PREFIX, _TFDS_STAGING)):
        return True
    if io_utils.islink(path):
        return False
    if io_utils.isdir(path):
        if name == PARTS_DIR:
            return all(_PART_NAME.match(n) or n.startswith((STAGING_PREFIX, _OLD_PREFIX))
                       for n in io_utils.listdir(path))
        return name == SHAPES_RAW_DIR and _is_shapes_raw(path)
    return _is_own_file(name)


def _is_shapes_raw(path: str) -> bool:
    """The shapes generator's raw dir: its text files, ground truth and images/shapes_*.jpg only."""
    text = {"Flickr8k.token.txt", "Flickr_8k.trainImages.txt", "Flickr_8k.devImages.txt",
            "Flickr_8k.testImages.txt", "objects.json"}
    names = set(io_utils.listdir(path))
    if not names <= text | {"images"}:
        return False
    images = os.path.join(path, "images")
    return not io_utils.isdir(images) or all(n.startswith("shapes_") for n in io_utils.listdir(images))


def is_previous_conversion(out_dir: str) -> bool:
    """Whether `out_dir` holds a converter's manifest.json or parts/."""
    path = os.path.join(out_dir, manifest_lib.MANIFEST)
    try:
        if not io_utils.isfile(path):  # a FIFO named manifest.json must not block us
            raise OSError
        with io_utils.open(path, "rb") as f:
            manifest = json.loads(f.read(1 << 24))
        if isinstance(manifest, dict) and "splits" in manifest and "format_version" in manifest:
            return True
    except (OSError, ValueError, RecursionError):
        pass
    parts = os.path.join(out_dir, PARTS_DIR)
    return io_utils.isdir(parts) and not io_utils.islink(parts) and _is_own_entry(out_dir, PARTS_DIR)


def check_out_dir(out_dir: str | os.PathLike) -> None:
    """Raises ConversionError unless `out_dir` is absent, empty, a previous conversion
    or holds only what a conversion writes (a run that was stopped)."""
    out_dir = os.fspath(out_dir)
    if not io_utils.lexists(out_dir):
        return
    if not io_utils.isdir(out_dir):
        raise ConversionError(f"--out {out_dir} is a file, not a folder; pass a new folder or a data dir "
                              "to convert again")
    names = sorted(io_utils.listdir(out_dir))
    if not names or is_previous_conversion(out_dir):
        return
    foreign = [n for n in names if not _is_own_entry(out_dir, n)]
    if foreign:
        shown = ", ".join(foreign[:NUM_NAMED]) + (f" and {len(foreign) - NUM_NAMED} more"
                                                   if len(foreign) > NUM_NAMED else "")
        raise ConversionError(f"--out {out_dir} is not empty and not a data dir of an earlier conversion "
                              f"(it holds {shown}); the converter writes only into a new or empty folder "
                              "or a data dir it wrote, so pass another --out")


def check_part_dir(target: str) -> None:
    """Raises ConversionError when an existing part dir holds files a conversion did not write."""
    if not io_utils.lexists(target):
        return
    if io_utils.islink(target) or not io_utils.isdir(target):
        raise ConversionError(f"{target} is not a folder the converter wrote; move it away and run again")
    foreign = sorted(n for n in io_utils.listdir(target) if not _is_own_file(n))
    if foreign:
        raise ConversionError(f"{target} holds files the converter did not write ({', '.join(foreign[:NUM_NAMED])}); "
                              "move them away and run again")


@contextlib.contextmanager
def staging(parent: str, label: str) -> Iterator[str]:
    """A hidden, empty dir inside `parent` to build the new output in (same file
    system, so `swap_in` renames); deleted with whatever is left in it, on failure too.
    Stale staging dirs of the same `label` (left by a killed run) are deleted first."""
    io_utils.makedirs(parent)
    prefix = f"{STAGING_PREFIX}{label}-"
    for stale in io_utils.glob(os.path.join(glob.escape(parent), glob.escape(prefix) + "*")):
        if io_utils.isdir(stale) and not io_utils.islink(stale):
            io_utils.rmtree(stale)
    stage = io_utils.mkdtemp(prefix=prefix, dir=parent)
    try:
        yield stage
    finally:
        io_utils.rmtree(stage)


def swap_in(stage: str, out_dir: str, splits: Iterable[str]) -> None:
    """Moves a complete new data dir from `stage` into `out_dir`.

    Deletes the old manifest first (a data dir without one reads as incomplete),
    then the old vocabulary and the old shards of `splits`, moves the new shards
    and vocabulary in, and the manifest last. Nothing else in `out_dir` is touched.
    """
    manifest_path = os.path.join(out_dir, manifest_lib.MANIFEST)
    vocab_path = vocab_lib.vocab_path(out_dir)
    for path in (manifest_path, manifest_path + ".tmp", vocab_path, vocab_path + ".tmp"):
        if io_utils.lexists(path):
            io_utils.remove(path)
    for split in splits:
        pattern = records.shard_pattern(split)
        for path in io_utils.glob(os.path.join(glob.escape(out_dir), pattern)) + io_utils.glob(
                os.path.join(glob.escape(out_dir), pattern + ".tmp")):
            if is_shard_name(os.path.basename(path).removesuffix(".tmp"), split):
                io_utils.remove(path)
    new = sorted(io_utils.listdir(stage), key=lambda n: n == manifest_lib.MANIFEST)  # the manifest last
    for name in new:
        io_utils.replace(os.path.join(stage, name), os.path.join(out_dir, name))


def swap_in_part(stage: str, target: str) -> None:
    """Replaces the part dir `target` (our files only, `check_part_dir`) by `stage`."""
    old = None
    if io_utils.lexists(target):
        old = io_utils.mkdtemp(prefix=_OLD_PREFIX, dir=os.path.dirname(target))
        io_utils.replace(target, os.path.join(old, "part"))
    io_utils.replace(stage, target, last=(PART_FILE,))
    if old:
        io_utils.rmtree(old)


def remove_own(folder: str) -> None:
    """Deletes the files a conversion writes in `folder`, then `folder` if that emptied it."""
    for name in io_utils.listdir(folder):
        path = os.path.join(folder, name)
        if _is_own_file(name) and not io_utils.isdir(path):
            io_utils.remove(path)
    with contextlib.suppress(OSError):
        io_utils.rmdir(folder)


def write_shard(path: str, serialized: Iterable[bytes]) -> None:
    """Writes `path` under a temporary name, renamed only when complete."""
    tmp = path + ".tmp"
    try:
        with tf.io.TFRecordWriter(tmp) as writer:
            for record in serialized:
                writer.write(record)
        io_utils.replace(tmp, path)
    except BaseException:
        if io_utils.exists(tmp):
            io_utils.remove(tmp)
        raise


def link_or_copy(src: str, dst: str) -> None:
    """Hard-links `src` to `dst` (copies across file systems), under a temporary name first."""
    tmp = dst + ".tmp"
    if io_utils.lexists(tmp):
        io_utils.remove(tmp)
    try:
        if io_utils.is_remote(src) or io_utils.is_remote(dst):
            raise OSError("no hard links on a URL")
        os.link(src, tmp)
    except OSError:  # another file system, or links not allowed
        io_utils.copyfile(src, tmp)
    io_utils.replace(tmp, dst)


def write_vocab_and_manifest(out_dir: str, converted: Mapping, *, source: str,
                             settings: vocab_lib.TokenizerSettings, min_word_count: int,
                             images_per_shard: int, source_info: dict,
                             merged_parts: int | None = None, vocab_from: str | None = None) -> dict:
    """Writes `vocab.txt` and, last, `manifest.json` for shards already in `out_dir`.

    The vocabulary is built from the train word counts (`min_word_count`), or
    is the file `vocab_from` (`--vocab`, e.g. an imported run's vocab.txt): its
    ids are kept and words not in it map to `<unk>` when the data is read.
    """
    if vocab_from is not None:
        vocab = load_given_vocab(vocab_from)
    else:
        vocab = vocab_lib.Vocabulary.build(converted["train_counts"], min_word_count)
    vocab_file = os.path.basename(vocab_lib.vocab_path(out_dir))
    vocab.save(os.path.join(out_dir, vocab_file))
    manifest = manifest_lib.write(
        out_dir, source=source, splits=converted["splits"], tokenizer=settings, vocab_size=vocab.size,
        vocab_file=vocab_file, min_word_count=min_word_count,
        max_caption_words=converted["max_caption_words"],
        max_captions_per_image=converted["max_captions_per_image"], images_per_shard=images_per_shard,
        skipped=converted["skipped"].to_dict(), reencoded=converted["reencoded"].to_dict(),
        source_info=source_info, merged_parts=merged_parts, caption_cap=converted["caption_cap"].to_dict(),
        vocab_from=vocab_from,
        train_longest_caption_words=converted.get("train_longest_caption_words"))
    return manifest


def load_given_vocab(path: str) -> vocab_lib.Vocabulary:
    """The vocabulary file given with `--vocab`; ConversionError naming it when it does not load."""
    try:
        return vocab_lib.Vocabulary.load(path)
    except (OSError, ValueError) as err:
        raise ConversionError(f"--vocab {path}: {err} (give a vocab.txt written by this project: a data "
                              "dir's or a run dir's)") from None
