"""Flickr8k as published: an image folder and the `Flickr8k_text` folder.

`Flickr8k.token.txt` has one caption a line, `name.jpg#i<TAB>caption`; the
split lists `Flickr_8k.{train,dev,test}Images.txt` have one image name a line
(dev becomes "val"). Images a split lists but the image folder lacks are
skipped and reported as "missing" (a partial download converts fine).

    python -m tfrecords_tools flickr8k --images Flicker8k_Dataset --text Flickr8k_text --out DIR
"""

from __future__ import annotations

import collections
import os
import re

from caption_app import io_utils
from tfrecords_tools.source_api import ConversionError, Item, image_path, read_text

TOKEN_FILE = "Flickr8k.token.txt"
SPLIT_FILES = {  # our split -> the release's list
    "train": "Flickr_8k.trainImages.txt",
    "val": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}

# The release has `2258277193_586949ec62.jpg.1#0`: a stray `.1` after the extension.
_STRAY_SUFFIX = re.compile(r"^(.+\.(?:jpe?g|png))\.\d+$", re.IGNORECASE)


def read_flickr8k(images_dir: str | os.PathLike, text_dir: str | os.PathLike
                  ) -> tuple[dict[str, list[Item]], dict[str, list[str]]]:
    """Reads the text files into items; no image is opened.

    Args:
      images_dir: the folder of the JPEGs (`Flicker8k_Dataset` in the release).
      text_dir: the folder of `Flickr8k.token.txt` and the split lists.

    Returns:
      (split -> items in split-list order, reason -> names skipped here): lines
      of the token file without a tab are skipped as "bad_line" (`file:line`).
      Captions are in file order; an image without any caption gets none, and
      the writer skips it as "no_captions".

    Raises:
      ConversionError: a folder or one of the text files is missing.
    """
    images_dir, text_dir = os.fspath(images_dir), os.fspath(text_dir)
    if not io_utils.isdir(images_dir):
        raise ConversionError(
            f"image folder {images_dir} does not exist; pass the folder of the Flickr8k JPEGs "
            "(Flicker8k_Dataset in the release)")
    if not io_utils.isdir(text_dir):
        raise ConversionError(
            f"text folder {text_dir} does not exist; pass the Flickr8k_text folder, which holds "
            f"{TOKEN_FILE} and {', '.join(SPLIT_FILES.values())}")
    needed = [TOKEN_FILE, *SPLIT_FILES.values()]
    absent = [f for f in needed if not io_utils.isfile(os.path.join(text_dir, f))]
    if absent:
        raise ConversionError(
            f"{text_dir} lacks {', '.join(absent)}; pass the Flickr8k_text folder of the release, "
            f"which holds {', '.join(needed)}")

    captions, bad_lines = read_token_file(os.path.join(text_dir, TOKEN_FILE))

    items_by_split: dict[str, list[Item]] = {}
    unsafe: list[str] = []
    for split, list_file in SPLIT_FILES.items():
        names = [line.strip() for line in read_text(os.path.join(text_dir, list_file)).split("\n")
                 if line.strip()]
        items_by_split[split] = []
        for name in names:
            path = image_path(images_dir, name)
            if path is None:
                unsafe.append(name)
            else:
                items_by_split[split].append(
                    Item(image_id=name, path=path, captions=tuple(captions.get(name, ())), root=images_dir))
    skipped = {"bad_line": bad_lines, "unsafe_path": unsafe}
    skipped = {reason: names for reason, names in skipped.items() if names}
    return items_by_split, skipped


def read_token_file(path: str | os.PathLike) -> tuple[dict[str, list[str]], list[str]]:
    """Reads a Flickr token file (`name.jpg#i<TAB>caption` a line; Flickr8k and Flickr30k).

    Returns:
      (image name -> captions in file order, `file:line` of lines without a
      tab). Bytes that are not UTF-8 stay in the caption as lone surrogates;
      the writer drops those captions as "bad_encoding".
    """
    captions: dict[str, list[str]] = collections.defaultdict(list)
    bad_lines: list[str] = []
    base = os.path.basename(path)
    for line_no, line in enumerate(read_text(path).split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        key, tab, caption = line.partition("\t")
        if not tab:
            bad_lines.append(f"{base}:{line_no}")
            continue
        name = key.strip().rpartition("#")[0] or key.strip()
        stray = _STRAY_SUFFIX.match(name)
        if stray:
            name = stray.group(1)
        captions[name].append(caption)
    return captions, bad_lines


def convert_flickr8k(images_dir: str | os.PathLike, text_dir: str | os.PathLike,
                     out_dir: str | os.PathLike, *, source: str = "flickr8k",
                     source_info: dict | None = None, **writer_kwargs) -> dict:
    """Converts a Flickr8k layout into `out_dir` (shards, vocab.txt, manifest.json).

    Args:
      images_dir: the folder of the images.
      text_dir: the folder of `Flickr8k.token.txt` and the split lists.
      out_dir: the data dir to write.
      source: the source name stored in the manifest.
      source_info: stored in the manifest (default: the two input folders).
      **writer_kwargs: passed to `writer.write_dataset` (min_word_count,
        num_workers, images_per_shard, settings, progress, verbose).

    Returns:
      The manifest dict.
    """
    from tfrecords_tools import writer  # loads TensorFlow, so only when converting (see source_api)

    items_by_split, skipped = read_flickr8k(images_dir, text_dir)
    if source_info is None:
        source_info = {"images_dir": io_utils.abspath(images_dir),
                       "text_dir": io_utils.abspath(text_dir)}
    return writer.write_dataset(out_dir, items_by_split, source=source, extra_skipped=skipped,
                                source_info=source_info, **writer_kwargs)
