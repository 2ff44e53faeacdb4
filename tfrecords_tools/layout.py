"""The output layout of a conversion, and the order that keeps it consistent.

    OUT/{split}-NNNNN-of-MMMMM.tfrecord   shards (`records.shard_name`)
    OUT/vocab.txt                         the vocabulary
    OUT/manifest.json                     written last: a data dir without one is incomplete
    OUT/parts/part-IIIII-of-NNNNN/        one part of a many-machine conversion (+ part.json)

Every file is written under a `.tmp` name and renamed when complete. A new
conversion first deletes the manifest (or part.json), then the vocabulary and
the old shards of the splits it writes, so a killed run never leaves a
manifest that points at half-new shards.
"""

from __future__ import annotations

import glob
import os
import shutil
from typing import Iterable, Mapping

import tensorflow as tf

from caption_app.data import manifest as manifest_lib
from caption_app.data import records
from caption_app.data import vocabulary as vocab_lib
from tfrecords_tools import report

PARTS_DIR = "parts"
PART_FILE = "part.json"


def part_dir(out_dir: str | os.PathLike, index: int, count: int) -> str:
    """`OUT/parts/part-IIIII-of-NNNNN`: where part `index` of `count` writes."""
    return os.path.join(os.fspath(out_dir), PARTS_DIR, f"part-{index:05d}-of-{count:05d}")


def remove_old_output(out_dir: str, splits: Iterable[str]) -> None:
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


def write_shard(path: str, serialized: Iterable[bytes]) -> None:
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


def link_or_copy(src: str, dst: str) -> None:
    """Hard-links `src` to `dst` (copies across file systems), under a temporary name first."""
    tmp = dst + ".tmp"
    if os.path.lexists(tmp):
        os.remove(tmp)
    try:
        os.link(src, tmp)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def write_vocab_and_manifest(out_dir: str, converted: Mapping, *, source: str,
                             settings: vocab_lib.TokenizerSettings, min_word_count: int,
                             images_per_shard: int, source_info: dict, verbose: bool,
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
        print(report.format_summary(manifest, out_dir))
    return manifest
