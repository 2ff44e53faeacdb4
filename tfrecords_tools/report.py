"""What a conversion skipped and re-encoded, and the summary it prints.

The reasons are the keys of the manifest's "skipped" and "reencoded" entries;
each keeps a count and the first `NUM_EXAMPLES` names.
"""

from __future__ import annotations

import collections
import os
from typing import Mapping

from tfrecords_tools.images import REENCODE_REASONS

# Why an input was skipped; keys are the manifest's "skipped" reasons.
SKIP_REASONS = {
    "missing": "image file does not exist",
    "unreadable": "image file could not be read (permissions, a directory, a symlink loop, ...)",
    "not_regular_file": "image path is a FIFO, device or socket, not a regular file (never opened for reading)",
    "file_too_large": "image file is larger than max_file_bytes (checked before reading)",
    "empty_file": "image file is zero bytes",
    "truncated": "image file is cut short",
    "corrupt": "image file is not a decodable image",
    "too_large": "image header claims more pixels than max_pixels (checked before decoding)",
    "unsafe_path": "file name is absolute, climbs out of the image root ('..') or is a symlink leading "
                   "outside it (--follow-symlinks trusts symlinks)",
    "duplicate": "image id already written (same split or an earlier one)",
    "duplicate_id": "COCO image entry reuses an earlier entry's id with another file name (its captions "
                    "would go to both; the earlier entry kept, this one skipped)",
    "bad_encoding": "caption is not valid UTF-8 (caption dropped)",
    "empty_caption": "caption empty, whitespace or punctuation only (caption dropped)",
    "no_captions": "image has no non-empty caption (image dropped)",
    "bad_line": "line of a caption file that could not be parsed",
    "split_conflict": "record puts an image into another split than an earlier record (first kept)",
}

NUM_EXAMPLES = 5  # names kept per skip reason


class Counted:
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


class CaptionCap:
    """Images that had more captions than the cap: how many, how many captions dropped."""

    def __init__(self, limit: int):
        self.limit = limit
        self.images = 0
        self.captions_dropped = 0
        self.examples: list[str] = []

    def add(self, name: str, dropped: int) -> None:
        self.images += 1
        self.captions_dropped += dropped
        if len(self.examples) < NUM_EXAMPLES:
            self.examples.append(name)

    def merge(self, other: Mapping) -> None:
        """Adds a `to_dict()` of another part's cap (same limit)."""
        self.images += other["images_capped"]
        self.captions_dropped += other["captions_dropped"]
        self.examples.extend(other["examples"][:max(0, NUM_EXAMPLES - len(self.examples))])

    def to_dict(self) -> dict:
        return {"limit": self.limit, "images_capped": self.images,
                "captions_dropped": self.captions_dropped, "examples": list(self.examples)}


def empty_split_warnings(manifest: Mapping) -> list[str]:
    """A warning line for each of val and test that the conversion left empty, saying what
    that means and what to change for this source."""
    splits, info = manifest["splits"], manifest.get("source_info") or {}
    total = sum(s["num_images"] for s in splits.values())
    effects = {"val": "training reports no validation perplexity",
               "test": "`evaluate --split test` has nothing to score"}
    lines = []
    for split, effect in effects.items():
        if split in splits and splits[split]["num_images"]:
            continue
        source = manifest["source"]
        if source in ("jsonl", "csv"):
            key = info.get("keys", {}).get("split", "split")
            fraction = info.get("hash_split", {}).get(split)
            hint = (f"records without a '{key}' field go to {split} by hash with --{split}-fraction {fraction:g}, "
                    f"which gave none of {total} images: raise --{split}-fraction (e.g. 0.2) or mark some "
                    f"records '{key}': '{split}'")
        elif source == "flickr30k":
            hint = f"the hash split gave none of {total} images: raise --{split}-fraction (e.g. 0.2)"
        elif source == "shapes":
            hint = f"generate some with --num-{split}"
        else:
            hint = f"the {source} source assigned no image to {split}; check its split lists or files"
        lines.append(f"warning: the {split} split is empty (0 of {total} images), so {effect}; {hint}")
    return lines


def format_summary(manifest: Mapping, out_dir: str | os.PathLike) -> str:
    """The human-readable summary of a written manifest."""
    lines = [f"Wrote {manifest['source']} to {os.fspath(out_dir)}"]
    for split, info in manifest["splits"].items():
        lines.append(f"  {split:5s}: {info['num_images']:7d} images {info['num_captions']:8d} "
                     f"captions {info['num_shards']:4d} shards")
    built = (f"from --vocab {manifest['vocab_from']}" if manifest.get("vocab_from")
             else f"words seen >= {manifest['min_word_count']} times in train")
    lines.append(f"  vocabulary: {manifest['vocab_size']} ids (special tokens included, {built}); longest train "
                 f"caption {manifest['max_caption_words']} words")
    cap = manifest.get("caption_cap")
    if cap:
        if cap["images_capped"]:
            more = ", ..." if cap["images_capped"] > len(cap["examples"]) else ""
            lines.append(f"Captions capped at {cap['limit']} per image: {cap['images_capped']} images lost "
                         f"{cap['captions_dropped']} captions: {', '.join(cap['examples'])}{more}")
        else:
            lines.append(f"Captions capped at {cap['limit']} per image: no image had more")
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
