"""The output layout of a conversion, and the order that keeps it consistent.

    OUT/{split}-NNNNN-of-MMMMM.tfrecord   shards (`records.shard_name`)
    OUT/vocab.txt                         the vocabulary
    OUT/manifest.json                     written last: a data dir without one is incomplete
    OUT/parts/part-IIIII-of-NNNNN/        one part of a many-machine conversion (+ part.json)
    OUT/inspect.html                      `tfrecords_tools inspect`'s page
    OUT/raw/                              the shapes generator's Flickr8k-layout files

    OUT/.convert.lock                     `out_lock`: held by the one conversion or merge writing
                                          into OUT (a part conversion holds .convert-part-*.lock)

A conversion never deletes what it did not write, and what it wrote is known by
content, never by a name alone: the files a manifest.json that parses as ours
lists (and the manifest and its vocabulary), the shards a part.json of ours
lists, our staging dirs. `check_out_dir` refuses an `--out` that holds anything
else, unless it is a previous conversion (our manifest or parts; its other files
are left alone) or one that stopped while moving its output in (its staging dir
is still there). A user's vocab.txt or train-00000-of-00001.tfrecord beside no
manifest of ours is refused, never replaced. The new output is built in
a hidden staging dir (`staging`) inside OUT (or OUT/parts), on the same file
system, and moved into place only when complete (`swap_in`, `swap_in_part`):
a failed conversion leaves the previous data dir as it was. Every file is
written under a `.tmp` name and renamed when complete. OUT may be a URL
(gs://, s3://, hdfs://): every file operation goes through caption_app/io_utils.py,
where a folder moves file by file (the manifest and part.json still last).
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import json
import os
import re
from typing import Iterable, Iterator, Mapping

import tensorflow as tf

from caption_app import io_utils
from caption_app.data import manifest as manifest_lib
from caption_app.data import records
from caption_app.data import vocabulary as vocab_lib
from tfrecords_tools import report
from tfrecords_tools.source_api import ConversionError

PARTS_DIR = "parts"
PART_FILE = "part.json"
HTML_FILE = "inspect.html"  # inspection.HTML_FILE (that module is not imported here)
SHAPES_RAW_DIR = "raw"
STAGING_PREFIX = ".converting-"
_OLD_PREFIX = ".replaced-"
_SHARD_NAME = re.compile(r"^\w+-\d{5}-of-\d{5}\.tfrecord$")
_PART_NAME = re.compile(r"^part-\d{5}-of-\d{5}$")
_TFDS_STAGING = ".tfds_staging-"  # tfds_source stages TFDS images here
LOCK_FILE = ".convert.lock"  # `out_lock`; a part's is .convert-part-IIIII-of-NNNNN.lock
_LOCK_NAME = re.compile(r"^\.convert(?:-part-\d{5}-of-\d{5})?\.lock$")
NUM_NAMED = 5  # entries named in a refusal


def part_dir(out_dir: str | os.PathLike, index: int, count: int) -> str:
    """`OUT/parts/part-IIIII-of-NNNNN`: where part `index` of `count` writes."""
    return os.path.join(os.fspath(out_dir), PARTS_DIR, f"part-{index:05d}-of-{count:05d}")


def is_shard_name(name: str, split: str | None = None) -> bool:
    """Whether `name` is a plain shard file name (of `split`, if given)."""
    if split is not None:
        return fnmatch.fnmatchcase(name, records.shard_pattern(split)) and bool(_SHARD_NAME.match(name))
    return bool(_SHARD_NAME.match(name))


def _is_output_name(name: str) -> bool:
    """A name a conversion writes into a data dir (or its temp name); a name alone proves nothing."""
    name = name.removesuffix(".tmp")
    return name in (manifest_lib.MANIFEST, vocab_lib.VOCAB_FILE, HTML_FILE) or is_shard_name(name)


def _read_json(path: str):
    """The JSON in regular file `path`, or None (missing, not a regular file, too large, not JSON)."""
    try:
        if io_utils.islink(path) or not io_utils.isfile(path):  # a FIFO named manifest.json must not block us
            return None
        return json.loads(io_utils.read_small_file(path, "file", limit=1 << 24))
    except (OSError, ValueError, RecursionError):
        return None


def _listed_files(splits) -> set[str] | None:
    """The shard names a manifest's or part.json's "splits" lists, or None when it is not
    split -> {"files": [plain shard names of that split]}."""
    if not isinstance(splits, dict):
        return None
    names: set[str] = set()
    for split, info in splits.items():
        files = info.get("files", []) if isinstance(info, dict) else None
        if not isinstance(files, list) or not all(isinstance(f, str) and is_shard_name(f, split) for f in files):
            return None
        names.update(files)
    return names


def our_manifest(folder: str) -> dict | None:
    """`folder/manifest.json` when it parses as one the converter wrote (caption_app/data/manifest.py's
    format: its version, source, tokenizer and splits listing plain shard names), else None."""
    raw = _read_json(os.path.join(folder, manifest_lib.MANIFEST))
    if (not isinstance(raw, dict) or raw.get("format_version") != manifest_lib.FORMAT_VERSION
            or not isinstance(raw.get("source"), str) or not isinstance(raw.get("tokenizer"), dict)
            or _listed_files(raw.get("splits")) is None):
        return None
    return raw


def _our_part(folder: str) -> dict | None:
    """`folder/part.json` when it parses as the one a part conversion wrote into this part dir."""
    match = _PART_NAME.match(os.path.basename(folder))
    raw = _read_json(os.path.join(folder, PART_FILE))
    if (not match or not isinstance(raw, dict) or raw.get("format_version") != manifest_lib.FORMAT_VERSION
            or raw.get("part") != [int(os.path.basename(folder)[5:10]), int(os.path.basename(folder)[-5:])]
            or _listed_files(raw.get("splits")) is None):
        return None
    return raw


def _manifest_files(manifest: Mapping) -> set[str]:
    """The files an (our_manifest) data dir's conversion wrote: the manifest, its vocabulary, its shards."""
    vocab_file = manifest.get("vocab_file", vocab_lib.VOCAB_FILE)
    plain = isinstance(vocab_file, str) and vocab_file == os.path.basename(vocab_file) and \
        not vocab_file.startswith(".")
    return {manifest_lib.MANIFEST} | ({vocab_file} if plain else set()) | _listed_files(manifest["splits"])


