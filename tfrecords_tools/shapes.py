"""The embedded synthetic "shapes" dataset, written in the Flickr8k layout.

Each image holds 1-3 non-overlapping objects, each a (size, colour, shape) out
of `SIZES` x `COLOURS` x `SHAPES`, on a light background (solid, gradient or
noise) no object colour can be confused with. Its 5 captions come from the 5
`TEMPLATES` and name the objects left to right (by x centre), e.g.

    a large red circle and a small blue square
    two shapes : a large red circle and a small blue square
    a red circle and a blue square
    there is a large red circle and a small blue square in the picture
    a picture of a large red circle and a small blue square

Train images never contain a `HELD_OUT_PAIRS` (colour, shape) pair; val and
test images draw from all pairs, so test captions measure composition (each
colour and each shape of a held-out pair is seen in train, never together).

`generate_shapes` writes `raw_dir/images/*.jpg`, `raw_dir/Flickr8k.token.txt`
and `raw_dir/Flickr_8k.{train,dev,test}Images.txt`; `convert_shapes` then
converts that dir with the Flickr8k converter, exactly like real data.

    python -m tfrecords_tools shapes --out DIR
"""

from __future__ import annotations

import dataclasses
import glob
import os
from typing import Sequence

import numpy as np
import tqdm
from PIL import Image, ImageDraw

from tfrecords_tools import flickr8k
from tfrecords_tools.source_api import ConversionError

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLOURS = {  # saturated, far from each other and from the pale backgrounds
    "red": (215, 25, 25),
    "green": (25, 150, 40),
    "blue": (30, 70, 225),
    "yellow": (245, 215, 0),
    "purple": (135, 35, 170),
    "orange": (255, 135, 0),
}
SIZES = {"small": 0.22, "large": 0.40}  # object side as a fraction of the image side
# (colour, shape) pairs train images never show: 3 of the 30.
HELD_OUT_PAIRS = (("red", "triangle"), ("blue", "circle"), ("yellow", "diamond"))
# Captions of an image, in this order. {objects}: "a large red circle and a small blue
# square"; {plain}: the same without sizes; {count}: "one shape" / "two shapes" / ...
TEMPLATES = (
    "{objects}",
    "{count} : {objects}",
    "{plain}",
    "there is {objects} in the picture",
    "a picture of {objects}",
)
# Pale backgrounds (each channel >= 200, jittered); see `_background`.
BACKGROUNDS = (
    (245, 245, 245), (222, 222, 222), (212, 226, 236), (240, 231, 212),
    (220, 234, 220), (232, 226, 242),
)

MIN_IMAGE_SIZE = 32
# `convert_shapes` defaults (`python -m tfrecords_tools shapes`).
DEFAULT_NUM_TRAIN, DEFAULT_NUM_VAL, DEFAULT_NUM_TEST = 3000, 300, 500
DEFAULT_IMAGE_SIZE = 64
DEFAULT_SEED = 0
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_COUNT_WORDS = {1: "one shape", 2: "two shapes", 3: "three shapes"}
_JPEG_QUALITY = 95
_IMAGE_PREFIX = "shapes_"


@dataclasses.dataclass(frozen=True)
class ShapesDirs:
    """Where `generate_shapes` wrote: the Flickr8k converter's two inputs."""

    images_dir: str
    text_dir: str


@dataclasses.dataclass(frozen=True)
class _Object:
    size: str
    colour: str
    shape: str
    box: tuple[int, int, int]  # left, top, side in pixels


