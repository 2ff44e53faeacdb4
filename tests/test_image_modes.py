"""The same pixels in training, serving and the API for every image mode the converter accepts.

For each mode the training pixels are what the converter stored, decoded as the training pipeline
decodes them. The same file is then captioned's way: its bytes through `decode_images` (what
`serving_default`, `caption` and `Captioner.caption` of a path or bytes run: one decoder of
untrusted bytes), and as a PIL image or an array through the Python API's input path
(`inference.inputs.prepare`, then the graph's resize). All must agree within JPEG tolerance.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from caption_app.data.image_bytes import decode_images
from caption_app.data.pipeline import decode_image, png_has_alpha, resize_image
from caption_app.inference.inputs import prepare
from tests.conftest import read_records
from tfrecords_tools.__main__ import main as convert_main

SIZE = 24  # the model's image size here; the images are 32 x 24, so every path resizes


def _pixels(seed: int) -> np.ndarray:
    """Blocks of colour (they survive JPEG), [24, 32, 3] uint8."""
    rng = np.random.default_rng(seed)
    return np.kron(rng.integers(0, 256, (3, 4, 3)), np.ones((8, 8, 1))).astype(np.uint8)


def _images() -> dict[str, tuple[Image.Image, str, dict]]:
    """mode name -> (PIL image, format, save options)."""
    rgb = _pixels(1)
    alpha = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (24, 1))
    palette = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16)
    deep = Image.fromarray((rgb[:, :, 0].astype(np.uint16) * 257).astype("<u2"))  # I;16
    assert deep.mode == "I;16"
    return {
        "RGBA": (Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), "PNG", {}),
        "LA": (Image.fromarray(np.dstack([rgb[:, :, 1], alpha]), "LA"), "PNG", {}),
        "P": (palette, "PNG", {}),
        "P with transparency": (palette, "PNG", {"transparency": 0}),
        "I;16": (deep, "PNG", {}),
        "CMYK": (Image.fromarray(rgb).convert("CMYK"), "JPEG", {"quality": 95}),
        "L": (Image.fromarray(rgb[:, :, 2], "L"), "PNG", {}),
        "RGB": (Image.fromarray(rgb), "JPEG", {"quality": 95}),
    }


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Each mode's file, converted by the converter: {mode: (file bytes, the PIL image as saved, training pixels)}."""
    base = tmp_path_factory.mktemp("modes")
    lines, files = [], {}
    for i, (name, (image, fmt, options)) in enumerate(_images().items()):
        path = base / "images" / f"{i}.{fmt.lower()}"
        path.parent.mkdir(exist_ok=True)
        image.save(path, fmt, **options)
        files[name] = path
        lines.append(json.dumps({"image": f"images/{path.name}", "captions": ["a picture"], "split": "train"}))
    (base / "captions.jsonl").write_text("\n".join(lines) + "\n")
    assert convert_main(["jsonl", "--file", str(base / "captions.jsonl"), "--out", str(base / "data"),
                         "--min-word-count", "1"]) == 0
    stored = {r["image_id"]: r["encoded"] for r in read_records(base / "data", "train")}
    out = {}
    for name, path in files.items():
        (encoded,) = [v for k, v in stored.items() if k.endswith(path.name)]
        training = decode_image(tf.constant(encoded), SIZE).numpy()
        with Image.open(path) as reopened:
            reopened.load()
            out[name] = (path.read_bytes(), reopened.copy(), training)
    return out


@pytest.mark.parametrize("mode", list(_images()))
def test_served_bytes_and_api_images_give_the_training_pixels(converted, mode):
    data, image, training = converted[mode]
    # serving_default, caption and Captioner.caption of a path or bytes: the one bounded decoder.
    served, index = decode_images(tf.constant([data]), SIZE)
    assert index.numpy().tolist() == [0], mode
    _close(served.numpy()[0], training, mode, f"{mode} served")
    # Captioner.caption of a PIL image, and of its pixels as an array (RGBA arrays included).
    for item in (image, np.asarray(image) if image.mode in ("RGBA", "L", "RGB") else None):
        if item is None:
            continue
        _, pixels = prepare(item, 0)
        api = resize_image(tf.constant(pixels[None]), SIZE).numpy()[0]
        _close(api, training, mode, f"{mode} via {type(item).__name__}")


def _close(got: np.ndarray, training: np.ndarray, mode: str, what: str) -> None:
    """Lossless files: every pixel within rounding (an alpha composite in float vs PIL's integer one).
    JPEG files: another decoder (PIL's vs TensorFlow's; a CMYK file is stored re-encoded as RGB) differs
    at colour edges by chroma upsampling, so within JPEG tolerance on average. Training pixels are far
    from what an ignored alpha or a clipped 16-bit image gives (tens of levels on average)."""
    diff = np.abs(got - training)
    if mode in ("CMYK", "RGB"):
        assert diff.mean() <= 3.0, (what, diff.mean(), diff.max())
    else:
        assert diff.max() <= 1.0, (what, diff.mean(), diff.max())


def test_transparency_is_read_from_the_header_not_from_a_4_channel_decode():
    """TensorFlow's 4-channel decode of a 16-colour palette PNG without tRNS says alpha 15, not opaque."""
    image = _images()["P"][0]
    plain, keyed = io.BytesIO(), io.BytesIO()
    image.save(plain, "PNG")
    image.save(keyed, "PNG", transparency=0)
    assert set(np.unique(tf.io.decode_png(plain.getvalue(), channels=4).numpy()[:, :, 3])) != {255}
    flags = [bool(png_has_alpha(tf.constant(d))) for d in (plain.getvalue(), keyed.getvalue(), b"", b"\x89PNG")]
    assert flags == [False, True, False, False]
