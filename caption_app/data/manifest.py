"""A data dir's `manifest.json`: the counts everything else derives from.

The one home of its keys: `write` (the converter, `tfrecords_tools`, calls it
last, atomically, after every shard and the vocabulary are in place; a data
dir without one is incomplete) and `load` (everything that reads a data dir).
`load` refuses a manifest with missing keys or impossible counts, and one
whose counts disagree with its shards (records counted from their headers,
which also finds a truncated shard), each with "re-convert".
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import struct
from typing import Mapping

from caption_app import io_utils
from caption_app.data.vocabulary import SPECIAL_TOKENS, VOCAB_FILE, TokenizerSettings
from caption_app.errors import CaptionAppError

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
    # Train images by the word count of their longest caption (length buckets); None in
    # manifests written before it was recorded.
    longest_caption_words: dict[int, int] | None = None

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


class ManifestError(CaptionAppError, ValueError):
    """A data dir's manifest or shards are inconsistent (the message names what and says re-convert)."""


_RECONVERT = "re-convert the dataset (python -m tfrecords_tools ... --out DIR)"


def _int(value, what: str, path: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ManifestError(f"{path}: {what} is {value!r}, expected an integer >= {minimum}; {_RECONVERT}")
    return value


def count_records(path: str) -> int:
    """The records of a TFRecord file, counted from their length headers (the data is skipped, not read).

    Raises:
      ManifestError: the file ends inside a record (truncated).
    """
    size, count, offset = io_utils.getsize(path), 0, 0
    with io_utils.open(path, "rb") as f:
        while offset < size:
            header = f.read(12)  # uint64 length, uint32 masked CRC of the length
            if len(header) < 12:
                break
            (length,) = struct.unpack("<Q", header[:8])
            offset += 12 + length + 4  # data and its CRC
            if offset > size:
                break
            f.seek(offset)
            count += 1
        else:
            return count
    raise ManifestError(f"shard {path} is truncated (it ends inside record {count + 1}); {_RECONVERT}")


def load(data_dir: str, *, check_shards: bool = True) -> Manifest:
    """Loads `DATA_DIR/manifest.json` and checks it: its keys, its counts, and its shards.

    Args:
      check_shards: also count each shard's records from their headers (a
        seek per record, no data read) and compare them with the manifest. A
        local data dir only: on a URL each shard is only checked to exist.
    Raises:
      FileNotFoundError: no manifest, or a shard it lists is missing.
      ManifestError: a missing key, an impossible count, counts that disagree
        with the shards, or a truncated shard (each says re-convert).
    """
    path = os.path.join(data_dir, MANIFEST)
    if not io_utils.exists(path):
        raise FileNotFoundError(
            f"{path} does not exist: {data_dir} is not a finished conversion "
            "(convert with `python -m tfrecords_tools ... --out DIR`)")
    try:
        raw = io_utils.read_json(path)
    except ValueError as err:
        raise ManifestError(f"{path} is not valid JSON ({err}); {_RECONVERT}") from None
    if not isinstance(raw, dict):
        raise ManifestError(f"{path} is not a JSON object; {_RECONVERT}")
    if raw.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {raw.get('format_version')} is not "
                         f"{FORMAT_VERSION}; reconvert the dataset")
    missing = [k for k in ("splits", "tokenizer", "vocab_size", "max_caption_words", "max_captions_per_image")
               if k not in raw]
    if missing:
        raise ManifestError(f"{path} lacks {', '.join(missing)}; {_RECONVERT}")
    if not isinstance(raw["splits"], dict) or not isinstance(raw["tokenizer"], dict):
        raise ManifestError(f"{path}: splits and tokenizer must be JSON objects; {_RECONVERT}")
    max_per_image = _int(raw["max_captions_per_image"], "max_captions_per_image", path, 0)
    _int(raw["max_caption_words"], "max_caption_words", path, 0)
    _int(raw["vocab_size"], "vocab_size", path, len(SPECIAL_TOKENS))
    try:
        tokenizer = TokenizerSettings.from_dict(raw["tokenizer"])
    except (KeyError, TypeError, ValueError) as err:
        raise ManifestError(f"{path}: tokenizer settings {raw['tokenizer']!r} are invalid ({err}); "
                            f"{_RECONVERT}") from None
    splits = {}
    for name, info in raw["splits"].items():
        if not isinstance(info, dict) or "num_images" not in info or "num_captions" not in info:
            raise ManifestError(f"{path}: split {name!r} lacks num_images or num_captions; {_RECONVERT}")
        images = _int(info["num_images"], f"splits.{name}.num_images", path, 0)
        captions = _int(info["num_captions"], f"splits.{name}.num_captions", path, 0)
        if images and not max_per_image:
            raise ManifestError(f"{path}: max_captions_per_image is 0 but split {name!r} has {images} images; "
                                f"{_RECONVERT}")
        if not images <= captions <= images * max_per_image:
            raise ManifestError(f"{path}: split {name!r} has {images} images and {captions} captions, impossible "
                                f"with 1 to max_captions_per_image={max_per_image} captions per image; {_RECONVERT}")
        files = info.get("files", ())
        if not isinstance(files, (list, tuple)) or not all(isinstance(f, str) for f in files):
            raise ManifestError(f"{path}: splits.{name}.files must be a list of file names; {_RECONVERT}")
        if images and not files:
            raise ManifestError(f"{path}: split {name!r} has {images} images but no shard files; {_RECONVERT}")
        splits[name] = SplitInfo(images, captions, tuple(files))
    # On a URL a seek is a request (and TensorFlow's reader refills 512 KiB after each): counting
    # would read every shard. There a damaged shard is named when training reads it.
    count = check_shards and not io_utils.is_remote(data_dir)
    longest = raw.get("train_longest_caption_words")
    if longest is not None:
        try:
            longest = {int(k): int(v) for k, v in longest.items()}
        except (AttributeError, TypeError, ValueError):
            raise ManifestError(f"{path}: train_longest_caption_words must map word counts to image "
                                f"counts; {_RECONVERT}") from None
    for name, info in splits.items():
        records = 0
        for f in info.files:
            shard = os.path.join(data_dir, f)
            if not io_utils.isfile(shard):
                raise FileNotFoundError(f"{path} lists shard {f}, which is missing; {_RECONVERT}")
            if count:
                records += count_records(shard)
        if count and records != info.num_images:
            raise ManifestError(f"{path}: split {name!r} says {info.num_images} images but its "
                                f"{len(info.files)} shard(s) hold {records} records; {_RECONVERT}")
    return Manifest(
        data_dir=data_dir,
        splits=splits,
        tokenizer=tokenizer,
        vocab_size=raw["vocab_size"],
        vocab_file=raw.get("vocab_file", VOCAB_FILE),
        max_caption_words=raw["max_caption_words"],
        max_captions_per_image=max_per_image,
        raw=raw,
        longest_caption_words=longest,
    )


def write(data_dir: str, *, source: str, splits: Mapping[str, SplitInfo], tokenizer: TokenizerSettings,
          vocab_size: int, vocab_file: str, min_word_count: int, max_caption_words: int,
          max_captions_per_image: int, images_per_shard: int, skipped: Mapping, reencoded: Mapping,
          source_info: Mapping, merged_parts: int | None = None, caption_cap: Mapping | None = None,
          vocab_from: str | None = None,
          train_longest_caption_words: Mapping[int, int] | None = None) -> dict:
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
      vocab_from: the vocabulary file given with `--vocab` (None: built from
        the train words, `min_word_count`).

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
    if train_longest_caption_words is not None:
        manifest["train_longest_caption_words"] = {str(k): v for k, v in sorted(train_longest_caption_words.items())}
    if merged_parts is not None:
        manifest["merged_parts"] = merged_parts
    if vocab_from is not None:
        manifest["vocab_from"] = vocab_from
    manifest["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    io_utils.write_json_atomic(os.path.join(data_dir, MANIFEST), manifest)
    return manifest