def generate_shapes(raw_dir: str | os.PathLike, *, seed: int = DEFAULT_SEED, num_train: int,
                    num_val: int, num_test: int, image_size: int = DEFAULT_IMAGE_SIZE,
                    progress: bool = False) -> ShapesDirs:
    """Writes a shapes dataset in the Flickr8k layout under `raw_dir`.

    Args:
      raw_dir: the folder to write (created; old `shapes_*.jpg` there are deleted).
      seed: same seed and sizes -> byte-identical files.
      num_train, num_val, num_test: images per split.
      image_size: image side in pixels (>= 32).
      progress: show a tqdm progress bar.

    Returns:
      The images and text folders (both inside `raw_dir`).
    """
    counts = {"train": num_train, "val": num_val, "test": num_test}
    for split, n in counts.items():
        if n < 0:
            raise ConversionError(f"num_{split} must be >= 0, got {n}")
    if num_train < 1:
        raise ConversionError("num_train must be >= 1: the vocabulary is built from train")
    if image_size < MIN_IMAGE_SIZE:
        raise ConversionError(f"image_size must be >= {MIN_IMAGE_SIZE} pixels, got {image_size}")

    raw_dir = os.fspath(raw_dir)
    images_dir = os.path.join(raw_dir, "images")
    os.makedirs(images_dir, exist_ok=True)
    for old in glob.glob(os.path.join(glob.escape(images_dir), _IMAGE_PREFIX + "*.jpg")):
        os.remove(old)

    # A plain loop: ~0.6 ms an image at 64 px; threads only add GIL contention.
    jobs = [(split, i) for split, n in counts.items() for i in range(n)]
    results: list[tuple[str, list[str]]] = []
    for split, i in tqdm.tqdm(jobs, desc="drawing shapes", unit="img", disable=not progress):
        name = f"{_IMAGE_PREFIX}{split}_{i:05d}.jpg"
        image, captions = _make_image(seed, split, i, image_size)
        # 4:4:4 chroma keeps the small shapes' colours crisp.
        image.save(os.path.join(images_dir, name), "JPEG", quality=_JPEG_QUALITY, subsampling=0)
        results.append((name, captions))

    with open(os.path.join(raw_dir, flickr8k.TOKEN_FILE), "w", encoding="utf-8") as f:
        for name, captions in results:
            for j, caption in enumerate(captions):
                f.write(f"{name}#{j}\t{caption}\n")
    start = 0
    for split, n in counts.items():
        with open(os.path.join(raw_dir, flickr8k.SPLIT_FILES[split]), "w", encoding="utf-8") as f:
            for name, _ in results[start:start + n]:
                f.write(name + "\n")
        start += n
    return ShapesDirs(images_dir=images_dir, text_dir=raw_dir)


def convert_shapes(out_dir: str | os.PathLike, *, raw_dir: str | os.PathLike | None = None,
                   seed: int = DEFAULT_SEED, num_train: int = DEFAULT_NUM_TRAIN,
                   num_val: int = DEFAULT_NUM_VAL, num_test: int = DEFAULT_NUM_TEST,
                   image_size: int = DEFAULT_IMAGE_SIZE, **writer_kwargs) -> dict:
    """Generates a shapes dataset and converts it with the Flickr8k converter.

    Args:
      out_dir: the data dir to write.
      raw_dir: where the Flickr8k-layout files go (default `out_dir/raw`).
      seed, num_train, num_val, num_test, image_size: see `generate_shapes`.
      **writer_kwargs: passed to `writer.write_dataset` (min_word_count,
        num_workers, images_per_shard, progress, verbose, ...).

    Returns:
      The manifest dict; its "source_info" records the generator's arguments and
      `HELD_OUT_PAIRS`.
    """
    from tfrecords_tools import layout  # loads TensorFlow, so only when converting (see source_api)

    layout.check_out_dir(out_dir)  # before anything is generated into it
    raw_dir = (os.fspath(raw_dir) if raw_dir is not None
               else os.path.join(os.fspath(out_dir), layout.SHAPES_RAW_DIR))
    dirs = generate_shapes(raw_dir, seed=seed, num_train=num_train, num_val=num_val,
                           num_test=num_test, image_size=image_size,
                           progress=writer_kwargs.get("progress", True))
    source_info = {
        "raw_dir": os.path.abspath(raw_dir), "seed": seed, "num_train": num_train,
        "num_val": num_val, "num_test": num_test, "image_size": image_size,
        "held_out_pairs": [list(p) for p in HELD_OUT_PAIRS],
    }
    return flickr8k.convert_flickr8k(dirs.images_dir, dirs.text_dir, out_dir, source="shapes",
                                     source_info=source_info, **writer_kwargs)


def captions_for(objects: Sequence[tuple[str, str, str]]) -> list[str]:
    """The 5 captions of objects given left to right as (size, colour, shape)."""
    def listing(phrases: list[str]) -> str:
        if len(phrases) == 1:
            return phrases[0]
        return " , ".join(phrases[:-1]) + " and " + phrases[-1]

    def with_article(words: str) -> str:
        return ("an " if words[0] in "aeiou" else "a ") + words

    objects_text = listing([with_article(f"{s} {c} {sh}") for s, c, sh in objects])
    plain_text = listing([with_article(f"{c} {sh}") for _, c, sh in objects])
    return [t.format(objects=objects_text, plain=plain_text, count=_COUNT_WORDS[len(objects)])
            for t in TEMPLATES]


