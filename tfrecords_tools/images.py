"""Image checking and re-encoding: what the writer stores for each image file.

`check_image` reads a file, checks the header's size before decoding, decodes
it fully and says why it is skipped (a `report.SKIP_REASONS` key) or why it
must be re-encoded (a `REENCODE_REASONS` key); `stored_bytes` then gives the
record's bytes: the original ones, or the 8-bit RGB re-encoding.
"""

from __future__ import annotations

import io
from typing import Mapping

import numpy as np
from PIL import Image, ImageOps

from tfrecords_tools.source_api import ConversionError, Item

# Why an image was stored re-encoded instead of as published; keys are the
# manifest's "reencoded" reasons. TensorFlow ignores EXIF orientation, drops
# transparency (showing whatever colour transparent pixels hide) and has no
# TIFF/WebP-animation/palette-BMP support worth trusting; these are rare, so
# everything else keeps its original bytes.
REENCODE_REASONS = {
    "exif_orientation": "EXIF orientation applied to the pixels (JPEG quality 95, or PNG)",
    "cmyk": "CMYK/YCCK JPEG converted to RGB (JPEG quality 95)",
    "alpha": "transparency composited onto white (PNG)",
    "format": "not JPEG/PNG/GIF (BMP, TIFF, WebP, ...): first frame as PNG",
    "high_bit_depth": "16/32-bit or float pixels scaled to 8 bits (PNG)",
}

# Formats kept as published (`tf.io.decode_image` reads them correctly). MPO is
# a JPEG with extra frames (camera output).
KEPT_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF"})
JPEG_FORMATS = frozenset({"JPEG", "MPO"})

# PIL's own decompression-bomb limit (about 89 megapixels, e.g. 9459 x 9459).
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS


def check_image(item: Item, max_pixels: int) -> tuple[str | None, int, str | None]:
    """(skip reason or None, byte size, re-encode reason or None): reads one image,
    checks the header's size, then decodes it fully."""
    try:
        with open(item.path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return "missing", 0, None
    except OSError:
        return "unreadable", 0, None
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
        rgb = _to_rgb(image)
    buf = io.BytesIO()
    if lossy:
        rgb.save(buf, "JPEG", quality=95)
    else:
        rgb.save(buf, "PNG")
    return buf.getvalue()


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image -> mode RGB: deep pixels scaled to 8 bits, transparency onto white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 255.0 if image.mode == "F" and pixels.max(initial=0) <= 255 else 65535.0
        image = Image.fromarray(np.clip(np.round(pixels / top * 255), 0, 255).astype(np.uint8), "L")
    if image.mode == "P" or "transparency" in image.info or image.mode in ("LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        white = Image.new("RGB", image.size, (255, 255, 255))
        white.paste(image, mask=image.getchannel("A"))
        return white
    return image.convert("RGB")


def stored_bytes(item: Item, checked: Mapping[str, tuple[int, str | None]]) -> bytes:
    """What the record stores: the original bytes, or their re-encoding when needed."""
    size, fix = checked[item.image_id]
    try:
        with open(item.path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConversionError(f"{item.path} could be read when checked but not now ({e}); "
                              "was it changed during the conversion? Run again") from e
    if len(data) != size:
        raise ConversionError(f"{item.path} changed while it was being converted; run again")
    return _reencoded(data) if fix else data
