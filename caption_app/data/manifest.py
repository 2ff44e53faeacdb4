"""A data dir's `manifest.json`: the counts everything else derives from.

The one home of its keys: `write` (the converter, `tfrecords_tools`, calls it
last, atomically, after every shard and the vocabulary are in place; a data
dir without one is incomplete) and `load` (everything that reads a data dir).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from typing import Mapping

from caption_app import io_utils
from caption_app.data.vocabulary import VOCAB_FILE, TokenizerSettings

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class SplitInfo:
    num_images: int
    num_captions: int
    files: tuple[str, ...]

    def to_dict(self) -> dict:
        """The split's manifest entry (`num_shards` is len(files), for people reading it)."""
        return {"num_images": self.num_images, "num_captions": self.num_captions,
                "num_shards": len(self.files), "files": list(self.files)}

    @classmethod
    def from_dict(cls, info: Mapping) -> "SplitInfo":
        return cls(int(info["num_images"]), int(info["num_captions"]), tuple(info.get("files", ())))


@dataclasses.dataclass(frozen=True)
class Manifest:
    data_dir: str
    splits: dict  # name -> SplitInfo
    tokenizer: TokenizerSettings
    vocab_size: int  # ids, special tokens included
    vocab_file: str
    max_caption_words: int  # longest train caption, in words
    max_captions_per_image: int
    raw: dict

    def split(self, name: str) -> SplitInfo:
        if name not in self.splits:
            raise ValueError(f"split {name!r} is not in {os.path.join(self.data_dir, MANIFEST)}; "
                             f"it has {sorted(self.splits)}")
        return self.splits[name]

    def files(self, name: str) -> list[str]:
        return [os.path.join(self.data_dir, f) for f in self.split(name).files]

    @property
    def vocab_path(self) -> str:
        return os.path.join(self.data_dir, self.vocab_file)


def load(data_dir: str) -> Manifest:
    """Loads `DATA_DIR/manifest.json` and checks its shards exist."""
    path = os.path.join(data_dir, MANIFEST)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} does not exist: {data_dir} is not a finished conversion "
            "(convert with `python -m tfrecords_tools ... --out DIR`)")
    with open(path) as f:
        raw = json.load(f)
    if raw.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {raw.get('format_version')} is not "
                         f"{FORMAT_VERSION}; reconvert the dataset")
    splits = {name: SplitInfo.from_dict(info) for name, info in raw["splits"].items()}
    for info in splits.values():
        for f in info.files:
            if not os.path.exists(os.path.join(data_dir, f)):
                raise FileNotFoundError(f"{path} lists shard {f}, which is missing")
    return Manifest(
        data_dir=data_dir,
        splits=splits,
        tokenizer=TokenizerSettings.from_dict(raw["tokenizer"]),
        vocab_size=int(raw["vocab_size"]),
        vocab_file=raw.get("vocab_file", VOCAB_FILE),
        max_caption_words=int(raw["max_caption_words"]),
        max_captions_per_image=int(raw["max_captions_per_image"]),
        raw=raw,
    )



def write(data_dir: str, *, source: str, splits: Mapping[str, SplitInfo], tokenizer: TokenizerSettings,
          vocab_size: int, vocab_file: str, min_word_count: int, max_caption_words: int,
          max_captions_per_image: int, images_per_shard: int, skipped: Mapping, reencoded: Mapping,
          source_info: Mapping, merged_parts: int | None = None, caption_cap: Mapping | None = None) -> dict:
    """Writes `DATA_DIR/manifest.json` atomically; the converter calls it last.

    Args:
      data_dir: the data dir, its shards and vocabulary already in place.
      source: the source's name ("flickr8k", "tfds:coco_captions", ...).
      splits: split name -> its counts and shard files (relative to data_dir).
      tokenizer: the settings captions are split into words with.
      vocab_size: ids in the vocabulary, special tokens included.
      vocab_file: the vocabulary's file name inside data_dir.
      min_word_count: train words seen fewer times map to `<unk>`.
      max_caption_words: the longest train caption, in words.
      max_captions_per_image: the most captions any image kept.
      images_per_shard: the converter's shard size.
      skipped, reencoded: reason -> {"count", "examples"}.
      source_info: JSON-serializable facts about the source, stored as is.
      merged_parts: how many parts `tfrecords_tools merge` combined (None: one run).
      caption_cap: the converter's cap on captions per image: {"limit",
        "images_capped", "captions_dropped", "examples"} (None: not recorded).

    Returns:
      The dict written.
    """
    manifest = {
        "format_version": FORMAT_VERSION,
        "source": source,
        "splits": {name: info.to_dict() for name, info in splits.items()},
        "tokenizer": tokenizer.to_dict(),
        "vocab_size": vocab_size,
        "vocab_file": vocab_file,
        "min_word_count": min_word_count,
        "max_caption_words": max_caption_words,
        "max_captions_per_image": max_captions_per_image,
        "images_per_shard": images_per_shard,
        "skipped": dict(skipped),
        "reencoded": dict(reencoded),
        "source_info": dict(source_info),
    }
    if caption_cap is not None:
        manifest["caption_cap"] = dict(caption_cap)
    if merged_parts is not None:
        manifest["merged_parts"] = merged_parts
    manifest["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    io_utils.write_json_atomic(os.path.join(data_dir, MANIFEST), manifest)
    return manifest
