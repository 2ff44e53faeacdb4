"""MS-COCO caption files as published (2014 and 2017).

`captions_{train,val}{2014,2017}.json` hold `images` (`id`, `file_name`) and
`annotations` (`image_id`, `caption`). Images are looked up by `file_name` in
each `--images` folder in turn (e.g. `train2014 val2014`); an image found in
none is reported as "missing".

Split schemes:
- `file` (default): each annotation file is one split, named after its file
  (`captions_train2014.json` -> train, `captions_val2017.json` -> val); or
  given explicitly, one `--splits` name per annotation file.
- `im2txt`: im2txt's `build_mscoco_data.py` split of COCO 2014: all of
  train2014, plus the first 85% of val2014's `images` list (in file order)
  for train, the next 5% for val and the last 10% for test (`int()` cut-offs,
  as im2txt). The same images as im2txt, so the same 586k train pairs.

    python -m tfrecords_tools coco --annotations captions_train2014.json captions_val2014.json \\
        --images train2014 val2014 --split-scheme im2txt --out DIR
"""

from __future__ import annotations

import collections
import json
import os
import re
from typing import Sequence

from caption_app import io_utils
from tfrecords_tools.source_api import ConversionError, Item, image_path, read_text

SCHEMES = ("file", "im2txt")
DEFAULT_SCHEME = "file"
IM2TXT_TRAIN_FRACTION, IM2TXT_VAL_END = 0.85, 0.90

_FILE_SPLIT = re.compile(r"(train|val|test)(\d{4})?", re.IGNORECASE)


def read_annotations(path: str | os.PathLike, image_dirs: Sequence[str | os.PathLike]
                     ) -> tuple[list[Item], dict[str, list[str]]]:
    """One COCO caption file -> items in its `images` order (+ names skipped here).

    Captions keep the annotation order. Image entries listed twice are kept
    once (the writer's "duplicate" would count them too; here the second entry
    is counted and dropped so its captions are not lost or doubled). An entry
    reusing an earlier entry's id with another file name is skipped and counted
    as "duplicate_id" (captions name their image by id, so they would be stored
    with both images). File names that are absolute or climb out of the image
    folders are "unsafe_path".

    Raises:
      ConversionError: the file is not a COCO caption file.
    """
    path = os.fspath(path)
    try:
        data = json.loads(read_text(path))
    except (OSError, ValueError, RecursionError) as e:
        raise ConversionError(f"cannot read COCO caption file {path}: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise ConversionError(
            f"{path} is not a COCO caption file: it needs 'images' (id, file_name) and 'annotations' "
            "(image_id, caption) lists, like captions_train2014.json")
    base = os.path.basename(path)
    captions: dict = collections.defaultdict(list)
    skipped: dict[str, list[str]] = collections.defaultdict(list)
    for i, ann in enumerate(data["annotations"]):
        if (not isinstance(ann, dict) or not _is_id(ann.get("image_id"))
                or not isinstance(ann.get("caption"), str)):
            skipped["bad_line"].append(f"{base}:annotations[{i}]")
            continue
        captions[ann["image_id"]].append(ann["caption"])
    items, seen = [], set()
    names_by_id: dict = {}  # image id -> the file name of its first entry
    for i, image in enumerate(data["images"]):
        if (not isinstance(image, dict) or not _is_id(image.get("id"))
                or not isinstance(image.get("file_name"), str)):
            skipped["bad_line"].append(f"{base}:images[{i}]")
            continue
        name = image["file_name"]
        if name in seen:
            skipped["duplicate"].append(f"{base}:{name}")
            continue
        first = names_by_id.setdefault(image["id"], name)
        if first != name:  # its captions would go to both images: the first entry keeps them
            skipped["duplicate_id"].append(f"{base}:id {image['id']} ({name}; kept {first})")
            continue
        seen.add(name)
        found = _find(name, image_dirs)
        if found is None:
            skipped["unsafe_path"].append(name)
            continue
        folder, found_path = found
        items.append(Item(image_id=name, path=found_path, root=folder,
                          captions=tuple(captions.get(image["id"], ()))))
    return items, dict(skipped)