def part_files(part: Mapping) -> set[str]:
    """The files a part conversion wrote into its part dir: part.json and the shards it lists."""
    return {PART_FILE} | (_listed_files(part.get("splits")) or set())


def _is_staging_dir(folder: str, name: str) -> bool:
    path = os.path.join(folder, name)
    return name.startswith((STAGING_PREFIX, _OLD_PREFIX, _TFDS_STAGING)) and io_utils.isdir(path) \
        and not io_utils.islink(path)


def _stopped_while_moving_in(folder: str, label: str) -> bool:
    """Whether a conversion into `folder` stopped while moving its output in: its staging dir
    (`staging(folder, label)`) is still there. Then files named as outputs are that conversion's."""
    prefix = f"{STAGING_PREFIX}{label}-"
    return any(n.startswith(prefix) and _is_staging_dir(folder, n) for n in io_utils.listdir(folder))


def _is_own_entry(folder: str, name: str, outputs_too: bool) -> bool:
    """Whether `folder/name` (in OUT) is something a conversion wrote, by what it is: a lock
    file, a staging dir, parts/ holding part dirs with our part.json, the shapes raw dir; output
    names (shards, vocab.txt) only when `outputs_too` (a stopped conversion's staging dir is there)."""
    path = os.path.join(folder, name)
    if io_utils.islink(path):
        return False
    if _LOCK_NAME.match(name):
        return io_utils.isfile(path)
    if name.startswith((STAGING_PREFIX, _OLD_PREFIX, _TFDS_STAGING)):
        return io_utils.isdir(path)
    if io_utils.isdir(path):
        if name == PARTS_DIR:
            return _is_our_parts(path)
        return name == SHAPES_RAW_DIR and _is_shapes_raw(path)
    return outputs_too and _is_output_name(name)


def _is_our_parts(path: str) -> bool:
    """OUT/parts holding only part dirs that hold our part.json (or nothing yet) and staging dirs."""
    for name in io_utils.listdir(path):
        if _is_staging_dir(path, name):
            continue
        part = os.path.join(path, name)
        if not _PART_NAME.match(name) or io_utils.islink(part) or not io_utils.isdir(part):
            return False
        if _our_part(part) is None and (io_utils.listdir(part)
                                        and not _stopped_while_moving_in(path, name)):
            return False
    return True


