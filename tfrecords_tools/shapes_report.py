"""How right a captioner is about a generated shapes set, from the generator's ground truth.

    python -m tfrecords_tools.shapes_report RUN_DIR_OR_CAPTIONS_JSON --objects DATA/raw/objects.json

reads an evaluation's captions file (`caption_app evaluate` writes
RUN/eval/<split>-<checkpoint>.json; given a run dir, the newest one is read)
and the objects each image really holds (`shapes.OBJECTS_FILE`, written by the
generator), and prints:

* per number of objects, the fraction of images whose caption names exactly
  the right objects, left to right (colour and shape of each; its size too
  when the caption names sizes, as all templates but the plain one do);
  images showing a held-out (colour, shape) pair are counted apart;
* per attribute (size, colour, shape) the accuracy over all objects and the
  most frequent confusions (true -> said; "-" when the caption names no
  object there, or no such attribute);
* the held-out pairs: how often such an object is named right;
* distinct generated captions against distinct true object sets (collapse).

Only the generated side is read from text: a caption's attribute words,
in order, are grouped into objects by the set's attribute order.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import json
import os
import sys
from typing import Sequence

from caption_app import io_utils
from tfrecords_tools import shapes as shapes_lib

ATTRIBUTES = ("size", "colour", "shape")
MISSING = "-"


def parse_objects(caption: str, scenes: dict) -> list[dict[str, str]]:
    """The objects a caption names, left to right: [{"size"?, "colour"?, "shape"?}, ...].

    Attribute words are read in order; a word starts a new object when its
    attribute is not later in `scenes["attribute_order"]` than every attribute
    the current object already has ("a large red circle and a small blue
    square" -> 2 objects; "a red and a blue square" -> {red}, {blue, square}).
    """
    objects: list[dict[str, str]] = []
    for _, attribute, word, phrase in attribute_words(caption.split(), scenes):
        if phrase == len(objects):
            objects.append({})
        objects[phrase][attribute] = word
    return objects


def attribute_words(words: Sequence[str], scenes: dict) -> list[tuple[int, str, str, int]]:
    """The attribute words of a caption's words, grouped as `parse_objects` groups them:
    [(position, attribute, word, object index), ...]."""
    kinds = {}
    for attribute, names in (("size", scenes["sizes"]), ("colour", scenes["colours"]),
                             ("shape", scenes["shapes"])):
        kinds.update({w: attribute for w in names})
    order = {a: i for i, a in enumerate(scenes["attribute_order"])}
    found: list[tuple[int, str, str, int]] = []
    current: set[str] = set()
    for position, word in enumerate(words):
        attribute = kinds.get(word)
        if attribute is None:
            continue
        if not found or any(order[a] >= order[attribute] for a in current):
            current = set()
        current.add(attribute)
        found.append((position, attribute, word, found[-1][3] + (len(current) == 1) if found else 0))
    return found


def object_right(said: dict[str, str] | None, true: Sequence[str]) -> bool:
    """Colour and shape named and right; size right or not named."""
    if said is None:
        return False
    size, colour, shape = true
    return said.get("colour") == colour and said.get("shape") == shape and said.get("size", size) == size


def caption_right(said: list[dict[str, str]], true: Sequence[Sequence[str]]) -> bool:
    return len(said) == len(true) and all(object_right(s, t) for s, t in zip(said, true))


@dataclasses.dataclass
class Report:
    """Counts of one evaluation against the ground truth (see `score`)."""

    # number of objects -> [images exactly right, images]; `held_out` for images with a held-out pair
    seen: dict[int, list[int]] = dataclasses.field(default_factory=dict)
    held_out: dict[int, list[int]] = dataclasses.field(default_factory=dict)
    # attribute -> [right, objects]; sizes only over objects whose caption names a size
    attribute: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    confusions: dict[str, collections.Counter] = dataclasses.field(default_factory=dict)
    held_out_objects: list[int] = dataclasses.field(default_factory=lambda: [0, 0])  # [named right, objects]
    distinct_captions: int = 0
    distinct_object_sets: int = 0
    images: int = 0
    missing: int = 0  # images of the captions file absent from the ground truth

    def fraction(self, counts: Sequence[int]) -> float:
        return counts[0] / counts[1] if counts[1] else float("nan")

    def all_right(self) -> list[int]:
        right = sum(v[0] for d in (self.seen, self.held_out) for v in d.values())
        return [right, sum(v[1] for d in (self.seen, self.held_out) for v in d.values())]

    def summary(self) -> dict:
        """The headline numbers (fractions), as the issue's targets name them."""
        return {
            "single_seen_right": self.fraction(self.seen.get(1, [0, 0])),
            "all_right": self.fraction(self.all_right()),
            "held_out_named_right": self.fraction(self.held_out_objects),
            **{f"{a}_accuracy": self.fraction(self.attribute.get(a, [0, 0])) for a in ATTRIBUTES},
            "distinct_ratio": (self.distinct_captions / self.distinct_object_sets
                               if self.distinct_object_sets else float("nan")),
        }


def score(captions: dict[str, str], truth: dict) -> Report:
    """Scores generated captions {image file name: caption} against `shapes.load_objects(...)`."""
    scenes = truth["scenes"]
    held_out = {tuple(p) for p in scenes["held_out_pairs"]}
    report = Report(attribute={a: [0, 0] for a in ATTRIBUTES},
                    confusions={a: collections.Counter() for a in ATTRIBUTES})
    object_sets = set()
    for name, caption in captions.items():
        entry = truth["images"].get(os.path.basename(name))
        if entry is None:
            report.missing += 1
            continue
        true = entry["objects"]
        said = parse_objects(caption, scenes)
        report.images += 1
        object_sets.add(tuple(tuple(o) for o in true))
        has_held_out = any((c, s) in held_out for _, c, s in true)
        counts = (report.held_out if has_held_out else report.seen).setdefault(len(true), [0, 0])
        counts[0] += caption_right(said, true)
        counts[1] += 1
        for i, obj in enumerate(true):
            got = said[i] if i < len(said) else {}
            for attribute, value in zip(ATTRIBUTES, obj):
                named = got.get(attribute, MISSING)
                if attribute == "size" and got and named == MISSING:
                    continue  # a caption without sizes (the plain template) says nothing wrong about them
                report.attribute[attribute][0] += named == value
                report.attribute[attribute][1] += 1
                if named != value:
                    report.confusions[attribute][(value, named)] += 1
            if (obj[1], obj[2]) in held_out:
                report.held_out_objects[0] += object_right(said[i] if i < len(said) else None, obj)
                report.held_out_objects[1] += 1
    report.distinct_captions = len({c for n, c in captions.items()
                                    if os.path.basename(n) in truth["images"]})
    report.distinct_object_sets = len(object_sets)
    return report


@dataclasses.dataclass(frozen=True)
class Look:
    """Where one colour or shape word of a generated caption looked (its attention map), against the
    object the word names (or, for a word naming nothing in the image, the object nearest its peak).

    Attributes:
      attribute: "colour" or "shape".
      named: an object in the image has the word's colour (shape); False: the word is wrong.
      held_out: the object shows a held-out (colour, shape) pair.
      objects: objects in the image.
      on_object: the map's peak cell (the cell holding most weight) overlaps the object's box.
      nearest: of the image's objects, this one is nearest the peak cell's centre.
      mass: the map's weight on the object's box (each cell's weight times the share of the cell
        the box covers).
      cells: the share of cells that overlap the box (`on_object`'s chance level for a random peak).
      area: the box's share of the image (`mass`'s chance level for a uniform map).
    """

    attribute: str
    named: bool
    held_out: bool
    objects: int
    on_object: bool
    nearest: bool
    mass: float
    cells: float
    area: float


def attention_looks(words: Sequence[str], maps, objects: Sequence, image_size: int,
                    scenes: dict) -> tuple[list[Look], list[bool]]:
    """Where each colour and shape word of a caption looked, and whether the objects it left out were looked at.

    Args:
      words: the caption's words; maps: float [words, h, w], word t's attention over the cells
        (row-major tiles of the image); objects: the image's (size, colour, shape, (left, top,
        side)) left to right (`shapes.objects_with_boxes`).
    Returns:
      (a `Look` per colour and shape word, and for each object no phrase names by its colour and
      shape when the caption names fewer objects than there are: whether some word's peak cell
      overlaps it). A word's object: the one with its phrase's colour and shape, else the only
      one with the word's colour (shape), else, of several, the one at the phrase's place left to
      right (or the first); for a word naming nothing in the image, the object nearest its peak.
    """
    import numpy as np

    maps = np.asarray(maps, np.float64)
    held_out = {tuple(p) for p in scenes["held_out_pairs"]}
    phrases = parse_objects(" ".join(words), scenes)
    grid_h, grid_w = maps.shape[1:]
    cell_h, cell_w = image_size / grid_h, image_size / grid_w

    def overlap(box):  # [h, w]: the share of each cell the box covers
        left, top, side = box
        ys = np.clip(np.minimum(top + side, (np.arange(grid_h) + 1) * cell_h)
                     - np.maximum(top, np.arange(grid_h) * cell_h), 0, None)
        xs = np.clip(np.minimum(left + side, (np.arange(grid_w) + 1) * cell_w)
                     - np.maximum(left, np.arange(grid_w) * cell_w), 0, None)
        return ys[:, None] * xs[None, :] / (cell_h * cell_w)

    def distance(point, box):  # from a point (y, x) to a box
        left, top, side = box
        dy = max(top - point[0], 0.0, point[0] - (top + side))
        dx = max(left - point[1], 0.0, point[1] - (left + side))
        return (dy * dy + dx * dx) ** 0.5

    def peak(weights):  # the peak cell and its centre (y, x)
        cell = np.unravel_index(int(np.argmax(weights)), weights.shape)
        return cell, ((cell[0] + 0.5) * cell_h, (cell[1] + 0.5) * cell_w)

    looks = []
    for position, attribute, word, phrase in attribute_words(words, scenes):
        if attribute == "size":
            continue
        said = phrases[phrase]
        index = 1 if attribute == "colour" else 2
        exact = [o for o in objects if (o[1], o[2]) == (said.get("colour"), said.get("shape"))]
        candidates = exact or [o for o in objects if o[index] == word]
        weights = maps[position]
        cell, centre = peak(weights)
        closest = min(objects, key=lambda o: distance(centre, o[3]))
        target = (closest if not candidates else exact[0] if len(exact) == 1 else candidates[0]
                  if len(candidates) == 1 else next((o for o in candidates if objects.index(o) == phrase),
                                                    candidates[0]))
        covered = overlap(target[3])
        looks.append(Look(
            attribute=attribute, named=bool(candidates), held_out=(target[1], target[2]) in held_out,
            objects=len(objects), on_object=bool(covered[cell] > 0),
            nearest=distance(centre, target[3]) <= distance(centre, closest[3]),
            mass=float((weights * covered).sum()), cells=float((covered > 0).mean()),
            area=target[3][2] ** 2 / image_size ** 2))
    omitted = []
    if len(phrases) < len(objects):
        named = {(p.get("colour"), p.get("shape")) for p in phrases}
        peaks = [peak(maps[t])[0] for t in range(len(words))]
        omitted = [any(overlap(o[3])[c] > 0 for c in peaks) for o in objects if (o[1], o[2]) not in named]
    return looks, omitted


def format_looks(looks: Sequence[Look], omitted: Sequence[bool]) -> str:
    """A table of `Look`s of words naming an object in the image (per attribute, seen pairs |
    held-out pairs), then the wrong words and the objects left out."""
    def mean(values):
        values = list(values)
        return 100 * sum(values) / max(len(values), 1)

    lines = ["word    pairs     words  peak on object (chance)  nearest object, 2-3 objects (chance)  "
             "weight on object (box area)"]
    for attribute in ("colour", "shape"):
        for held, name in ((False, "seen"), (True, "held-out")):
            group = [x for x in looks if x.named and x.attribute == attribute and x.held_out == held]
            if not group:
                continue
            many = [x for x in group if x.objects > 1]
            lines.append(
                f"{attribute:<7} {name:<9} {len(group):>5}  {mean(x.on_object for x in group):5.1f}% "
                f"({mean(x.cells for x in group):4.1f}%)          "
                f"{mean(x.nearest for x in many):5.1f}% of {len(many):>4} ({mean(1 / x.objects for x in many):4.1f}%)"
                f"                 {mean(x.mass for x in group):5.1f}% ({mean(x.area for x in group):4.1f}%)")
    wrong = [x for x in looks if not x.named]
    lines.append(f"colour and shape words naming nothing in the image: {len(wrong)}; their peak on an object: "
                 f"{sum(x.on_object for x in wrong)} (on a held-out pair's: "
                 f"{sum(x.on_object and x.held_out for x in wrong)})")
    lines.append(f"objects left out of a caption: {len(omitted)}; under some word's peak: {sum(omitted)}")
    return "\n".join(lines)


def format_report(report: Report, top: int = 4) -> str:
    lines = []
    lines.append(f"{report.images} images; exactly right, by number of objects (seen pairs | with a held-out pair):")
    for n in sorted(set(report.seen) | set(report.held_out)):
        def cell(counts):
            return f"{counts[0]:4d}/{counts[1]:<4d} {100 * report.fraction(counts):5.1f}%" if counts else " " * 16
        lines.append(f"  {n} object{'s' if n > 1 else ' '}  {cell(report.seen.get(n))} | "
                     f"{cell(report.held_out.get(n))}")
    right = report.all_right()
    lines.append(f"  all       {right[0]:4d}/{right[1]:<4d} {100 * report.fraction(right):5.1f}%")
    lines.append("attribute accuracy over objects (top confusions, true -> said):")
    for a in ATTRIBUTES:
        counts = report.attribute[a]
        worst = ", ".join(f"{t}->{s} {k}" for (t, s), k in report.confusions[a].most_common(top))
        lines.append(f"  {a:<7} {counts[0]:4d}/{counts[1]:<4d} {100 * report.fraction(counts):5.1f}%"
                     f"{'  ' + worst if worst else ''}")
    h = report.held_out_objects
    lines.append(f"held-out pairs named right: {h[0]}/{h[1]} ({100 * report.fraction(h):.1f}%)")
    lines.append(f"distinct captions: {report.distinct_captions} for {report.distinct_object_sets} distinct "
                 f"object sets ({100 * report.summary()['distinct_ratio']:.1f}%)")
    if report.missing:
        lines.append(f"note: {report.missing} captioned images are not in the ground truth (another data set?)")
    return "\n".join(lines)


def captions_file(path: str, split: str = "test") -> str:
    """`path` itself, or a run dir's newest RUN/eval/<split>-*.json."""
    if io_utils.isfile(path):
        return path
    found = io_utils.glob(os.path.join(glob.escape(path), "eval", f"{split}-*.json"))
    if not found:
        raise FileNotFoundError(f"no evaluation of split {split!r} in {path}/eval: run "
                                f"`python -m caption_app evaluate --run-dir {path} --split {split}` first")
    return max(found, key=io_utils.getmtime)


def load_captions(path: str) -> dict[str, str]:
    """{image id: generated caption} of an evaluation's captions file."""
    details = io_utils.read_json(path)
    return {k: v["generated"] for k, v in details["captions"].items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tfrecords_tools.shapes_report", description=__doc__.split("\n")[0])
    p.add_argument("captions", help="a run dir (its newest eval/<split>-*.json) or an evaluation's captions file")
    p.add_argument("--objects", required=True, help=f"the generator's ground truth ({shapes_lib.OBJECTS_FILE})")
    p.add_argument("--split", default="test", help="with a run dir: the evaluated split (default test)")
    p.add_argument("--json", action="store_true", help="print the headline numbers as JSON instead")
    args = p.parse_args(argv)
    try:
        path = captions_file(args.captions, args.split)
        report = score(load_captions(path), shapes_lib.load_objects(args.objects))
    except (OSError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.summary()))
    else:
        print(f"captions: {path}\n{format_report(report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
