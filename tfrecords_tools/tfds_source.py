"""A dataset already prepared by tensorflow-datasets (default: `coco_captions`).

Reads `tfds.builder(name, data_dir=D).as_dataset(split)` with the image left
encoded (`tfds.decode.SkipDecoding`: the JPEG bytes TFDS stored, never
re-compressed), stages each image as a file under OUT (deleted afterwards) and
hands the items to the one writer. TFDS's `coco_captions` has Karpathy's
splits: train, restval (to train, as the papers do), val and test. This
converter never downloads: prepare the dataset first where there is internet
(`tfds build coco_captions --data_dir D`) and pass `--data-dir D`.

    python -m tfrecords_tools tfds --name coco_captions --data-dir ~/tensorflow_datasets --out DIR
"""

from __future__ import annotations

import os
from typing import Mapping

from caption_app import io_utils
from tfrecords_tools.source_api import ConversionError, Item, check_part, in_part

# coco_captions' splits; a dataset with a "validation" split gets it as val too.
DEFAULT_SPLIT_MAP = {"train": "train", "restval": "train", "val": "val", "test": "test"}
DEFAULT_NAME = "coco_captions"
# coco_captions' feature names; `captions/text` reaches into the `captions` sequence.
DEFAULT_IMAGE_KEY, DEFAULT_CAPTIONS_KEY, DEFAULT_ID_KEY = "image", "captions/text", "image/filename"


def _get(example: Mapping, key: str):
    """`example[key]`, where `captions/text` also reaches into nested dicts."""
    if key in example:
        return example[key]
    head, sep, rest = key.partition("/")
    if sep and head in example and isinstance(example[head], Mapping):
        return _get(example[head], rest)
    raise ConversionError(f"the dataset has no feature {key!r} (it has {sorted(example)}); "
                                 "pass --image-key / --captions-key / --id-key")


def _as_text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)


def convert_tfds(name: str, out_dir: str | os.PathLike, *, data_dir: str | None = None,
                 split_map: Mapping[str, str] | None = None, image_key: str = DEFAULT_IMAGE_KEY,
                 captions_key: str = DEFAULT_CAPTIONS_KEY, id_key: str = DEFAULT_ID_KEY,
                 part: tuple[int, int] | None = None, **writer_kwargs) -> dict:
    """Converts a prepared TFDS caption dataset into `out_dir`.

    Args:
      name: the TFDS name (e.g. "coco_captions", "coco_captions/2014").
      out_dir: the data dir to write.
      data_dir: TFDS's data dir (default: TFDS's own default).
      split_map: TFDS split -> our split (default: train and restval -> train,
        val (or validation) -> val, test -> test); TFDS splits not in it are left out.
      image_key, captions_key, id_key: feature names (`captions/text` reaches
        into the `captions` sequence).
      part: see `writer.write_dataset`; only this part's images are staged.
      **writer_kwargs: passed to `writer.write_dataset`.
    """
    import tensorflow_datasets as tfds  # imported here: slow, and only this source needs it

    from tfrecords_tools import layout, writer  # load TensorFlow, so only when converting (see source_api)

    given_map = split_map
    split_map = dict(split_map or DEFAULT_SPLIT_MAP)
    out_dir = os.fspath(out_dir)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # unknown names raise DatasetNotFoundError and friends
        raise ConversionError(f"tensorflow-datasets has no dataset {name!r}: {e}") from e
    known = set(builder.info.splits.keys()) if builder.info.splits else set()
    if not given_map and "validation" in known and "val" not in known:
        split_map["validation"] = "val"
    wanted = [s for s in split_map if not known or s in known]
    if known and not wanted:
        raise ConversionError(f"{name} has splits {sorted(known)}, none of which --split-map "
                                     f"maps ({sorted(split_map)})")
    if part is not None:
        check_part(*part)

    with layout.out_lock(out_dir, f"tfrecords_tools tfds {name}", part):  # checks out_dir, before any staging
        io_utils.makedirs(out_dir)
        staging = io_utils.mkdtemp(prefix=".tfds_staging-", dir=out_dir)
        try:
            items: dict[str, list[Item]] = {}
            skipped: dict[str, list[str]] = {}
            for tfds_split in wanted:
                try:
                    ds = builder.as_dataset(split=tfds_split, decoders={image_key: tfds.decode.SkipDecoding()})
                except Exception as e:  # not prepared: AssertionError / FileNotFoundError, by TFDS version
                    raise ConversionError(
                        f"cannot read split {tfds_split!r} of TFDS dataset {name} in "
                        f"{data_dir or 'the default TFDS data dir'} ({type(e).__name__}: {str(e)[:300]}). "
                        "This converter never downloads: prepare it where there is internet "
                        f"(`tfds build {name} --data_dir D`) and pass --data-dir D") from e
                ours = split_map[tfds_split]
                folder = os.path.join(staging, tfds_split)
                io_utils.makedirs(folder, exist_ok=False)
                for i, example in enumerate(tfds.as_numpy(ds)):
                    image_id = _as_text(_get(example, id_key))
                    if part is not None and not in_part(image_id, *part):
                        continue
                    image, captions = _get(example, image_key), _get(example, captions_key)
                    if isinstance(captions, (bytes, str)):
                        captions = [captions]
                    if not isinstance(image, bytes) or not all(isinstance(c, (bytes, str)) for c in captions):
                        skipped.setdefault("bad_line", []).append(f"{tfds_split}[{i}]")  # not encoded bytes + text
                        continue
                    path = os.path.join(folder, f"{i:09d}")
                    with io_utils.open(path, "wb") as f:
                        f.write(image)
                    items.setdefault(ours, []).append(
                        Item(image_id=image_id, path=path, captions=tuple(_as_text(c) for c in captions)))
            items.setdefault("train", [])
            info = {"tfds_name": name, "data_dir": data_dir, "split_map": {s: split_map[s] for s in wanted}}
            return writer.write_dataset(out_dir, items, source=f"tfds:{name}", source_info=info, part=part,
                                        extra_skipped=skipped, **writer_kwargs)
        finally:
            io_utils.rmtree(staging)
