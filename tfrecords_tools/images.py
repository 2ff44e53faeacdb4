"""Image checking and re-encoding: what the writer stores for each image file.

`read_image_file` is the one place image bytes are read: only regular files,
inside the image root (`Item.root`) unless symlinks are trusted, at most
`max_bytes`, checked before the read (a FIFO or `/dev/zero` never blocks or
fills memory). `check_image` reads a file that way, checks the header's size before decoding, decodes
it fully and says why it is skipped (a `report.SKIP_REASONS` key) or why it
must be re-encoded (a `REENCODE_REASONS` key); `stored_bytes` then gives the
record's bytes: the original ones, or the 8-bit RGB re-encoding.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import io
import os
import stat
from typing import Mapping

import numpy as np
from PIL import Image, ImageOps

from caption_app import io_utils
from caption_app.data.pil_images import to_rgb
from tfrecords_tools import source_api
from tfrecords_tools.source_api import ConversionError, Item

# Why an image was stored re-encoded instead of as published; keys are the
# manifest's "reencoded" reasons. TensorFlow ignores EXIF orientation, drops
# transparency (showing whatever colour transparent pixels hide) and has no
# TIFF/WebP-animation/palette-BMP support worth trusting; these are rare, so
# everything else keeps its original bytes.
REENCODE_REASONS = {
    "exif_orientation": "EXIF orientation applied to the pixels (JPEG quality 95, or PNG)",
    "cmyk": "CMYK/YCCK JPEG converted to RGB (JPEG quality 95, no chroma subsampling)",
    "alpha": "transparency composited onto white (PNG)",
    "format": "not JPEG/PNG/GIF (BMP, TIFF, WebP, ...): first frame as PNG",
    "high_bit_depth": "16/32-bit or float pixels scaled to 8 bits (PNG)",
}

# Formats kept as published (`tf.io.decode_image` reads them correctly). MPO is
# a JPEG with extra frames (camera output).
KEPT_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF"})
JPEG_FORMATS = frozenset({"JPEG", "MPO"})

# The one pixel limit of images from outside (serving and `caption` use it too): 40 megapixels,
# under PIL's own decompression-bomb limit (about 89 megapixels).
DEFAULT_MAX_PIXELS = io_utils.DEFAULT_MAX_IMAGE_PIXELS

DEFAULT_MAX_FILE_BYTES = source_api.DEFAULT_MAX_FILE_BYTES


@dataclasses.dataclass(frozen=True)
class ReadLimits:
    """How image files are read: `max_bytes` per file; symlinks (and symlinked
    folders) that resolve outside the item's root are refused unless `follow_symlinks`."""

    max_bytes: int = DEFAULT_MAX_FILE_BYTES
    follow_symlinks: bool = False


def read_image_file(item: Item, limits: ReadLimits = ReadLimits()) -> tuple[str | None, bytes]:
    """(skip reason or None, the file's bytes): reads `item.path` only when it is a
    regular file, inside `item.root` (see `ReadLimits`) and at most `limits.max_bytes` long.

    The file is stat'ed before it is opened, opened with O_NONBLOCK (a FIFO swapped
    in after the check cannot block) and checked again on the open descriptor.
    """
    path = item.path
    if io_utils.is_remote(path):
        return _read_url(path, limits)
    try:
        if item.root is not None and not limits.follow_symlinks and not _inside(path, item.root):
            return "unsafe_path", b""
        st = os.stat(path)  # follows symlinks: the file that would be read
    except FileNotFoundError:
        return "missing", b""
    except (OSError, ValueError):  # a symlink loop, a name too long, a NUL byte
        return "unreadable", b""
    if not stat.S_ISREG(st.st_mode):
        return ("unreadable" if stat.S_ISDIR(st.st_mode) else "not_regular_file"), b""
    if st.st_size > limits.max_bytes:
        return "file_too_large", b""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return "missing", b""
    except OSError:
        return "unreadable", b""
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
            return "not_regular_file", b""  # swapped between the check and the open
        chunks, left = [], limits.max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as e:
        return ("not_regular_file" if e.errno == errno.EAGAIN else "unreadable"), b""
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limits.max_bytes:  # grew after the check
        return "file_too_large", b""
    return None, data


