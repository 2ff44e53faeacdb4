"""Karpathy's split files (`dataset_coco.json`, `dataset_flickr8k.json`, `dataset_flickr30k.json`).

The splits most captioning papers report on. Each file has `images`, each with
`filename`, `split` (train, val, test or restval), `sentences` (`raw`, the
untokenized caption, is what we keep) and, in `dataset_coco.json`, `filepath`
(train2014 / val2014). Images are `IMAGES/filepath/filename` (or
`IMAGES/filename`). "restval" (the 30k COCO val2014 images outside Karpathy's
5k val and 5k test) goes to train, as in the papers that use the split
(`--restval val` or `--restval drop` if you want otherwise).

    python -m tfrecords_tools karpathy --json dataset_coco.json --images COCO_ROOT --out DIR
"""

from __future__ import annotations

import collections
import json
import os

from caption_app import io_utils
from tfrecords_tools.source_api import ConversionError, Item, image_path, read_text

SPLITS = {"train": "train", "val": "val", "test": "test"}
RESTVAL_CHOICES = ("train", "val", "drop")
DEFAULT_RESTVAL = "train"  # as the papers that use the split


def read_karpathy(json_path: str | os.PathLike, images_dir: str | os.PathLike, *, restval: str = DEFAULT_RESTVAL
                  ) -> tuple[dict[str, list[Item]], dict[str, list[str]]]:
    """Reads a Karpathy split file into items per split (file order); no image is opened.

    Returns:
      (split -> items, reason -> names skipped here: malformed entries as
      "bad_line", unknown split names as "bad_line", unsafe paths).

    Raises:
      ConversionError: the file or folder is missing or not a Karpathy file.
    """
    json_path, images_dir = os.fspath(json_path), os.fspath(images_dir)
    if restval not in RESTVAL_CHOICES:
        raise ConversionError(f"restval must be one of {RESTVAL_CHOICES}, got {restval!r}")
    if not io_utils.isdir(images_dir):
        raise ConversionError(f"image folder {images_dir} does not exist")
    try:
        data = json.loads(read_text(json_path))
    except (OSError, ValueError, RecursionError) as e:
        raise ConversionError(f"cannot read Karpathy split file {json_path}: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ConversionError(f"{json_path} is not a Karpathy split file (dataset_coco.json etc.): "
                                     "it needs an 'images' list with filename, split and sentences")
    base = os.path.basename(json_path)
    split_map = dict(SPLITS, restval=None if restval == "drop" else restval)
    items: dict[str, list[Item]] = {"train": [], "val": [], "test": []}
    skipped: dict[str, list[str]] = collections.defaultdict(list)
    for i, image in enumerate(data["images"]):
        try:
            name = image["filename"]
            split = split_map[image["split"]]
            captions = tuple(s["raw"] for s in image["sentences"])
            folder = image.get("filepath")
            if (not isinstance(name, str) or not all(isinstance(c, str) for c in captions)
                    or not isinstance(folder, (str, type(None)))):
                raise TypeError
        except (KeyError, TypeError):
            skipped["bad_line"].append(f"{base}:images[{i}]")
            continue
        if split is None:
            continue  # restval dropped on request
        relative = f"{folder}/{name}" if folder else name
        path = image_path(images_dir, relative)
        if path is None:
            skipped["unsafe_path"].append(relative)
            continue
        items[split].append(Item(image_id=relative, path=path, captions=captions, root=images_dir))
    return items, dict(skipped)


def convert_karpathy(json_path: str | os.PathLike, images_dir: str | os.PathLike, out_dir: str | os.PathLike,
                     *, restval: str = DEFAULT_RESTVAL, source: str | None = None, **writer_kwargs) -> dict:
    """Converts a Karpathy split file into `out_dir`; `writer_kwargs` go to `writer.write_dataset`."""
    from tfrecords_tools import writer  # loads TensorFlow, so only when converting (see source_api)

    items_by_split, skipped = read_karpathy(json_path, images_dir, restval=restval)
    name = os.path.splitext(os.path.basename(os.fspath(json_path)))[0]  # dataset_coco
    source = source or f"karpathy_{name.removeprefix('dataset_')}"
    info = {"json": io_utils.abspath(json_path), "images": io_utils.abspath(images_dir), "restval": restval}
    return writer.write_dataset(out_dir, items_by_split, source=source, extra_skipped=skipped,
                                source_info=info, **writer_kwargs)