def _make_image(seed: int, split: str, index: int, image_size: int
                ) -> tuple[Image.Image, list[str]]:
    """One image and its captions; depends only on its arguments."""
    rng = np.random.default_rng((seed, _SPLIT_IDS[split], index))
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    if split == "train":
        pairs = [p for p in pairs if p not in HELD_OUT_PAIRS]
    count = int(rng.integers(1, 4))
    while True:  # rejection sampling; a layout is found within a few tries
        objects = _place_objects(rng, count, pairs, image_size)
        if objects:
            break
    image = _background(rng, image_size)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        _draw(draw, obj)
    objects.sort(key=lambda o: o.box[0] + o.box[2] / 2)
    return image, captions_for([(o.size, o.colour, o.shape) for o in objects])


def _place_objects(rng: np.random.Generator, count: int, pairs: list[tuple[str, str]],
                   image_size: int, tries: int = 50) -> list[_Object]:
    """`count` objects with distinct (colour, shape), boxes apart by a gap and x
    centres apart enough that "left to right" is unambiguous; [] if none found."""
    gap = max(2, image_size // 32)
    min_dx = image_size * 0.12
    chosen = rng.choice(len(pairs), size=count, replace=False)
    objects: list[_Object] = []
    for k in chosen:
        colour, shape = pairs[int(k)]
        size = ("small", "large")[int(rng.integers(2))]
        side = round(SIZES[size] * image_size)
        for _ in range(tries):
            left = int(rng.integers(1, image_size - side))
            top = int(rng.integers(1, image_size - side))
            cx = left + side / 2
            if all(abs(cx - (o.box[0] + o.box[2] / 2)) >= min_dx and _apart(
                    (left, top, side), o.box, gap) for o in objects):
                objects.append(_Object(size, colour, shape, (left, top, side)))
                break
        else:
            return []
    return objects


def _apart(a: tuple[int, int, int], b: tuple[int, int, int], gap: int) -> bool:
    return (a[0] + a[2] + gap <= b[0] or b[0] + b[2] + gap <= a[0]
            or a[1] + a[2] + gap <= b[1] or b[1] + b[2] + gap <= a[1])


def _background(rng: np.random.Generator, image_size: int) -> Image.Image:
    """A pale solid colour, a pale vertical/horizontal gradient or pale noise."""
    def pale() -> np.ndarray:
        base = np.array(BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], np.float32)
        return np.clip(base + rng.integers(-8, 9, size=3), 200, 255)

    kind = int(rng.integers(3))
    if kind == 0:
        pixels = np.broadcast_to(pale(), (image_size, image_size, 3))
    elif kind == 1:
        ramp = np.linspace(0.0, 1.0, image_size, dtype=np.float32)[:, None, None]
        pixels = pale() * (1 - ramp) + pale() * ramp  # [size, 1, 3]
        pixels = np.broadcast_to(pixels, (image_size, image_size, 3))
        if rng.integers(2):
            pixels = pixels.transpose(1, 0, 2)
    else:
        noise = rng.normal(0.0, 6.0, size=(image_size, image_size, 1))
        pixels = np.clip(pale() + noise, 195, 255)
    return Image.fromarray(np.ascontiguousarray(pixels).round().astype(np.uint8), "RGB")


def _draw(draw: ImageDraw.ImageDraw, obj: _Object) -> None:
    left, top, side = obj.box
    right, bottom = left + side - 1, top + side - 1
    cx, cy = left + (side - 1) / 2, top + (side - 1) / 2
    fill = COLOURS[obj.colour]
    if obj.shape == "circle":
        draw.ellipse((left, top, right, bottom), fill=fill)
    elif obj.shape == "square":
        draw.rectangle((left, top, right, bottom), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(cx, top), (right, bottom), (left, bottom)], fill=fill)
    elif obj.shape == "diamond":
        draw.polygon([(cx, top), (right, cy), (cx, bottom), (left, cy)], fill=fill)
    elif obj.shape == "cross":
        arm = side / 6  # half the bar width: bars a third of the side
        draw.rectangle((left, round(cy - arm), right, round(cy + arm)), fill=fill)
        draw.rectangle((round(cx - arm), top, round(cx + arm), bottom), fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}; known: {SHAPES}")