def _is_id(value) -> bool:
    """COCO ids are numbers (some exports use strings); a dict or list is malformed."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _find(name: str, image_dirs: Sequence[str | os.PathLike]) -> tuple[str, str] | None:
    """(folder, path) of the first folder's file that exists (else of the first
    folder, reported "missing" by the writer); None for an unsafe name."""
    paths = [(os.fspath(d), image_path(d, name)) for d in image_dirs]
    if paths[0][1] is None:
        return None
    return next((p for p in paths if io_utils.exists(p[1])), paths[0])


def file_split(path: str | os.PathLike) -> str:
    """`captions_train2014.json` -> "train" (train, val or test in the file name)."""
    found = _FILE_SPLIT.findall(os.path.basename(os.fspath(path)))
    names = {m[0].lower() for m in found}
    if len(names) != 1:
        raise ConversionError(
            f"cannot tell the split of {path} from its name; pass one --splits name per annotation file "
            "(e.g. --splits train val) or rename it like captions_train2014.json")
    return names.pop()


def read_coco(annotation_files: Sequence[str | os.PathLike], image_dirs: Sequence[str | os.PathLike],
              *, split_scheme: str = DEFAULT_SCHEME, splits: Sequence[str] | None = None
              ) -> tuple[dict[str, list[Item]], dict[str, list[str]], dict]:
    """Reads the caption files into items per split; no image is opened.

    Args:
      annotation_files: COCO caption JSON files.
      image_dirs: folders searched for each `file_name`, in order.
      split_scheme: "file" or "im2txt" (see the module docstring).
      splits: with "file", one split name per annotation file (default: from
        the file names).

    Returns:
      (split -> items, reason -> names skipped here, facts for the manifest).
    """
    if not annotation_files:
        raise ConversionError("no --annotations file given")
    if not image_dirs:
        raise ConversionError("no --images folder given")
    for d in image_dirs:
        if not io_utils.isdir(d):
            raise ConversionError(f"image folder {d} does not exist (e.g. pass train2014 val2014)")
    if split_scheme not in SCHEMES:
        raise ConversionError(f"unknown split scheme {split_scheme!r}; choose {', '.join(SCHEMES)}")
    if split_scheme == "im2txt" and splits:
        raise ConversionError("--splits goes with --split-scheme file, not im2txt")
    if splits and len(splits) != len(annotation_files):
        raise ConversionError(f"{len(splits)} --splits names for {len(annotation_files)} "
                                     "annotation files; give one per file")
    names = list(splits) if splits else [file_split(f) for f in annotation_files]

    skipped: dict[str, list[str]] = collections.defaultdict(list)
    read = []
    for f in annotation_files:
        items, s = read_annotations(f, image_dirs)
        read.append(items)
        for reason, found in s.items():
            skipped[reason].extend(found)

    items_by_split: dict[str, list[Item]] = collections.defaultdict(list)
    info: dict = {"annotations": [io_utils.abspath(f) for f in annotation_files],
                  "images": [io_utils.abspath(d) for d in image_dirs], "split_scheme": split_scheme}
    if split_scheme == "file":
        for name, items in zip(names, read):
            items_by_split[name].extend(items)
    else:
        if sorted(names) != ["train", "val"]:
            raise ConversionError(
                "--split-scheme im2txt needs exactly the train and the val caption file of COCO 2014 "
                f"(captions_train2014.json captions_val2014.json); got splits {names} from the file names")
        train, val = read[names.index("train")], read[names.index("val")]
        train_cutoff = int(IM2TXT_TRAIN_FRACTION * len(val))
        val_cutoff = int(IM2TXT_VAL_END * len(val))
        items_by_split["train"] = train + val[:train_cutoff]
        items_by_split["val"] = val[train_cutoff:val_cutoff]
        items_by_split["test"] = val[val_cutoff:]
        info["im2txt_val_cutoffs"] = [train_cutoff, val_cutoff]
    items_by_split.setdefault("train", [])
    return dict(items_by_split), dict(skipped), info


def convert_coco(annotation_files: Sequence[str | os.PathLike], image_dirs: Sequence[str | os.PathLike],
                 out_dir: str | os.PathLike, *, split_scheme: str = DEFAULT_SCHEME,
                 splits: Sequence[str] | None = None, source: str = "coco", **writer_kwargs) -> dict:
    """Converts COCO caption files into `out_dir`; `writer_kwargs` go to `writer.write_dataset`."""
    from tfrecords_tools import writer  # loads TensorFlow, so only when converting (see source_api)

    items_by_split, skipped, info = read_coco(annotation_files, image_dirs, split_scheme=split_scheme,
                                              splits=splits)
    return writer.write_dataset(out_dir, items_by_split, source=source, extra_skipped=skipped,
                                source_info=info, **writer_kwargs)
