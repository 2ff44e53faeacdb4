"""Attention maps as pictures: one map per word over the backbone's h x w cells, drawn over the image.

The one drawing of "where the model looked", used by `evaluate`'s report (a
tiny PNG per word that the browser stretches smoothly over the thumbnail,
caption_app/html_report.py) and by `caption --attention DIR` (one PNG per
image: the words in a strip, each over the image, caption_app/inference/image_files.py).

A map is shown by its shade: each cell is darkened by `DIM * (1 - weight /
the map's largest weight)`, so the cell the word looked at most shows the
image as it is and cells it ignored fade to black; the maps are upsampled
bilinearly (cell centres are the samples), with the cell grid drawn faintly.
No TensorFlow here.
"""

from __future__ import annotations

import base64
import io
from typing import Sequence

import numpy as np

DIM = 0.8  # how dark the cells a word ignored become (0: not at all, 1: black)
TILE = 128  # pixels: the side of each word's picture in `strip_png`
_CAPTION_HEIGHT = 16  # pixels under each tile for its word


def shade(weights: np.ndarray) -> np.ndarray:
    """A map [h, w] of weights (>= 0) -> how much to darken each cell, float32 [h, w] in [0, DIM]."""
    weights = np.asarray(weights, np.float32)
    peak = float(weights.max()) if weights.size else 0.0
    if peak <= 0:
        return np.full(weights.shape, DIM, np.float32)
    return (DIM * (1.0 - weights / peak)).astype(np.float32)


def map_png_uri(weights: np.ndarray) -> str:
    """A map [h, w] -> a `data:image/png;base64,...` URI of an h x w black image whose alpha is the
    shade: laid over the image and stretched (a browser smooths it), it darkens what the word ignored."""
    from PIL import Image

    alpha = np.round(shade(weights) * 255).astype(np.uint8)
    rgba = np.zeros(alpha.shape + (4,), np.uint8)
    rgba[..., 3] = alpha
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, "PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def overlay(pixels: np.ndarray, weights: np.ndarray, side: int = TILE) -> np.ndarray:
    """The image [S, S, 3] uint8 scaled to side x side, darkened by the map [h, w] upsampled
    bilinearly, with the cell grid drawn faintly -> uint8 [side, side, 3]."""
    from PIL import Image

    image = np.asarray(Image.fromarray(pixels).resize((side, side), Image.Resampling.BILINEAR), np.float32)
    grid_h, grid_w = weights.shape
    dark = np.asarray(Image.fromarray(shade(weights), "F").resize((side, side), Image.Resampling.BILINEAR))
    out = image * (1.0 - dark[:, :, None])
    for i in range(1, grid_h):  # faint lines between the cells
        out[round(i * side / grid_h), :] = out[round(i * side / grid_h), :] * 0.6 + 255 * 0.4
    for j in range(1, grid_w):
        out[:, round(j * side / grid_w)] = out[:, round(j * side / grid_w)] * 0.6 + 255 * 0.4
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def strip_png(pixels: np.ndarray, words: Sequence[str], maps: np.ndarray, side: int = TILE) -> bytes:
    """The image [S, S, 3] uint8 and its caption's words with their maps [words, h, w] -> the bytes of
    one PNG: the words left to right, each its `overlay` with the word written under it (an empty
    caption gives the image alone, captioned "(empty caption)")."""
    from PIL import Image, ImageDraw

    if len(words) != len(maps):
        raise ValueError(f"{len(words)} words but {len(maps)} attention maps")
    tiles = [overlay(pixels, m, side) for m in maps] or [
        np.asarray(Image.fromarray(pixels).resize((side, side), Image.Resampling.BILINEAR))]
    labels = list(words) or ["(empty caption)"]
    strip = Image.new("RGB", (side * len(tiles), side + _CAPTION_HEIGHT), "white")
    draw = ImageDraw.Draw(strip)
    for i, (tile, word) in enumerate(zip(tiles, labels)):
        strip.paste(Image.fromarray(tile), (i * side, 0))
        draw.text((i * side + 3, side + 2), word, fill="black")
    buffer = io.BytesIO()
    strip.save(buffer, "PNG")
    return buffer.getvalue()