def _read_url(path: str, limits: ReadLimits) -> tuple[str | None, bytes]:
    """`read_image_file` for a URL (tf.io.gfile: no symlinks, FIFOs or devices there)."""
    try:
        if not io_utils.exists(path):
            return "missing", b""
        if io_utils.isdir(path):
            return "unreadable", b""
        if io_utils.getsize(path) > limits.max_bytes:
            return "file_too_large", b""
        with io_utils.open(path, "rb") as f:
            data = f.read(limits.max_bytes + 1)
    except Exception:  # tf.errors.OpError: permission denied, a network error
        return "unreadable", b""
    return ("file_too_large", b"") if len(data) > limits.max_bytes else (None, data)


def _inside(path: str, root: str) -> bool:
    """Whether `path`, every symlink resolved, lies inside `root` (itself resolved)."""
    real_root = _real_root(root)
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


@functools.lru_cache(maxsize=64)
def _real_root(root: str) -> str:
    return os.path.realpath(root)


def check_image(item: Item, max_pixels: int, limits: ReadLimits = ReadLimits()
                ) -> tuple[str | None, int, str | None]:
    """(skip reason or None, byte size, re-encode reason or None): reads one image
    (`read_image_file`), checks the header's size, then decodes it fully."""
    reason, data = read_image_file(item, limits)
    if reason:
        return reason, 0, None
    if not data:
        return "empty_file", 0, None
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            width, height = image.size
            if width * height > max_pixels:
                return "too_large", 0, None
            image.load()
            fix = _reencode_reason(image)
    except Image.DecompressionBombError:
        return "too_large", 0, None
    except Exception as e:  # PIL raises many types for bad data; all mean "not an image"
        return ("truncated" if "truncated" in str(e).lower() else "corrupt"), 0, None
    return None, len(data), fix


def _reencode_reason(image: Image.Image) -> str | None:
    """Why TensorFlow would decode this (loaded) image wrongly, or None when it is fine."""
    if image.getexif().get(_EXIF_ORIENTATION, 1) not in (0, 1):
        return "exif_orientation"
    if image.format not in KEPT_FORMATS:
        return "format"
    if image.mode in ("CMYK", "YCbCr", "LAB"):
        return "cmyk"
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        return "alpha"
    if image.mode in ("I", "F") and image.format != "PNG":
        return "high_bit_depth"
    return None  # RGB, L, P, 1, and 16-bit PNG (TensorFlow scales it to 8 bits itself)


_EXIF_ORIENTATION = 0x0112


def _reencoded(data: bytes) -> bytes:
    """The 8-bit RGB re-encoding of an image that needs one (see REENCODE_REASONS)."""
    with Image.open(io.BytesIO(data)) as image:
        image.seek(0)  # the first frame of animations and multi-page files
        lossy = image.format in JPEG_FORMATS
        image = ImageOps.exif_transpose(image)
        rgb = to_rgb(image)
    buf = io.BytesIO()
    if lossy:
        rgb.save(buf, "JPEG", quality=95, subsampling=0)  # 4:4:4: no colour bleeding at edges, closer to
        # what TensorFlow decodes from the original bytes at serving time (tests/test_image_modes.py)
    else:
        rgb.save(buf, "PNG")
    return buf.getvalue()


def stored_bytes(item: Item, checked: Mapping[str, tuple[int, str | None]],
                 limits: ReadLimits = ReadLimits()) -> bytes:
    """What the record stores: the original bytes, or their re-encoding when needed."""
    size, fix = checked[item.image_id]
    reason, data = read_image_file(item, limits)
    if reason:
        raise ConversionError(f"{item.path} could be read when checked but not now ({reason}); "
                              "was it changed during the conversion? Run again")
    if len(data) != size:
        raise ConversionError(f"{item.path} changed while it was being converted; run again")
    return _reencoded(data) if fix else data
