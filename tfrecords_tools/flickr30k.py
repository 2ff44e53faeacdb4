"""Flickr30k as published: `results_20130124.token` and the image folder.

The token file has the Flickr8k format (`name.jpg#i<TAB>caption`). The
release has no split, so images are split by a stable hash of the file name
(`--val-fraction`, `--test-fraction`, default 1000/31783 each, the size of
Karpathy's val and test): deterministic, independent of file order. For the
split papers report on, convert Karpathy's `dataset_flickr30k.json` instead
(`python -m tfrecords_tools karpathy`).

    python -m tfrecords_tools flickr30k --token results_20130124.token --images flickr30k-images --out DIR
"""

from __future__ import annotations

import os

from caption_app import io_utils
from tfrecords_tools import flickr8k
from tfrecords_tools.source_api import ConversionError, Item, hash_split, image_path

TOKEN_FILE = "results_20130124.token"
DEFAULT_FRACTION = 1000 / 31783


def read_flickr30k(token_path: str | os.PathLike, images_dir: str | os.PathLike, *,
                   val_fraction: float = DEFAULT_FRACTION, test_fraction: float = DEFAULT_FRACTION
                   ) -> tuple[dict[str, list[Item]], dict[str, list[str]]]:
    """Reads the token file into items per split (token-file order); no image is opened."""
    token_path, images_dir = os.fspath(token_path), os.fspath(images_dir)
    if not io_utils.isfile(token_path):
        raise ConversionError(f"token file {token_path} does not exist; pass {TOKEN_FILE} of the "
                                     "Flickr30k release")
    if not io_utils.isdir(images_dir):
        raise ConversionError(f"image folder {images_dir} does not exist (flickr30k-images)")
    captions, bad_lines = flickr8k.read_token_file(token_path)
    items: dict[str, list[Item]] = {"train": [], "val": [], "test": []}
    unsafe = []
    for name, caps in captions.items():
        path = image_path(images_dir, name)
        if path is None:
            unsafe.append(name)
            continue
        split = hash_split(name, val_fraction, test_fraction)
        items[split].append(Item(image_id=name, path=path, captions=tuple(caps), root=images_dir))
    skipped = {r: n for r, n in (("bad_line", bad_lines), ("unsafe_path", unsafe)) if n}
    return items, skipped


def convert_flickr30k(token_path: str | os.PathLike, images_dir: str | os.PathLike,
                      out_dir: str | os.PathLike, *, val_fraction: float = DEFAULT_FRACTION,
                      test_fraction: float = DEFAULT_FRACTION, **writer_kwargs) -> dict:
    """Converts Flickr30k into `out_dir`; `writer_kwargs` go to `writer.write_dataset`."""
    from tfrecords_tools import writer  # loads TensorFlow, so only when converting (see source_api)

    items_by_split, skipped = read_flickr30k(token_path, images_dir, val_fraction=val_fraction,
                                             test_fraction=test_fraction)
    info = {"token_file": io_utils.abspath(token_path), "images": io_utils.abspath(images_dir),
            "split": f"sha1 hash of the file name: val {val_fraction:.5f}, test {test_fraction:.5f}"}
    return writer.write_dataset(out_dir, items_by_split, source="flickr30k", extra_skipped=skipped,
                                source_info=info, **writer_kwargs)
