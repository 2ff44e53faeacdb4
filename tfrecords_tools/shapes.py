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

`generate_shapes` writes `raw_dir/images/*.jpg`, `raw_dir/Flickr8k.token.txt`,
`raw_dir/Flickr_8k.{train,dev,test}Images.txt` and the ground truth
`raw_dir/objects.json` (each image's objects); `convert_shapes` then converts
that dir with the Flickr8k converter, exactly like real data. A `Scenes` value
says what is drawn and how captions read: `SHAPES_SCENES` (the demo's) or
`NIGHT_SCENES` (another set, to check a preset generalizes);
`tfrecords_tools.shapes_report` scores a captioner against the ground truth.

    python -m tfrecords_tools shapes --out DIR
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
from typing import Sequence

import numpy as np
import tqdm
from PIL import Image, ImageDraw

from caption_app import io_utils
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
OBJECTS_FILE = "objects.json"  # the generator's ground truth, next to the token file


@dataclasses.dataclass(frozen=True)
class Scenes:
    """What a generated set draws and how its captions read.

    `phrase` and `plain_phrase` spell one object ({size}, {colour}, {shape});
    templates take {objects} (phrases listed left to right), {plain} (the same
    with `plain_phrase`) and {count} (`count_words`, by number of objects).
    Backgrounds are jittered by +-8 per channel and clipped to `background_range`.
    """

    shapes: tuple[str, ...] = SHAPES
    colours: tuple[tuple[str, tuple[int, int, int]], ...] = tuple(COLOURS.items())
    sizes: tuple[tuple[str, float], ...] = tuple(SIZES.items())
    held_out_pairs: tuple[tuple[str, str], ...] = HELD_OUT_PAIRS
    templates: tuple[str, ...] = TEMPLATES
    phrase: str = "{size} {colour} {shape}"
    plain_phrase: str = "{colour} {shape}"
    count_words: tuple[str, str, str] = ("one shape", "two shapes", "three shapes")
    backgrounds: tuple[tuple[int, int, int], ...] = BACKGROUNDS
    background_range: tuple[int, int] = (200, 255)
    noise_range: tuple[int, int] = (195, 255)

    def colour(self, name: str) -> tuple[int, int, int]:
        return dict(self.colours)[name]

    def size(self, name: str) -> float:
        return dict(self.sizes)[name]

    def attribute_order(self) -> tuple[str, ...]:
        """The order in which `phrase` names the attributes, e.g. ("size", "colour", "shape")."""
        return tuple(sorted(("size", "colour", "shape"), key=lambda a: self.phrase.index("{" + a + "}")))

    def to_dict(self) -> dict:
        return {"shapes": list(self.shapes), "colours": dict(self.colours), "sizes": dict(self.sizes),
                "held_out_pairs": [list(p) for p in self.held_out_pairs],
                "attribute_order": list(self.attribute_order())}


# The embedded demo set (`python -m tfrecords_tools shapes`).
SHAPES_SCENES = Scenes()
# A set drawn differently, to check that a preset generalizes instead of fitting the generator: other
# colours, shapes, sizes (three of them), dark backgrounds, another word order ("a big pink star" ->
# "a big star in pink") and other templates. bench/shapes_quality.py generates it at 96 px.
NIGHT_SCENES = Scenes(
    shapes=("ring", "star", "hexagon", "bar", "arrow"),
    colours=(("white", (245, 245, 245)), ("pink", (255, 120, 190)), ("cyan", (30, 215, 235)),
             ("lime", (150, 235, 40)), ("gold", (250, 185, 30))),
    sizes=(("tiny", 0.2), ("medium", 0.3), ("big", 0.42)),
    held_out_pairs=(("white", "star"), ("cyan", "bar")),
    templates=("{objects}", "the picture shows {objects}", "{count} on a dark background : {plain}",
               "we can see {objects} here", "{plain}"),
    phrase="{size} {shape} in {colour}",
    plain_phrase="{shape} in {colour}",
    count_words=("one object", "two objects", "three objects"),
    backgrounds=((40, 44, 60), (58, 58, 58), (36, 62, 48), (70, 52, 42)),
    background_range=(20, 90),
    noise_range=(15, 95),
)

MIN_IMAGE_SIZE = 32
# `convert_shapes` defaults (`python -m tfrecords_tools shapes`).
DEFAULT_NUM_TRAIN, DEFAULT_NUM_VAL, DEFAULT_NUM_TEST = 3000, 300, 500
DEFAULT_IMAGE_SIZE = 64
DEFAULT_SEED = 0
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_JPEG_QUALITY = 95
_IMAGE_PREFIX = "shapes_"


@dataclasses.dataclass(frozen=True)
class ShapesDirs:
    """Where `generate_shapes` wrote: the Flickr8k converter's two inputs, and the ground truth."""

    images_dir: str
    text_dir: str
    objects_file: str = ""  # OBJECTS_FILE: each image's objects, left to right (see `load_objects`)


@dataclasses.dataclass(frozen=True)
class _Object:
    size: str
    colour: str
    shape: str
    box: tuple[int, int, int]  # left, top, side in pixels


def generate_shapes(raw_dir: str | os.PathLike, *, seed: int = DEFAULT_SEED, num_train: int,
                    num_val: int, num_test: int, image_size: int = DEFAULT_IMAGE_SIZE,
                    progress: bool = False, scenes: Scenes = SHAPES_SCENES) -> ShapesDirs:
    """Writes a shapes dataset in the Flickr8k layout under `raw_dir`.

    Args:
      raw_dir: the folder to write (created; old `shapes_*.jpg` there are deleted).
      seed: same seed and sizes -> byte-identical files.
      num_train, num_val, num_test: images per split.
      image_size: image side in pixels (>= 32).
      progress: show a tqdm progress bar.
      scenes: what to draw and how captions read (default: the demo's set).

    Returns:
      The images and text folders (both inside `raw_dir`) and the ground-truth
      file `raw_dir/objects.json`: {"scenes": `Scenes.to_dict()`, "images":
      {file name: {"split", "objects": [[size, colour, shape], ...] left to right}}}.
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
    io_utils.makedirs(images_dir)
    for old in io_utils.glob(os.path.join(glob.escape(images_dir), _IMAGE_PREFIX + "*.jpg")):
        io_utils.remove(old)

    # A plain loop: ~0.6 ms an image at 64 px; threads only add GIL contention.
    jobs = [(split, i) for split, n in counts.items() for i in range(n)]
    results: list[tuple[str, list[_Object]]] = []
    for split, i in tqdm.tqdm(jobs, desc="drawing shapes", unit="img", disable=not progress):
        name = f"{_IMAGE_PREFIX}{split}_{i:05d}.jpg"
        image, objects = _make_image(seed, split, i, image_size, scenes)
        # 4:4:4 chroma keeps the small shapes' colours crisp.
        with io_utils.open(os.path.join(images_dir, name), "wb") as f:
            image.save(f, "JPEG", quality=_JPEG_QUALITY, subsampling=0)
        results.append((name, objects))

    with io_utils.open(os.path.join(raw_dir, flickr8k.TOKEN_FILE), "w") as f:
        for name, objects in results:
            for j, caption in enumerate(captions_for([(o.size, o.colour, o.shape) for o in objects], scenes)):
                f.write(f"{name}#{j}\t{caption}\n")
    start = 0
    for split, n in counts.items():
        with io_utils.open(os.path.join(raw_dir, flickr8k.SPLIT_FILES[split]), "w") as f:
            for name, _ in results[start:start + n]:
                f.write(name + "\n")
        start += n
    splits = [split for split, n in counts.items() for _ in range(n)]
    truth = {"scenes": scenes.to_dict(), "images": {
        name: {"split": split, "objects": [[o.size, o.colour, o.shape] for o in objects]}
        for (name, objects), split in zip(results, splits)}}
    objects_file = os.path.join(raw_dir, OBJECTS_FILE)
    with io_utils.open(objects_file, "w") as f:
        json.dump(truth, f)
    return ShapesDirs(images_dir=images_dir, text_dir=raw_dir, objects_file=objects_file)


def convert_shapes(out_dir: str | os.PathLike, *, raw_dir: str | os.PathLike | None = None,
                   seed: int = DEFAULT_SEED, num_train: int = DEFAULT_NUM_TRAIN,
                   num_val: int = DEFAULT_NUM_VAL, num_test: int = DEFAULT_NUM_TEST,
                   image_size: int = DEFAULT_IMAGE_SIZE, scenes: Scenes = SHAPES_SCENES,
                   **writer_kwargs) -> dict:
    """Generates a shapes dataset and converts it with the Flickr8k converter.

    Args:
      out_dir: the data dir to write.
      raw_dir: where the Flickr8k-layout files go (default `out_dir/raw`).
      seed, num_train, num_val, num_test, image_size, scenes: see `generate_shapes`.
      **writer_kwargs: passed to `writer.write_dataset` (min_word_count,
        num_workers, images_per_shard, progress, verbose, ...).

    Returns:
      The manifest dict; its "source_info" records the generator's arguments,
      the held-out pairs and where the ground truth (`OBJECTS_FILE`) is.
    """
    from tfrecords_tools import layout  # loads TensorFlow, so only when converting (see source_api)

    with layout.out_lock(out_dir, "tfrecords_tools shapes"):  # checks out_dir; held while generating too
        raw_dir = (os.fspath(raw_dir) if raw_dir is not None
                   else os.path.join(os.fspath(out_dir), layout.SHAPES_RAW_DIR))
        dirs = generate_shapes(raw_dir, seed=seed, num_train=num_train, num_val=num_val,
                               num_test=num_test, image_size=image_size,
                               progress=writer_kwargs.get("progress", True), scenes=scenes)
        source_info = {
            "raw_dir": io_utils.abspath(raw_dir), "seed": seed, "num_train": num_train,
            "num_val": num_val, "num_test": num_test, "image_size": image_size,
            "held_out_pairs": [list(p) for p in scenes.held_out_pairs],
            "objects_file": io_utils.abspath(dirs.objects_file),
        }
        return flickr8k.convert_flickr8k(dirs.images_dir, dirs.text_dir, out_dir, source="shapes",
                                         source_info=source_info, **writer_kwargs)


def objects_with_boxes(name: str, *, seed: int, image_size: int, scenes: Scenes = SHAPES_SCENES
                       ) -> list[tuple[str, str, str, tuple[int, int, int]]]:
    """The objects of the generated image file `name` (shapes_<split>_<index>.jpg), left to right,
    with where they were drawn: (size, colour, shape, (left, top, side) in pixels). `OBJECTS_FILE`
    records no places; the generator redraws the image from (seed, split, index), as it did (the
    seed and image size are the manifest's `source_info`)."""
    split, index = os.path.splitext(os.path.basename(name))[0][len(_IMAGE_PREFIX):].rsplit("_", 1)
    _, objects = _make_image(seed, split, int(index), image_size, scenes)
    return [(o.size, o.colour, o.shape, o.box) for o in objects]


def load_objects(path: str | os.PathLike) -> dict:
    """The ground truth `generate_shapes` wrote (`OBJECTS_FILE`), objects as tuples."""
    truth = io_utils.read_json(path)
    for entry in truth["images"].values():
        entry["objects"] = [tuple(o) for o in entry["objects"]]
    return truth


def captions_for(objects: Sequence[tuple[str, str, str]], scenes: Scenes = SHAPES_SCENES) -> list[str]:
    """The captions of objects given left to right as (size, colour, shape), one per template."""
    def listing(phrases: list[str]) -> str:
        if len(phrases) == 1:
            return phrases[0]
        return " , ".join(phrases[:-1]) + " and " + phrases[-1]

    def with_article(words: str) -> str:
        return ("an " if words[0] in "aeiou" else "a ") + words

    def phrases(form: str) -> str:
        return listing([with_article(form.format(size=s, colour=c, shape=sh)) for s, c, sh in objects])

    return [t.format(objects=phrases(scenes.phrase), plain=phrases(scenes.plain_phrase),
                     count=scenes.count_words[len(objects) - 1]) for t in scenes.templates]


def _make_image(seed: int, split: str, index: int, image_size: int, scenes: Scenes = SHAPES_SCENES
                ) -> tuple[Image.Image, list[_Object]]:
    """One image and its objects left to right; depends only on its arguments."""
    rng = np.random.default_rng((seed, _SPLIT_IDS[split], index))
    pairs = [(c, s) for c, _ in scenes.colours for s in scenes.shapes]
    if split == "train":
        pairs = [p for p in pairs if p not in scenes.held_out_pairs]
    count = int(rng.integers(1, 4))
    while True:  # rejection sampling; a layout is found within a few tries
        objects = _place_objects(rng, count, pairs, image_size, scenes)
        if objects:
            break
    image = _background(rng, image_size, scenes)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        _draw(draw, obj, scenes)
    objects.sort(key=lambda o: o.box[0] + o.box[2] / 2)
    return image, objects


def _place_objects(rng: np.random.Generator, count: int, pairs: list[tuple[str, str]],
                   image_size: int, scenes: Scenes = SHAPES_SCENES, tries: int = 50) -> list[_Object]:
    """`count` objects with distinct (colour, shape), boxes apart by a gap and x
    centres apart enough that "left to right" is unambiguous; [] if none found."""
    gap = max(2, image_size // 32)
    min_dx = image_size * 0.12
    chosen = rng.choice(len(pairs), size=count, replace=False)
    objects: list[_Object] = []
    for k in chosen:
        colour, shape = pairs[int(k)]
        size, fraction = scenes.sizes[int(rng.integers(len(scenes.sizes)))]
        side = round(fraction * image_size)
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


def _background(rng: np.random.Generator, image_size: int, scenes: Scenes = SHAPES_SCENES) -> Image.Image:
    """A solid colour, a vertical/horizontal gradient or noise, near `scenes.backgrounds`."""
    low, high = scenes.background_range

    def pale() -> np.ndarray:
        base = np.array(scenes.backgrounds[int(rng.integers(len(scenes.backgrounds)))], np.float32)
        return np.clip(base + rng.integers(-8, 9, size=3), low, high)

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
        pixels = np.clip(pale() + noise, *scenes.noise_range)
    return Image.fromarray(np.ascontiguousarray(pixels).round().astype(np.uint8), "RGB")


def _regular_polygon(cx: float, cy: float, radius: float, corners: int, start_degrees: float,
                     inner: float = 1.0) -> list[tuple[float, float]]:
    """Corners of a regular polygon (a star when `inner` < 1: every other corner at radius * inner)."""
    points = []
    for k in range(corners):
        angle = math.radians(start_degrees + 360.0 * k / corners)
        r = radius * (inner if k % 2 else 1.0)
        points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
    return points


def _draw(draw: ImageDraw.ImageDraw, obj: _Object, scenes: Scenes = SHAPES_SCENES) -> None:
    left, top, side = obj.box
    right, bottom = left + side - 1, top + side - 1
    cx, cy = left + (side - 1) / 2, top + (side - 1) / 2
    half = (side - 1) / 2
    fill = scenes.colour(obj.colour)
    if obj.shape in ("circle", "disc"):
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
    elif obj.shape == "ring":
        draw.ellipse((left, top, right, bottom), outline=fill, width=max(2, round(side / 5)))
    elif obj.shape == "star":
        draw.polygon(_regular_polygon(cx, cy + half * 0.1, half * 1.05, 10, -90.0, inner=0.45), fill=fill)
    elif obj.shape == "hexagon":
        draw.polygon(_regular_polygon(cx, cy, half, 6, 0.0), fill=fill)
    elif obj.shape == "bar":  # a horizontal bar, as wide as the box, 3/10 as tall
        draw.rectangle((left, round(cy - 0.15 * side), right, round(cy + 0.15 * side)), fill=fill)
    elif obj.shape == "arrow":  # pointing right: a shaft and a head
        shaft = 0.14 * side
        neck = left + 0.5 * side
        draw.rectangle((left, round(cy - shaft), round(neck), round(cy + shaft)), fill=fill)
        draw.polygon([(neck, top + 0.1 * side), (right, cy), (neck, bottom - 0.1 * side)], fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}; known: {scenes.shapes}")
