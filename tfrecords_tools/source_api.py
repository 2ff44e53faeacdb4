"""What a source hands the writer, and the helpers every source reads its input with.

A source module (`flickr8k`, `coco`, ...) turns its raw layout into `Item`s per
split and raises `ConversionError` for input the user has to fix. It finds
image files with `image_path` (never outside the image root), reads text with
`read_text` (bad bytes kept for the writer to count), splits by `hash_split`
where the release has no split, and (`tfds_source`) keeps only its part of a
many-machine conversion with `in_part`. It passes the writer's settings
through (`**writer_kwargs`), whose defaults are here too.

Nothing here or in a source module's top level loads TensorFlow: the CLI
imports the sources for their defaults, and `--help` should not wait for it.
Sources import `writer` inside their `convert_*` functions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat

from caption_app import io_utils
from caption_app.errors import CaptionAppError

# The writer's defaults (`write_dataset`; the CLI's --min-word-count, --images-per-shard).
DEFAULT_MIN_WORD_COUNT = 4
DEFAULT_IMAGES_PER_SHARD = 1000
# Captions kept per image (the first ones, in the source's order). Published
# datasets have 5 (Flickr, Karpathy) to 7 (COCO) and a few 10 (CUB, Oxford
# flowers); training pads every batch to the largest image's count, so one
# image with thousands of captions (a bad join, a spam row) would multiply
# memory for the whole run. 20 keeps every real dataset whole with room to spare.
DEFAULT_MAX_CAPTIONS_PER_IMAGE = 20
# Image files larger than this are skipped as "file_too_large" before they are
# read (--max-file-bytes). Camera JPEGs of 50 megapixels are 10-25 MB; images
# are resized to a few hundred pixels for captioning, so 64 MiB only stops
# files that are not real images (or not worth reading).
DEFAULT_MAX_FILE_BYTES = io_utils.DEFAULT_MAX_IMAGE_FILE_BYTES  # one limit: the converters, `caption` and the API


class ConversionError(CaptionAppError, ValueError):
    """A problem with the input the user has to fix (message says what and how)."""


@dataclasses.dataclass(frozen=True)
class Item:
    """One image of a source, before any check.

    Attributes:
      image_id: the id stored in the record (the file name for Flickr8k).
      path: the image file.
      captions: its raw captions, in the source's order.
      root: the image folder `path` was found in (`image_path`): the writer
        skips the file as "unsafe_path" when it resolves (through symlinks)
        outside it, unless told to follow symlinks. None: no such check.
    """

    image_id: str
    path: str
    captions: tuple[str, ...]
    root: str | None = None


def image_path(root: str | os.PathLike, name: str) -> str | None:
    """`root/name`, or None when `name` is absolute or climbs out of `root`.

    Annotation files name images; a name like `../../etc/passwd` or
    `/etc/passwd` must not make the converter read (and store) files outside
    the image folder. Sources count such names as "unsafe_path". Checked on
    the name alone; the writer checks where symlinks lead (`Item.root`).
    """
    if "\0" in name:  # no file system has such a name; open() would raise ValueError
        return None
    name = name.replace("\\", "/")
    norm = os.path.normpath(name)
    if (not name.strip() or os.path.isabs(name) or norm in (".", "..") or norm.startswith("../")
            or (len(name) > 1 and name[1] == ":")):  # "C:..." (a Windows drive)
        return None
    return os.path.join(os.fspath(root), norm)


def hash_split(key: str, val_fraction: float, test_fraction: float) -> str:
    """"train", "val" or "test" from a stable hash of `key`.

    Deterministic and independent of the input order and size: adding images
    later never moves an existing one to another split.
    """
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ConversionError(f"val fraction {val_fraction} and test fraction {test_fraction} must be >= 0 "
                              "and leave some images for train")
    digest = hashlib.sha1(b"split:" + key.encode("utf-8", "surrogateescape")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64  # uniform in [0, 1)
    if u < val_fraction:
        return "val"
    return "test" if u < val_fraction + test_fraction else "train"


def read_text(path: str | os.PathLike) -> str:
    """A text file as UTF-8; invalid bytes become lone surrogates, which the writer
    drops per caption as "bad_encoding" instead of failing the whole file.

    Raises:
      ConversionError: `path` is not a regular file (a FIFO would block forever,
        a device never end).
    """
    if io_utils.is_remote(path):  # tf.io.gfile: no FIFOs or devices there
        if io_utils.isdir(path):
            raise ConversionError(f"{os.fspath(path)} is a folder; pass the annotation file itself")
        data = io_utils.read_bytes(path)
    else:
        with os.fdopen(_open_regular(path), "rb") as f:
            data = f.read()
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark
        data = data[3:]
    return data.decode("utf-8", "surrogateescape")


def _open_regular(path: str | os.PathLike) -> int:
    """A read-only descriptor of `path`, a regular file (opened without blocking)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except ValueError as e:  # a NUL byte in the name
        raise ConversionError(f"{path!r} is not a valid file name ({e})") from e
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConversionError(f"{os.fspath(path)} is not a regular file (a FIFO, device or folder); "
                              "pass the annotation file itself")
    os.set_blocking(fd, True)
    return fd


def check_part(index: int, count: int) -> None:
    """Raises ConversionError unless 0 <= index < count."""
    if count < 1 or not 0 <= index < count:
        raise ConversionError(f"part index {index} of {count} parts: need 0 <= index < count "
                              "(--part-index I --num-parts N)")


def in_part(image_id: str, index: int, count: int) -> bool:
    """Whether `image_id` belongs to part `index` of `count`: a stable hash of the id,
    so every machine agrees without talking to the others, whatever the input order."""
    digest = hashlib.sha1(image_id.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % count == index
