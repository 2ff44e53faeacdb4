"""Many machines: each converts one part, then `merge_parts` makes one data dir.

`write_dataset(..., part=(index, count))` converts only the images whose id
hashes to `index` (`source_api.in_part`) into `layout.part_dir(OUT, index, count)`
and writes its `part.json` here (`write_part`: counts, skips and the train
split's word counts); `merge_parts` reads every part.json, links every part's
shards into OUT under global names and writes the one vocabulary (built from
all train captions) and manifest.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import shutil
from typing import Mapping

from caption_app import io_utils
from caption_app.data import manifest as manifest_lib
from caption_app.data import records
from caption_app.data import vocabulary as vocab_lib
from tfrecords_tools import layout, report
from tfrecords_tools.source_api import ConversionError


def write_part(target: str, part: tuple[int, int], converted: Mapping, *, source: str,
               settings: vocab_lib.TokenizerSettings, min_word_count: int, images_per_shard: int,
               source_info: dict) -> dict:
    """Writes `target/part.json`: what `merge_parts` needs of one converted part.

    Args:
      target: the part's dir (`layout.part_dir`), its shards already written.
      part: (index, count).
      converted: the writer's counts: "splits" (name -> manifest.SplitInfo),
        "train_counts", "max_caption_words", "max_captions_per_image",
        "skipped" and "reencoded" (`report.Counted`).
      source, settings, min_word_count, images_per_shard, source_info: as given
        to `write_dataset` (every part must agree on them).

    Returns:
      The dict written.
    """
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
    io_utils.write_json_atomic(os.path.join(target, layout.PART_FILE), info)
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
    parts_root = os.path.join(out_dir, layout.PARTS_DIR)
    dirs = sorted(glob.glob(os.path.join(glob.escape(parts_root), "part-?????-of-?????")))
    if not dirs:
        raise ConversionError(f"{parts_root} has no parts; convert with --num-parts N --part-index I "
                              f"(once per I) and --out {out_dir} first")
    counts = {int(os.path.basename(d)[-5:]) for d in dirs}
    if len(counts) != 1:
        raise ConversionError(f"{parts_root} mixes conversions into {sorted(counts)} parts; delete the "
                              "stale parts and merge again")
    count = counts.pop()
    parts = []
    for index in range(count):
        path = os.path.join(layout.part_dir(out_dir, index, count), layout.PART_FILE)
        if not os.path.exists(path):
            raise ConversionError(f"part {index} of {count} is missing or unfinished ({path} does not exist); "
                                  f"run the converter again with --num-parts {count} --part-index {index}")
        with open(path) as f:
            parts.append(json.load(f))
    first = parts[0]
    for key in ("format_version", "source", "tokenizer", "min_word_count", "images_per_shard"):
        differing = [p["part"][0] for p in parts if p[key] != first[key]]
        if differing:
            raise ConversionError(f"parts {differing} were converted with another {key} than part 0 "
                                  f"({first[key]!r}); convert every part with the same arguments")

    split_names = list(dict.fromkeys(s for p in parts for s in p["splits"]))
    layout.remove_old_output(out_dir, split_names)
    skipped, reencoded = report.Counted(), report.Counted()
    train_counts: collections.Counter = collections.Counter()
    for p in parts:
        skipped.merge(p["skipped"])
        reencoded.merge(p["reencoded"])
        train_counts.update(p["train_word_counts"])
    splits_info = {}
    for split in split_names:
        in_parts = {p["part"][0]: manifest_lib.SplitInfo.from_dict(p["splits"][split])
                    for p in parts if split in p["splits"]}
        sources = [os.path.join(layout.part_dir(out_dir, index, count), f)
                   for index, info in in_parts.items() for f in info.files]
        files = []
        for shard, src in enumerate(sources):
            name = records.shard_name(split, shard, len(sources))
            layout.link_or_copy(src, os.path.join(out_dir, name))
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
    manifest = layout.write_vocab_and_manifest(
        out_dir, converted, source=first["source"],
        settings=vocab_lib.TokenizerSettings.from_dict(first["tokenizer"]),
        min_word_count=first["min_word_count"], images_per_shard=first["images_per_shard"],
        source_info=first["source_info"], verbose=verbose, merged_parts=count)
    if not keep_parts:
        shutil.rmtree(parts_root)
    return manifest
