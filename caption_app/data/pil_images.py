"""Any PIL image -> the 8-bit RGB pixels training sees: the converter, the Python API and serving agree on them.

The converter stores images TensorFlow would decode wrongly re-encoded through
`to_rgb` (tfrecords_tools/images.py); the Python API turns PIL images into
pixels through it too; and the in-graph decoder of image bytes
(`pipeline.decode_image`) composites a PNG's transparency onto white the same
way, so a transparent, palette, grey+alpha or 16-bit image gives the same
pixels (to rounding) in training, in `serving_default`, in `caption` and in
`Captioner.caption`.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

DEEP_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
ALPHA_MODES = ("LA", "PA", "RGBa", "La")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image -> mode RGB: deep pixels scaled to 8 bits, transparency composited onto white."""
    if image.mode in DEEP_MODES:
        pixels = np.asarray(image, dtype=np.float64)
        top = 255.0 if image.mode == "F" and pixels.max(initial=0) <= 255 else 65535.0
        image = Image.fromarray(np.clip(np.round(pixels / top * 255), 0, 255).astype(np.uint8), "L")
    if image.mode == "P" or "transparency" in image.info or image.mode in ALPHA_MODES:
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        white = Image.new("RGB", image.size, (255, 255, 255))
        white.paste(image, mask=image.getchannel("A"))
        return white
    return image.convert("RGB")


def composite_on_white(pixels: np.ndarray) -> np.ndarray:
    """[H, W, 4] 0-255 (RGBA) -> [H, W, 3] float32: the colour weighted by alpha over white, as `to_rgb`."""
    pixels = pixels.astype(np.float32)
    alpha = pixels[:, :, 3:] / 255.0
    return pixels[:, :, :3] * alpha + 255.0 * (1.0 - alpha)
