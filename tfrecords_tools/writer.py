"""The one writer every source uses: `write_dataset` orchestrates a conversion.

A source module (`flickr8k`, `shapes`, ...) only turns its raw layout into
`source_api.Item`s per split; `write_dataset` does the rest:

1. takes the lock on `OUT` (`layout.out_lock`: one conversion at a time), refuses
   an `OUT` that holds files it did not write (`layout.check_out_dir`, by content)
   and builds everything in a hidden staging dir inside it (`layout.staging`);
2. reads every image in a thread pool and checks it (`images.check_image`:
   regular files only, inside the image root, size capped before the read,
   header size before decoding, then a full decode), skipping and counting
   bad inputs (`report.SKIP_REASONS`) instead of crashing;
3. drops empty captions and captions that are not valid UTF-8, and keeps at
   most `max_captions_per_image` per image (counted in the manifest's "caption_cap");
4. writes `{split}-NNNNN-of-MMMMM.tfrecord` shards, one record per image
   (`layout.write_shard`). Records keep the original bytes, except for images
   `tf.io.decode_image` would decode wrongly or not at all, which are stored
   re-encoded as 8-bit RGB (`images.REENCODE_REASONS`);
5. builds the vocabulary from the train split only and writes `vocab.txt`
   and, last, `manifest.json` (`layout.write_vocab_and_manifest`);
6. only then replaces the old output in `OUT` by the new one (`layout.swap_in`):
   a conversion that fails leaves the previous data dir as it was.

Same input -> byte-identical shards and vocabulary: records keep the input
order, whatever the number of workers.

Many machines: `part=(index, count)` converts one part into
`OUT/parts/part-IIIII-of-NNNNN/` with a `part.json` instead of step 5's files;
`merge.merge_parts` then combines the parts (see `tfrecords_tools.merge`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import math
import os
import sys
from typing import Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

import tqdm

from caption_app.data import manifest as manifest_lib
from caption_app.data import records
from caption_app.data import vocabulary as vocab_lib
from tfrecords_tools import images, layout, merge, report, source_api
from tfrecords_tools.items import clean_captions, serialize, unique_items
from tfrecords_tools.source_api import ConversionError, Item, check_part, in_part

_T = TypeVar("_T")
_R = TypeVar("_R")


def write_dataset(
    out_dir: str | os.PathLike,
    items_by_split: Mapping[str, Sequence[Item]],
    *,
    source: str,
    min_word_count: int = source_api.DEFAULT_MIN_WORD_COUNT,
    num_workers: int | None = None,
    images_per_shard: int = source_api.DEFAULT_IMAGES_PER_SHARD,
    settings: vocab_lib.TokenizerSettings = vocab_lib.TokenizerSettings(),
    extra_skipped: Mapping[str, Sequence[str]] | None = None,
    source_info: Mapping | None = None,
    max_pixels: int = images.DEFAULT_MAX_PIXELS,
    max_file_bytes: int = source_api.DEFAULT_MAX_FILE_BYTES,
    follow_symlinks: bool = False,
    max_captions_per_image: int = source_api.DEFAULT_MAX_CAPTIONS_PER_IMAGE,
    part: tuple[int, int] | None = None,
    vocab_from: str | None = None,
    runner: str | None = None,
    pipeline_args: Sequence[str] = (),
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
      max_file_bytes: larger image files are skipped as "file_too_large"
        before they are read.
      follow_symlinks: read image files that are (or lie under) symlinks
        leading outside their item's root; by default they are "unsafe_path".
      max_captions_per_image: the first this many captions of an image are
        kept, the rest dropped and counted (the manifest's "caption_cap").
      part: (index, count): convert only the images whose id hashes to `index`
        into `layout.part_dir(out_dir, index, count)` and write its `part.json`
        instead of the vocabulary and manifest (see `merge.merge_parts`).
      vocab_from: a vocab.txt to use instead of building one (`--vocab`, e.g.
        an imported run's, so the data gets that model's word ids); words not
        in it map to `<unk>`; `min_word_count` is then not used. Recorded in
        the manifest.
      runner: check the images and write the shards with this Apache Beam
        runner ("direct", "DataflowRunner", ...; `beam_pipeline`) instead of
        this process's threads; the output is the same.
      pipeline_args: more Beam pipeline options (command-line style), with `runner`.
      progress: show tqdm progress bars (stderr).
      verbose: print the summary (stdout) at the end.

    Returns:
      The manifest dict, as written to `out_dir/manifest.json` (with `part`:
      the part's dict, as written to its `part.json`).

    Raises:
      ConversionError: no usable train image remains, an argument is invalid,
        or `out_dir` holds files the converter did not write. The previous
        contents of `out_dir` are unchanged then.
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
    if max_file_bytes < 1:
        raise ConversionError(f"max_file_bytes must be >= 1, got {max_file_bytes}")
    if max_captions_per_image < 1:
        raise ConversionError(f"max_captions_per_image must be >= 1, got {max_captions_per_image}")
    if part is not None:
        check_part(*part)
    if vocab_from is not None:
        vocab_from = os.path.abspath(os.fspath(vocab_from))
        layout.load_given_vocab(vocab_from)  # a bad file stops before anything is converted
    beam_options = None
    if runner is not None:
        if part is not None:
            raise ConversionError("--runner converts everything in one pipeline; "
                                  "drop --num-parts/--part-index (they are the no-Beam fan-out)")
        from tfrecords_tools import beam_pipeline

        beam_options = beam_pipeline.pipeline_options(runner, pipeline_args, num_workers)
    elif pipeline_args:
        raise ConversionError(f"unrecognized arguments: {' '.join(pipeline_args)} "
                              "(Beam pipeline options go with --runner)")
    split_names = list(items_by_split) + [s for s in records.SPLITS if s not in items_by_split]
    for split in split_names:
        if not split or not all(c.isalnum() or c == "_" for c in split):
            raise ConversionError(f"split name {split!r} must be letters, digits or '_'")

    # Threads: PIL decodes and file reads release the GIL; processes would re-import TF.
    workers = num_workers or min(32, (os.cpu_count() or 1) + 4)
    out_dir = os.fspath(out_dir)
    command = f"tfrecords_tools {source}" + (f" part {part[0]} of {part[1]}" if part is not None else "")
    with layout.out_lock(out_dir, command, part):  # before anything is written; refused when held
        previous = layout.check_out_dir(out_dir)  # again, now that the lock is held
        target = out_dir if part is None else layout.part_dir(out_dir, *part)
        if part is not None:
            layout.check_part_dir(target)
        limits = images.ReadLimits(max_bytes=max_file_bytes, follow_symlinks=follow_symlinks)

        skipped = report.Counted()
        if part is None or part[0] == 0:  # the source's own skips are counted once, in part 0
            for reason, names in (extra_skipped or {}).items():
                for name in names:
                    skipped.add(reason, name)
        if part is not None:
            items_by_split = {split: [item for item in items if in_part(item.image_id, *part)]
                              for split, items in items_by_split.items()}

        common = dict(source=source, settings=settings, min_word_count=min_word_count,
                      images_per_shard=images_per_shard, source_info=dict(source_info or {}), vocab_from=vocab_from)
        if part is not None:
            with layout.staging(os.path.dirname(target), os.path.basename(target)) as stage:
                converted = _convert(stage, split_names, items_by_split, skipped, workers=workers,
                                     images_per_shard=images_per_shard, settings=settings, max_pixels=max_pixels,
                                     limits=limits, max_captions=max_captions_per_image, progress=progress)
                info = merge.write_part(stage, part, converted, **common)
                layout.swap_in_part(stage, target)
            if verbose:
                print(f"Wrote part {part[0]} of {part[1]} to {target}: "
                      + ", ".join(f"{s} {v['num_images']}" for s, v in info["splits"].items())
                      + f" images; skipped: {skipped.summary_line()}. "
                      "Merge with `python -m tfrecords_tools merge --out OUT` when every part is done.")
            return info
        with layout.staging(out_dir, "data") as stage:
            if beam_options is not None:
                converted = beam_pipeline.convert(
                    stage, split_names, items_by_split, skipped, options=beam_options,
                    images_per_shard=images_per_shard, settings=settings, max_pixels=max_pixels, limits=limits,
                    max_captions=max_captions_per_image, min_word_count=min_word_count, verbose=verbose)
            else:
                converted = _convert(stage, split_names, items_by_split, skipped, workers=workers,
                                     images_per_shard=images_per_shard, settings=settings, max_pixels=max_pixels,
                                     limits=limits, max_captions=max_captions_per_image, progress=progress)
            if not converted["splits"]["train"].num_images:
                raise ConversionError(
                    "no usable train image remains after skipping bad inputs "
                    f"({skipped.summary_line()}); check the image and caption paths"
                    + ("; if the images are symlinks you trust, pass --follow-symlinks"
                       if skipped.counts["unsafe_path"] else ""))
            manifest = layout.write_vocab_and_manifest(stage, converted, **common)
            layout.swap_in(stage, out_dir, previous)
        if verbose:
            print(report.format_summary(manifest, out_dir))
        for warning in report.empty_split_warnings(manifest):
            print(warning, file=sys.stderr)
        return manifest


def _convert(target: str, split_names: Sequence[str], items_by_split: Mapping[str, Sequence[Item]],
             skipped: report.Counted, *, workers: int, images_per_shard: int,
             settings: vocab_lib.TokenizerSettings, max_pixels: int, limits: images.ReadLimits,
             max_captions: int, progress: bool) -> dict:
    """Checks images and captions, writes the shards into `target`.

    Returns:
      {"splits": split -> manifest.SplitInfo,
       "train_counts": Counter of train words, "max_caption_words",
       "train_longest_caption_words": Counter of train images by their longest caption's words,
       "max_captions_per_image", "skipped": report.Counted, "reencoded": report.Counted,
       "caption_cap": report.CaptionCap}
    """
    window = 4 * workers  # results read ahead of the writer, bounding memory
    reencoded = report.Counted()
    caption_cap = report.CaptionCap(max_captions)

    # Pass 1: ids, then every image read and decoded (nothing kept in memory).
    candidates = unique_items(split_names, items_by_split, skipped)
    all_candidates = [item for split in split_names for item in candidates[split]]
    checked: dict[str, tuple[int, str | None]] = {}  # image_id -> (byte size, re-encode reason)
    check = functools.partial(images.check_image, max_pixels=max_pixels, limits=limits)
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

    # Captions of the images that survived (`clean_captions`).
    kept: dict[str, list[Item]] = {}
    max_words: dict[str, int] = {}
    train_counts: collections.Counter = collections.Counter()
    train_longest: collections.Counter = collections.Counter()  # words -> train images (length buckets)
    for split in split_names:
        survivors = [item for item in candidates[split] if item.image_id in checked]
        kept[split], max_words[split], counts, longest = clean_captions(
            split, survivors, settings=settings, max_captions=max_captions, skipped=skipped,
            caption_cap=caption_cap)
        train_counts.update(counts)
        train_longest.update(longest)

    # Pass 2: shards, the original bytes re-read in order (re-encoded where needed).
    splits_info = {}
    total = sum(len(items) for items in kept.values())
    with concurrent.futures.ThreadPoolExecutor(workers) as pool, _bar(
            progress, total, "writing shards") as bar:
        for split in split_names:
            items = kept[split]
            num_shards = math.ceil(len(items) / images_per_shard)
            encoded = _ordered_map(pool, functools.partial(images.stored_bytes, checked=checked, limits=limits),
                                   items, window)
            files = []
            for shard in range(num_shards):
                lo, hi = len(items) * shard // num_shards, len(items) * (shard + 1) // num_shards
                name = records.shard_name(split, shard, num_shards)
                layout.write_shard(os.path.join(target, name), _serialized(items[lo:hi], encoded, bar))
                files.append(name)
            splits_info[split] = manifest_lib.SplitInfo(
                num_images=len(items), num_captions=sum(len(item.captions) for item in items),
                files=tuple(files))
    return {
        "splits": splits_info,
        "train_counts": train_counts,
        "max_caption_words": max_words["train"],
        "train_longest_caption_words": train_longest,
        "max_captions_per_image": max(
            (len(item.captions) for items in kept.values() for item in items), default=0),
        "skipped": skipped,
        "reencoded": reencoded,
        "caption_cap": caption_cap,
    }


def _serialized(items: Sequence[Item], encoded: Iterator[bytes], bar) -> Iterator[bytes]:
    for item in items:
        data = next(encoded)
        bar.update()
        yield serialize(item, data)


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