def _is_shapes_raw(path: str) -> bool:
    """The shapes generator's raw dir: its ground truth (objects.json as the generator writes it) and
    text files, or only images/shapes_*.jpg (a generation that was stopped before its text files)."""
    text = {"Flickr8k.token.txt", "Flickr_8k.trainImages.txt", "Flickr_8k.devImages.txt",
            "Flickr_8k.testImages.txt", "objects.json"}
    names = set(io_utils.listdir(path))
    if not names <= text | {"images"}:
        return False
    images = os.path.join(path, "images")
    if io_utils.isdir(images) and not all(n.startswith("shapes_") for n in io_utils.listdir(images)):
        return False
    if names <= {"images"}:
        return True
    truth = _read_json(os.path.join(path, "objects.json"))
    return isinstance(truth, dict) and isinstance(truth.get("scenes"), dict) and isinstance(truth.get("images"), dict)


def is_previous_conversion(out_dir: str) -> bool:
    """Whether `out_dir` holds a manifest.json the converter wrote or its parts/ (by content)."""
    if our_manifest(out_dir) is not None:
        return True
    parts = os.path.join(out_dir, PARTS_DIR)
    return io_utils.isdir(parts) and not io_utils.islink(parts) and _is_our_parts(parts)


def previous_outputs(out_dir: str) -> frozenset[str]:
    """The files in `out_dir` a new conversion may replace: those of the conversion its manifest
    (ours: `our_manifest`) describes, or, with no such manifest, the output-named files of a
    conversion that stopped while moving its output in. Call it before `staging`."""
    if not io_utils.isdir(out_dir):
        return frozenset()
    manifest = our_manifest(out_dir)
    if manifest is not None:
        return frozenset(_manifest_files(manifest))
    if _stopped_while_moving_in(out_dir, "data"):
        return frozenset(n for n in io_utils.listdir(out_dir) if _is_output_name(n) and n != HTML_FILE
                         and io_utils.isfile(os.path.join(out_dir, n)))
    return frozenset()


def check_out_dir(out_dir: str | os.PathLike) -> frozenset[str]:
    """Raises ConversionError unless `out_dir` is absent, empty, a previous conversion
    (our manifest, or our parts/) or holds only what a stopped conversion leaves (our
    staging dirs and lock files). Ownership is decided by content, never by names alone:
    a user's vocab.txt or train-00000-of-00001.tfrecord beside no manifest of ours is refused.

    Returns:
      `previous_outputs(out_dir)`: the files a new conversion may replace (`swap_in`).
    """
    out_dir = os.fspath(out_dir)
    if not io_utils.lexists(out_dir):
        return frozenset()
    if not io_utils.isdir(out_dir):
        raise ConversionError(f"--out {out_dir} is a file, not a folder; pass a new folder or a data dir "
                              "to convert again")
    names = sorted(io_utils.listdir(out_dir))
    if not names or our_manifest(out_dir) is not None:
        return previous_outputs(out_dir)
    stopped = _stopped_while_moving_in(out_dir, "data")
    foreign = [n for n in names if not _is_own_entry(out_dir, n, outputs_too=stopped)]
    if foreign:
        shown = ", ".join(foreign[:NUM_NAMED]) + (f" and {len(foreign) - NUM_NAMED} more"
                                                   if len(foreign) > NUM_NAMED else "")
        raise ConversionError(f"--out {out_dir} is not empty and not a data dir of an earlier conversion "
                              f"(it holds {shown}, and no {manifest_lib.MANIFEST} the converter wrote); the "
                              "converter writes only into a new or empty folder or a data dir it wrote, and "
                              "deletes nothing it did not write, so pass another --out")
    return previous_outputs(out_dir)


def check_part_dir(target: str) -> None:
    """Raises ConversionError when an existing part dir holds files its part.json (ours) does not list."""
    if not io_utils.lexists(target):
        return
    if io_utils.islink(target) or not io_utils.isdir(target):
        raise ConversionError(f"{target} is not a folder the converter wrote; move it away and run again")
    part = _our_part(target)
    if part is not None:
        ours = part_files(part)
    elif _stopped_while_moving_in(os.path.dirname(target), os.path.basename(target)):
        ours = {n for n in io_utils.listdir(target) if n.removesuffix(".tmp") == PART_FILE or is_shard_name(
            n.removesuffix(".tmp"))}
    else:
        ours = set()
    foreign = sorted(n for n in io_utils.listdir(target) if n.removesuffix(".tmp") not in ours)
    if foreign:
        raise ConversionError(f"{target} holds files the converter did not write ({', '.join(foreign[:NUM_NAMED])}"
                              f"{'' if part is not None else f'; no {PART_FILE} of ours lists them'}); "
                              "move them away and run again")


