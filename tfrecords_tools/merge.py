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
import contextlib
import glob
import json
import os
import stat
import sys
from typing import Mapping

from caption_app import io_utils
from caption_app.data import manifest as manifest_lib
from caption_app.data import records
from caption_app.data import vocabulary as vocab_lib
from tfrecords_tools import layout, report
from tfrecords_tools.source_api import ConversionError


def write_part(target: str, part: tuple[int, int], converted: Mapping, *, source: str,
               settings: vocab_lib.TokenizerSettings, min_word_count: int, images_per_shard: int,
               source_info: dict, vocab_from: str | None = None) -> dict:
    """Writes `target/part.json`: what `merge_parts` needs of one converted part.

    Args:
      target: the part's dir (`layout.part_dir`), its shards already written.
      part: (index, count).
      converted: the writer's counts: "splits" (name -> manifest.SplitInfo),
        "train_counts", "max_caption_words", "max_captions_per_image",
        "skipped" and "reencoded" (`report.Counted`).
      source, settings, min_word_count, images_per_shard, source_info, vocab_from:
        as given to `write_dataset` (every part must agree on them).

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
        "caption_cap": converted["caption_cap"].to_dict(),
        "source_info": source_info,
        "train_word_counts": dict(sorted(converted["train_counts"].items())),
        **({"vocab_from": vocab_from} if vocab_from is not None else {}),
        "train_longest_caption_words": {str(k): v for k, v in sorted(converted["train_longest_caption_words"].items())},
    }
    io_utils.write_json_atomic(os.path.join(target, layout.PART_FILE), info)
    return info


def merge_parts(out_dir: str | os.PathLike, *, keep_parts: bool = False, verbose: bool = True) -> dict:
    """Combines `OUT/parts/*` (written with `part=`) into one data dir.

    Every part's shards are hard-linked (copied across file systems) under
    global names, part after part, into a staging dir inside `OUT`; the
    vocabulary is built from the train word counts of all parts and
    `manifest.json` is written last; then the result replaces the old output
    in `OUT` (`layout.swap_in`). The parts are deleted afterwards unless
    `keep_parts` (until then a failed merge can simply be run again).

    A part.json is input too: a shard it lists must be a plain shard file name
    of its split, a regular file (not a symlink) inside its part dir.

    Returns:
      The manifest dict.

    Raises:
      ConversionError: no parts, a part missing, unfinished or malformed,
        parts that disagree on settings, or no train image in any part.
    """
    out_dir = os.fspath(out_dir)
    # Its own checks (the parts it reads, `previous_outputs`), not check_out_dir: files of yours in OUT
    # or OUT/parts stay as they are.
    with layout.out_lock(out_dir, "tfrecords_tools merge", check=False), contextlib.ExitStack() as part_locks:
        parts_root = os.path.join(out_dir, layout.PARTS_DIR)
        if io_utils.islink(parts_root):
            raise ConversionError(f"{parts_root} is a symlink; merge reads only a parts folder the converter wrote")
        dirs = sorted(io_utils.glob(os.path.join(glob.escape(parts_root), "part-[0-9][0-9][0-9][0-9][0-9]-of-"
                                                                       "[0-9][0-9][0-9][0-9][0-9]")))
        if not dirs:
            raise ConversionError(f"{parts_root} has no parts; convert with --num-parts N --part-index I "
                                  f"(once per I) and --out {out_dir} first")
        counts = {int(os.path.basename(d)[-5:]) for d in dirs}
        if len(counts) != 1:
            raise ConversionError(f"{parts_root} mixes conversions into {sorted(counts)} parts; delete the "
                                  "stale parts and merge again")
        count = counts.pop()
        for index in range(count):  # no part may be converting while it is merged
            part_locks.enter_context(layout.out_lock(out_dir, "tfrecords_tools merge", (index, count), check=False))
        parts = [_read_part(out_dir, index, count) for index in range(count)]
        previous = layout.previous_outputs(out_dir)  # before the staging dir exists
        first = parts[0]
        for key in ("format_version", "source", "tokenizer", "min_word_count", "images_per_shard",
                    "caption_limit", "vocab_from"):
            differing = [p["part"][0] for p in parts if p[key] != first[key]]
            if differing:
                raise ConversionError(f"parts {differing} were converted with another {key} than part 0 "
                                      f"({first[key]!r}); convert every part with the same arguments")

        split_names = list(dict.fromkeys(s for p in parts for s in p["splits"]))
        skipped, reencoded = report.Counted(), report.Counted()
        caption_cap = report.CaptionCap(first["caption_limit"])
        train_counts: collections.Counter = collections.Counter()
        for p in parts:
            skipped.merge(p["skipped"])
            reencoded.merge(p["reencoded"])
            if p.get("caption_cap"):
                caption_cap.merge(p["caption_cap"])
            train_counts.update(p["train_word_counts"])
        with layout.staging(out_dir, "data") as stage:
            splits_info = {}
            for split in split_names:
                in_parts = {p["part"][0]: manifest_lib.SplitInfo.from_dict(p["splits"][split])
                            for p in parts if split in p["splits"]}
                sources = [os.path.join(layout.part_dir(out_dir, index, count), f)
                           for index, info in in_parts.items() for f in info.files]
                files = []
                for shard, src in enumerate(sources):
                    name = records.shard_name(split, shard, len(sources))
                    layout.link_or_copy(src, os.path.join(stage, name))
                    files.append(name)
                splits_info[split] = manifest_lib.SplitInfo(
                    num_images=sum(info.num_images for info in in_parts.values()),
                    num_captions=sum(info.num_captions for info in in_parts.values()), files=tuple(files))
            if "train" not in splits_info or not splits_info["train"].num_images:
                raise ConversionError(f"no part of {parts_root} has a usable train image "
                                      f"({skipped.summary_line()}); check the image and caption paths")
            converted = {
                "splits": splits_info, "train_counts": train_counts, "skipped": skipped, "reencoded": reencoded,
                "max_caption_words": max(p["max_caption_words"] for p in parts),
                # Parts written before the histogram existed leave it out (one length bucket).
                "train_longest_caption_words": sum(
                    (collections.Counter({int(k): v for k, v in p["train_longest_caption_words"].items()})
                     for p in parts), collections.Counter())
                if all("train_longest_caption_words" in p for p in parts) else None,
                "max_captions_per_image": max(p["max_captions_per_image"] for p in parts),
                "caption_cap": caption_cap,
            }
            manifest = layout.write_vocab_and_manifest(
                stage, converted, source=first["source"],
                settings=vocab_lib.TokenizerSettings.from_dict(first["tokenizer"]),
                min_word_count=first["min_word_count"], images_per_shard=first["images_per_shard"],
                source_info=first["source_info"], merged_parts=count, vocab_from=first["vocab_from"])
            layout.swap_in(stage, out_dir, previous)
        if verbose:
            print(report.format_summary(manifest, out_dir))
        for warning in report.empty_split_warnings(manifest):
            print(warning, file=sys.stderr)
        if not keep_parts:
            for index, part in enumerate(parts):
                layout.remove_own(layout.part_dir(out_dir, index, count), layout.part_files(part))
            layout.remove_own(parts_root)  # when that emptied it
        return manifest


def _read_part(out_dir: str, index: int, count: int) -> dict:
    """Part `index`'s part.json, checked: the keys merge needs, and every shard it
    lists a plain shard name of its split, a regular file inside the part dir."""
    folder = layout.part_dir(out_dir, index, count)
    path = os.path.join(folder, layout.PART_FILE)
    again = f"convert it again with --num-parts {count} --part-index {index}"
    if io_utils.islink(folder) or not io_utils.exists(path):
        raise ConversionError(f"part {index} of {count} is missing or unfinished ({path} does not exist); "
                              f"run the converter again with --num-parts {count} --part-index {index}")
    try:
        with io_utils.open(path, "rb") as f:
            part = json.loads(f.read())
        if not isinstance(part, dict) or part.get("part") != [index, count]:
            raise ValueError(f"it says it is part {part.get('part') if isinstance(part, dict) else None}")
        for key in ("format_version", "source", "tokenizer", "min_word_count", "images_per_shard",
                    "max_caption_words", "max_captions_per_image", "skipped", "reencoded", "source_info",
                    "train_word_counts"):
            if key not in part:
                raise ValueError(f"no {key!r}")
        part["caption_limit"] = (part.get("caption_cap") or {}).get("limit")
        part["vocab_from"] = part.get("vocab_from")
        if not isinstance(part.get("splits"), dict):
            raise ValueError("no 'splits'")
        real_folder = os.path.realpath(folder)
        for split, info in part["splits"].items():
            split_info = manifest_lib.SplitInfo.from_dict(info)
            for name in split_info.files:
                if not isinstance(name, str) or not layout.is_shard_name(name, split):
                    raise ConversionError(f"{path} lists {name!r} as a {split} shard, which is not a shard "
                                          f"file name ({records.shard_pattern(split)}); {again}")
                shard = os.path.join(folder, name)
                if io_utils.is_remote(shard) and io_utils.isfile(shard):  # a URL has no symlinks
                    continue
                try:
                    st = os.lstat(shard)
                except OSError:
                    raise ConversionError(f"{path} lists shard {name}, which is missing; {again}") from None
                if not stat.S_ISREG(st.st_mode) or os.path.dirname(os.path.realpath(shard)) != real_folder:
                    raise ConversionError(f"{path} lists shard {name}, which is not a regular file in "
                                          f"{folder}; {again}")
    except ConversionError:
        raise
    except (OSError, ValueError, TypeError, KeyError, RecursionError) as e:
        raise ConversionError(f"{path} is not a part.json the converter wrote ({e}); {again}") from e
    return part
