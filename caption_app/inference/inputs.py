"""Images from outside (paths, bytes, PIL images, arrays) -> captions through a loaded captioner's functions, batch by batch.

The one way images become captions outside a graph: the Python API's
`Captioner.caption` and the `caption` command both call `caption_items`.
Encoded bytes and files go through the captioner's `serving_default` (the one
decoder of untrusted bytes, caption_app/data/image_bytes.py: the header's
declared size is checked before anything is decoded; sampling with
per-image seeds goes through `sample_captions`); pixel arrays and PIL images
through `caption_images`, which resizes them the run's way.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any

import numpy as np

from caption_app.inference.image_files import read_image_file, why_not_decoded
from caption_app.inference.settings import DecodeSettings


@dataclasses.dataclass(frozen=True)
class CaptionResult:
    """The captions of one image, best first.

    Attributes:
      captions: the K captions (empty when the image could not be captioned).
      log_probs: each caption's log-probability (<end> included).
      scores: what the search ranked by: log_prob / length ** length_normalization.
      source: the path for a file, else None.
      error: why the image could not be captioned (unreadable file, not an
        image, damaged, over the pixel limit), else None.
      attention: with attention asked for, one float32 array [words, h, w] per
        caption: for each of its words (as `captions[i].split()`), the weights
        over the backbone's h x w cells (each map sums to 1) that the search
        chose the word with; else None.
      pixels: with attention asked for, the image as the model saw it
        (uint8 [S, S, 3], resized the run's way): the maps' cells tile it.
    """

    captions: list[str]
    log_probs: list[float]
    scores: list[float]
    source: str | None = None
    error: str | None = None
    attention: list[np.ndarray] | None = None
    pixels: np.ndarray | None = None


def caption_items(functions, items: list, settings: DecodeSettings, *, batch_size: int, max_image_pixels: int,
                  max_file_bytes: int | None = None, attention: bool = False) -> list[CaptionResult]:
    """Captions `items` in batches of `batch_size`.

    Args:
      functions: a loaded captioner's functions for `settings` (`TrainedCaptioner.functions`, or an
        `ExportedCaptioner`'s): `caption_bytes(list of bytes, seeds)` and `caption_pixels(array)`.
      items: paths (str or os.PathLike), encoded bytes, PIL images or arrays (see `prepare`).
      settings: the resolved decode settings (`num_captions` captions per image).
      max_image_pixels: the pixel limit `functions` decode with (for the reason of a refused image).
      max_file_bytes: files larger than this are not read (default: image_files' default).
      attention: also each caption's attention maps (`functions` of a model with attention).
    Returns:
      A CaptionResult per item, in order.
    """
    prepared = [prepare(item, i, max_file_bytes) for i, item in enumerate(items)]  # (source, bytes | pixels | error)
    results: list[CaptionResult | None] = [None] * len(items)
    sampled = settings.strategy == "sample"
    for start in range(0, len(items), batch_size):
        chunk = range(start, min(start + batch_size, len(items)))
        encoded = [i for i in chunk if isinstance(prepared[i][1], bytes)]
        pixels = [i for i in chunk if isinstance(prepared[i][1], np.ndarray)]
        for i in chunk:
            source, value = prepared[i]
            if isinstance(value, str):
                results[i] = CaptionResult([], [], [], source, value)
        if encoded:
            data = [prepared[i][1] for i in encoded]
            out = functions.caption_bytes(data, [settings.seed] * len(data) if sampled else None,
                                          **({"attention": True} if attention else {}))
            for row, i in enumerate(encoded):
                if out["valid"][row]:
                    results[i] = _result(out, row, settings, prepared[i][0])
                else:
                    reason = why_not_decoded(data[row], max_image_pixels)
                    results[i] = CaptionResult([], [], [], prepared[i][0], f"cannot caption: {reason}")
        # Arrays of one shape go together, as they are: the graph resizes them the run's way
        # (data.preprocess), so an imported im2txt run sees im2txt's resize here too.
        by_shape: dict[tuple, list[int]] = {}
        for i in pixels:
            by_shape.setdefault(prepared[i][1].shape, []).append(i)
        for group in by_shape.values():
            out = functions.caption_pixels(np.stack([prepared[i][1] for i in group]).astype(np.float32),
                                           **({"attention": True} if attention else {}))
            for row, i in enumerate(group):
                results[i] = _result(out, row, settings, prepared[i][0])
    return results


def _result(out: dict, row: int, settings: DecodeSettings, source: str | None) -> CaptionResult:
    k = settings.num_captions
    attention = pixels = None
    if "attention" in out:  # [B, K, T, h, w]: the maps of the positions that hold a word of the text
        attention = [maps[words != b""] for maps, words in zip(out["attention"][row][:k], out["words"][row][:k])]
        pixels = out["pixels"][row]
    return CaptionResult([t.decode("utf-8") for t in out["captions"][row][:k]],
                         [float(v) for v in out["log_probs"][row][:k]],
                         [float(v) for v in out["scores"][row][:k]], source, attention=attention, pixels=pixels)


def prepare(item: Any, position: int, max_file_bytes: int | None = None) -> tuple[str | None, bytes | np.ndarray | str]:
    """One input -> (source, encoded bytes | float32 pixels [H, W, 3] | an error message).

    Raises:
      TypeError, ValueError: an input that is not an image of the kinds above.
    """
    if isinstance(item, (str, os.PathLike)):
        path = os.fspath(item)
        try:
            return path, read_image_file(path, max_file_bytes)
        except OSError as err:
            return path, f"cannot read: {err.strerror}"
    if isinstance(item, (bytes, bytearray, memoryview)):
        return None, bytes(item)
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        Image = None
    if Image is not None and isinstance(item, Image.Image):
        from caption_app.data.pil_images import to_rgb  # the converter's conversion (alpha onto white, 16-bit)

        item = np.asarray(to_rgb(item))
    if type(item).__module__.startswith("tensorflow"):
        item = item.numpy()
    if not isinstance(item, np.ndarray):
        raise TypeError(f"images[{position}]: expected a path, bytes, a PIL image or an array, "
                        f"got {type(item).__name__}")
    return None, pixels(item, position)


def pixels(array: np.ndarray, position: int) -> np.ndarray:
    """[H, W], [H, W, 1|3|4] uint8 or float 0-255 -> float32 [H, W, 3]."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4) or min(array.shape[:2]) < 1:
        raise ValueError(f"images[{position}]: an array image is [height, width, channels] with 1, 3 or 4 "
                         f"channels, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)) \
            or array.dtype == np.bool_:
        raise ValueError(f"images[{position}]: expected uint8 or float pixels, got dtype {array.dtype}")
    values = array.astype(np.float32)
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > 255:
        raise ValueError(f"images[{position}]: pixel values must be finite and within 0-255 (got "
                         f"{values.min():g} to {values.max():g}); scale 0-1 images by 255")
    if np.issubdtype(array.dtype, np.floating) and values.size and values.max() <= 1.0 and values.max() > 0:
        warnings.warn(f"images[{position}]: float pixels all within 0-1; the model reads 0-255 "
                      "(multiply by 255 if this is a 0-1 image)", stacklevel=5)
    if values.shape[-1] == 1:
        values = np.repeat(values, 3, axis=-1)
    if values.shape[-1] == 4:  # RGBA: onto white, as the converter stores transparent images
        from caption_app.data.pil_images import composite_on_white

        values = composite_on_white(values)
    return values[:, :, :3]