class OutDirLocked(ConversionError):
    """Another conversion is writing into the same --out (or part of it)."""


_HELD: dict[tuple[str, str], int] = {}  # (OUT, lock file) -> depth, for the locks this process holds


@contextlib.contextmanager
def out_lock(out_dir: str | os.PathLike, command: str, part: tuple[int, int] | None = None, *,
             check: bool = True) -> Iterator[None]:
    """Holds the lock on `out_dir` (one conversion or merge at a time; with `part`, the lock of that
    part only, so parts convert side by side) while the block runs: caption_app/runs/lock.py's
    FolderLock on OUT/.convert.lock (OUT/.convert-part-IIIII-of-NNNNN.lock), naming the holder
    (pid, host, command), removed on release. Taken before anything is written: an `out_dir`
    that is not ours is refused first (`check_out_dir`; `check=False`: the caller checks what
    it reads, as merge does its parts), so no lock file goes into it. Nested calls in one
    process (shapes -> writer) take it once.

    Raises:
      OutDirLocked: another process holds it (one line naming it); nothing was touched.
      ConversionError: `out_dir` is not a folder the converter may write into.
    """
    from caption_app.runs.lock import FolderLock  # no TensorFlow there

    out_dir = os.fspath(out_dir)
    lock_file = LOCK_FILE if part is None else f".convert-part-{part[0]:05d}-of-{part[1]:05d}.lock"
    key = (io_utils.abspath(out_dir), lock_file)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    if check:
        check_out_dir(out_dir)
    io_utils.makedirs(out_dir)
    what = "--out" if part is None else f"part {part[0]} of {part[1]} in --out"
    lock = FolderLock(out_dir, command, lock_file=lock_file, what=what, error=OutDirLocked, remove_on_release=True,
                      advice="one conversion (or merge) at a time may write there. Wait for it to finish (or "
                             "stop it), or pass another --out").acquire()
    _HELD[key] = 1
    try:
        yield
    finally:
        del _HELD[key]
        lock.release()


@contextlib.contextmanager
def staging(parent: str, label: str) -> Iterator[str]:
    """A hidden, empty dir inside `parent` to build the new output in (same file
    system, so `swap_in` renames); deleted with whatever is left in it, on failure too.
    Stale staging dirs of the same `label` (left by a killed run) are deleted first:
    hold `out_lock`, so none of them is another conversion's live one."""
    io_utils.makedirs(parent)
    prefix = f"{STAGING_PREFIX}{label}-"
    for stale in io_utils.glob(os.path.join(glob.escape(parent), glob.escape(prefix) + "*")):
        if io_utils.isdir(stale) and not io_utils.islink(stale):
            io_utils.rmtree(stale)
    stage = io_utils.mkdtemp(prefix=prefix, dir=parent)
    try:
        yield stage
    finally:
        io_utils.rmtree(stage)


def swap_in(stage: str, out_dir: str, previous: Iterable[str]) -> None:
    """Moves a complete new data dir from `stage` into `out_dir`.

    `previous` (from `check_out_dir` / `previous_outputs`, taken before the staging dir
    existed) names the files of the earlier conversion: the old manifest is deleted first
    (a data dir without one reads as incomplete), then the rest of them; the new shards
    and vocabulary move in, the manifest last. Nothing else in `out_dir` is touched: a new
    file whose name is taken by a file the converter did not write is a ConversionError,
    raised before anything is deleted.
    """
    previous = set(previous)
    new = sorted(io_utils.listdir(stage), key=lambda n: n == manifest_lib.MANIFEST)  # the manifest last
    taken = [n for n in new if n not in previous and io_utils.lexists(os.path.join(out_dir, n))]
    if taken:
        raise ConversionError(f"--out {out_dir} holds {', '.join(taken[:NUM_NAMED])}, which the converter did "
                              "not write (no manifest of its lists it) and the new data dir would replace; move "
                              "it away and run again")
    for name in sorted(previous, key=lambda n: n != manifest_lib.MANIFEST):  # the manifest first
        path = os.path.join(out_dir, name)
        if io_utils.lexists(path) and not io_utils.isdir(path):
            io_utils.remove(path)
    for name in new:
        io_utils.replace(os.path.join(stage, name), os.path.join(out_dir, name))


