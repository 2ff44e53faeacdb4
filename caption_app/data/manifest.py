"""Reading a data dir's `manifest.json`: the counts everything else derives from.

The converter (`tfrecords_tools.writer`) writes it last, atomically, after every
shard and the vocabulary are in place; a data dir without one is incomplete.
"""

from __future__ import annotations

import dataclasses
import json
import os

from caption_app.data.vocabulary import VOCAB_FILE, TokenizerSettings

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class SplitInfo:
    num_images: int
    num_captions: int
    files: tuple[str, ...]


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
    splits = {}
    for name, info in raw["splits"].items():
        files = tuple(info.get("files", ()))
        for f in files:
            if not os.path.exists(os.path.join(data_dir, f)):
                raise FileNotFoundError(f"{path} lists shard {f}, which is missing")
        splits[name] = SplitInfo(int(info["num_images"]), int(info["num_captions"]), files)
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

