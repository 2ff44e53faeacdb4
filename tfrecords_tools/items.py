"""The per-item steps both writers share: one item per image id, cleaned captions, a record's bytes.

`writer` (threads) and `beam_pipeline` (Beam workers) both import this module
and neither imports the other's internals, so imports go one way:
writer -> beam_pipeline -> items, writer -> items.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Mapping, Sequence

from caption_app.data import records
from caption_app.data import vocabulary as vocab_lib
from tfrecords_tools import report
from tfrecords_tools.source_api import Item


def unique_items(split_names: Sequence[str], items_by_split: Mapping[str, Sequence[Item]],
                 skipped: report.Counted) -> dict[str, list[Item]]:
    """split -> its items, each image id's first one kept (in split order), the others
    counted as "duplicate"."""
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
    return candidates


def clean_captions(split: str, survivors: Sequence[Item], *, settings: vocab_lib.TokenizerSettings,
                   max_captions: int, skipped: report.Counted, caption_cap: report.CaptionCap
                   ) -> tuple[list[Item], int, collections.Counter, collections.Counter]:
    """The captions of images that passed the image check: stripped; those that are
    not valid UTF-8 (sources decode bytes with errors="surrogateescape") or have no
    word dropped and counted; at most `max_captions` kept per image (the rest
    counted in `caption_cap`); images left without a caption counted as "no_captions".
    One tokenizer pass over all of them gives the empty captions, the lengths and
    (train only) the word counts the vocabulary is built from.

    Returns:
      (the items kept, with their kept captions; the most words of a kept caption;
       when `split` is "train", else empty: the word counts of the kept captions, and
       the kept images by the words of their longest caption (the length buckets')).
    """
    stripped = []  # per image: [(index in the source, stripped caption)]
    for item in survivors:
        good = []
        for i, caption in enumerate(item.captions):
            if _valid_utf8(caption):
                good.append((i, caption.strip()))
            else:
                skipped.add("bad_encoding", f"{item.image_id}#{i}")
        stripped.append(good)
    words = vocab_lib.split_words((c for cs in stripped for _, c in cs), settings)
    kept, max_words, counts, longest = [], 0, collections.Counter(), collections.Counter()
    for item, captions in zip(survivors, stripped):
        good, dropped, most = [], 0, 0
        for i, caption in captions:
            caption_words = next(words)
            if not caption_words:
                skipped.add("empty_caption", f"{item.image_id}#{i}")
            elif len(good) < max_captions:
                good.append(caption)
                max_words = max(max_words, len(caption_words))
                most = max(most, len(caption_words))
                if split == "train":
                    counts.update(caption_words)
            else:
                dropped += 1
        if dropped:
            caption_cap.add(item.image_id, dropped)
        if good:
            kept.append(dataclasses.replace(item, captions=tuple(good)))
            if split == "train":
                longest[most] += 1
        else:
            skipped.add("no_captions", item.image_id)
    return kept, max_words, counts, longest


def serialize(item: Item, data: bytes) -> bytes:
    """One record: `item`'s id and (kept) captions with the image bytes `data`.
    Deterministic: the features map in a fixed order, so reruns (other processes,
    other machines) give the same bytes."""
    return records.make_example(item.image_id, data, item.captions).SerializeToString(deterministic=True)


def _valid_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