def swap_in_part(stage: str, target: str) -> None:
    """Replaces the part dir `target` (our files only, `check_part_dir`) by `stage`."""
    old = None
    if io_utils.lexists(target):
        old = io_utils.mkdtemp(prefix=_OLD_PREFIX, dir=os.path.dirname(target))
        io_utils.replace(target, os.path.join(old, "part"))
    io_utils.replace(stage, target, last=(PART_FILE,))
    if old:
        io_utils.rmtree(old)


def remove_own(folder: str, names: Iterable[str] = ()) -> None:
    """Deletes the files `names` (what a conversion wrote into `folder`, known from its content:
    `part_files`), then `folder` if that emptied it."""
    for name in names:
        path = os.path.join(folder, name)
        if io_utils.lexists(path) and not io_utils.isdir(path):
            io_utils.remove(path)
    with contextlib.suppress(OSError):
        io_utils.rmdir(folder)


def write_shard(path: str, serialized: Iterable[bytes]) -> None:
    """Writes `path` under a temporary name, renamed only when complete."""
    tmp = path + ".tmp"
    try:
        with tf.io.TFRecordWriter(tmp) as writer:
            for record in serialized:
                writer.write(record)
        io_utils.replace(tmp, path)
    except BaseException:
        if io_utils.exists(tmp):
            io_utils.remove(tmp)
        raise


def link_or_copy(src: str, dst: str) -> None:
    """Hard-links `src` to `dst` (copies across file systems), under a temporary name first."""
    tmp = dst + ".tmp"
    if io_utils.lexists(tmp):
        io_utils.remove(tmp)
    try:
        if io_utils.is_remote(src) or io_utils.is_remote(dst):
            raise OSError("no hard links on a URL")
        os.link(src, tmp)
    except OSError:  # another file system, or links not allowed
        io_utils.copyfile(src, tmp)
    io_utils.replace(tmp, dst)


def write_vocab_and_manifest(out_dir: str, converted: Mapping, *, source: str,
                             settings: vocab_lib.TokenizerSettings, min_word_count: int,
                             images_per_shard: int, source_info: dict,
                             merged_parts: int | None = None, vocab_from: str | None = None) -> dict:
    """Writes `vocab.txt` and, last, `manifest.json` for shards already in `out_dir`.

    The vocabulary is built from the train word counts (`min_word_count`), or
    is the file `vocab_from` (`--vocab`, e.g. an imported run's vocab.txt): its
    ids are kept and words not in it map to `<unk>` when the data is read.
    """
    if vocab_from is not None:
        vocab = load_given_vocab(vocab_from)
    else:
        vocab = vocab_lib.Vocabulary.build(converted["train_counts"], min_word_count)
    vocab_file = os.path.basename(vocab_lib.vocab_path(out_dir))
    vocab.save(os.path.join(out_dir, vocab_file))
    manifest = manifest_lib.write(
        out_dir, source=source, splits=converted["splits"], tokenizer=settings, vocab_size=vocab.size,
        vocab_file=vocab_file, min_word_count=min_word_count,
        max_caption_words=converted["max_caption_words"],
        max_captions_per_image=converted["max_captions_per_image"], images_per_shard=images_per_shard,
        skipped=converted["skipped"].to_dict(), reencoded=converted["reencoded"].to_dict(),
        source_info=source_info, merged_parts=merged_parts, caption_cap=converted["caption_cap"].to_dict(),
        vocab_from=vocab_from,
        train_longest_caption_words=converted.get("train_longest_caption_words"))
    return manifest


def load_given_vocab(path: str) -> vocab_lib.Vocabulary:
    """The vocabulary file given with `--vocab`; ConversionError naming it when it does not load."""
    try:
        return vocab_lib.Vocabulary.load(path)
    except (OSError, ValueError) as err:
        raise ConversionError(f"--vocab {path}: {err} (give a vocab.txt written by this project: a data "
                              "dir's or a run dir's)") from None
