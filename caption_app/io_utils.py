"""File operations on any file system, and the one atomic file writer.

Data dirs, run dirs and export dirs may be local paths or TensorFlow file
system URLs (`gs://`, `s3://` with tensorflow-io's plugin, `hdfs://`, the
in-memory `ram://` the tests use). Every file operation on them goes through
these helpers: a local path keeps the `os`/`shutil` behaviour (symlink and
FIFO checks, atomic directory renames), a URL goes through `tf.io.gfile`
(TensorFlow is imported only then). `os.path.join`, `dirname` and `basename`
work on URLs as they are; `abspath` and `normpath` do not (`abspath` here
leaves a URL alone).

A reader never sees half a file: each write goes to `PATH.tmp`, renamed over
`PATH` only when complete (on object stores a rename is a copy and a delete,
still complete before the final name exists).
"""

from __future__ import annotations

import builtins
import functools
import glob as glob_lib
import json
import os
import re
import shutil
import stat
import tempfile
import uuid

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_URL_ROOT = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/{0,2}$")  # os.path.dirname("ram://x") is "ram:"


# Schemes TensorFlow itself does not serve (since 2.6): tensorflow-io's plugins register them on import.
_PLUGIN_SCHEMES = frozenset({"s3", "hdfs", "viewfs", "har", "az", "http", "https"})


def is_remote(path: str | os.PathLike) -> bool:
    """Whether `path` is a file system URL (`gs://...`), served by tf.io.gfile, rather than a local path.

    The first s3://, hdfs://, az:// ... URL loads tensorflow-io's file system plugins.

    Raises:
      OSError: such a URL while tensorflow-io is not installed (what to install).
    """
    match = _URL.match(os.fspath(path))
    if match and match.group(1).lower() in _PLUGIN_SCHEMES:
        _load_plugins(match.group(1).lower())
    return bool(match)


@functools.lru_cache(maxsize=None)
def _load_plugins(scheme: str) -> None:
    try:
        import tensorflow_io  # noqa: F401 (registers s3, hdfs, az, http with TensorFlow)
    except ImportError:
        raise OSError(f"{scheme}:// paths need tensorflow-io's file system plugins, which are not installed: "
                      "pip install tensorflow-io (a release built for your TensorFlow version), or use a "
                      "local path or gs://") from None


def _gfile():
    import tensorflow as tf  # only for URLs: local file operations never load TensorFlow

    return tf.io.gfile


def abspath(path: str | os.PathLike) -> str:
    """os.path.abspath for a local path; a URL as it is (abspath would make `gs://b` into `CWD/gs:/b`)."""
    path = os.fspath(path)
    return path if is_remote(path) else os.path.abspath(path)


def exists(path: str | os.PathLike) -> bool:
    path = os.fspath(path)
    return _gfile().exists(path) if is_remote(path) else os.path.exists(path)


def lexists(path: str | os.PathLike) -> bool:
    """exists, without following a final symlink (URLs have no symlinks)."""
    path = os.fspath(path)
    return _gfile().exists(path) if is_remote(path) else os.path.lexists(path)


def _remote_is_directory(path: str) -> bool | None:
    """Whether URL `path` is a folder (None: nothing there). Asked of stat, not isdir: TensorFlow's
    ram:// calls any prefix of a file name a folder, `ckpt-1` of `ckpt-1.index` too."""
    gfile = _gfile()
    if not gfile.exists(path):
        return None
    try:
        return gfile.stat(path).is_directory
    except Exception:  # tf.errors.OpError: a file system without stat for folders
        return gfile.isdir(path)


def isdir(path: str | os.PathLike) -> bool:
    path = os.fspath(path)
    return bool(_remote_is_directory(path)) if is_remote(path) else os.path.isdir(path)


def isfile(path: str | os.PathLike) -> bool:
    path = os.fspath(path)
    return _remote_is_directory(path) is False if is_remote(path) else os.path.isfile(path)


def islink(path: str | os.PathLike) -> bool:
    path = os.fspath(path)
    return False if is_remote(path) else os.path.islink(path)


def listdir(path: str | os.PathLike) -> list[str]:
    """The names in folder `path` (a URL's subfolders without their trailing slash)."""
    path = os.fspath(path)
    if is_remote(path):
        return [name.rstrip("/") for name in _gfile().listdir(path)]
    return os.listdir(path)


def getsize(path: str | os.PathLike) -> int:
    path = os.fspath(path)
    return _gfile().stat(path).length if is_remote(path) else os.path.getsize(path)


def getmtime(path: str | os.PathLike) -> float:
    path = os.fspath(path)
    return _gfile().stat(path).mtime_nsec / 1e9 if is_remote(path) else os.path.getmtime(path)


def glob(pattern: str) -> list[str]:
    return _gfile().glob(pattern) if is_remote(pattern) else glob_lib.glob(pattern)


def makedirs(path: str | os.PathLike, exist_ok: bool = True) -> None:
    path = os.fspath(path)
    if _URL_ROOT.match(path):  # the root of a URL's file system: nothing to make (never a local "gs:")
        return
    if not is_remote(path):
        os.makedirs(path, exist_ok=exist_ok)
    elif not exist_ok and _gfile().exists(path):
        raise FileExistsError(path)
    else:
        _gfile().makedirs(path)


def mkdtemp(prefix: str, dir: str) -> str:
    """A new, empty folder named `prefix` + random characters inside `dir`."""
    if not is_remote(dir):
        return tempfile.mkdtemp(prefix=prefix, dir=dir)
    path = os.path.join(dir, prefix + uuid.uuid4().hex[:8])
    _gfile().makedirs(path)
    return path


def remove(path: str | os.PathLike) -> None:
    path = os.fspath(path)
    if is_remote(path):
        _gfile().remove(path)
    else:
        os.remove(path)


def rmdir(path: str | os.PathLike) -> None:
    """Removes an empty folder (OSError when it is not empty)."""
    path = os.fspath(path)
    if not is_remote(path):
        os.rmdir(path)
    elif _gfile().listdir(path):
        raise OSError(f"{path} is not empty")
    else:
        _gfile().rmtree(path)


def rmtree(path: str | os.PathLike) -> None:
    """Deletes folder `path` and everything in it; errors ignored (a cleanup)."""
    path = os.fspath(path)
    if not is_remote(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    try:
        if _gfile().exists(path):
            _gfile().rmtree(path)
    except Exception:  # tf.errors.OpError: a cleanup never hides the error that caused it
        pass


def replace(src: str, dst: str, *, last: tuple[str, ...] = ()) -> None:
    """Moves file or folder `src` to `dst`, replacing a file `dst`.

    Locally one atomic os.replace. On a URL a folder is moved file by file
    (object stores have no folders to rename), files named in `last` after all
    the others, so a reader that looks for them finds everything else in place.
    """
    if not is_remote(src):
        os.replace(src, dst)
        return
    gfile = _gfile()
    if not isdir(src):
        gfile.rename(src, dst, overwrite=True)
        return
    files = [os.path.join(root, name)[len(src):].lstrip("/")
             for root, _, names in gfile.walk(src) for name in names
             if isfile(os.path.join(root, name))]  # ram:// also lists `a/.x` for a file `a.x/y`
    gfile.makedirs(dst)
    for rel in sorted(files, key=lambda r: (os.path.basename(r) in last, r)):
        gfile.makedirs(os.path.dirname(os.path.join(dst, rel)))
        gfile.rename(os.path.join(src, rel), os.path.join(dst, rel), overwrite=True)
    rmtree(src)  # what is left: empty folders (on an object store, nothing)


def copyfile(src: str, dst: str) -> None:
    if is_remote(src) or is_remote(dst):
        _gfile().copy(src, dst, overwrite=True)
    else:
        shutil.copyfile(src, dst)


def open(path: str | os.PathLike, mode: str = "r", encoding: str = "utf-8"):  # noqa: A001 (the builtin's name)
    """A file object: builtins.open locally (text in `encoding`), tf.io.gfile.GFile on a URL (UTF-8)."""
    path = os.fspath(path)
    if is_remote(path):
        return _gfile().GFile(path, mode)
    return builtins.open(path, mode) if "b" in mode else builtins.open(path, mode, encoding=encoding)


def read_bytes(path: str | os.PathLike) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# Image files read by the converters and by `caption` / the Python API: larger ones are refused after a
# stat, before any byte is read (`--max-file-bytes`, `max_file_bytes=`).
DEFAULT_MAX_IMAGE_FILE_BYTES = 64 * 1024 * 1024
# The one pixel limit (width x height) of images from outside: the converters skip larger ones
# (`--max-pixels`), `serving_default`, `caption` and the Python API do not decode them
# (`--max-image-pixels`); each reads the declared size from the header first.
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000

SMALL_FILE_LIMIT = 64 << 20  # vocabularies and word-count files: COCO's is ~100 KB


def read_small_file(path: str | os.PathLike, what: str, limit: int = SMALL_FILE_LIMIT) -> bytes:
    """The bytes of a small text file given from outside (a vocabulary, word counts).

    Raises:
      ValueError: one line naming `what` and `path` when it is not a regular file (a FIFO,
        /dev/zero, a folder) or is larger than `limit`, so nothing reads without end.
      OSError: when it cannot be read.
    """
    path = os.fspath(path)
    if is_remote(path):
        size = _gfile().stat(path).length
    else:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{what} {path} is not a regular file (a FIFO, device or folder)")
        size = info.st_size
    if size > limit:
        raise ValueError(f"{what} {path} is {size} bytes, over the {limit} a {what} can be")
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:  # grew while read
        raise ValueError(f"{what} {path} is over the {limit} bytes a {what} can be")
    return data


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes `text` (UTF-8) to `path` under a temporary name, renamed when complete.

    The folder is created if missing.
    """
    _write_atomic(path, text, "w")


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """`write_text_atomic` for bytes."""
    _write_atomic(path, data, "wb")


def _write_atomic(path, content, mode: str) -> None:
    path = os.fspath(path)
    makedirs(os.path.dirname(abspath(path)))
    tmp = path + ".tmp"
    with open(tmp, mode) as f:
        f.write(content)
    replace(tmp, path)


def write_json_atomic(path: str | os.PathLike, obj, *, sort_keys: bool = False) -> None:
    """Writes `obj` as JSON (indent 2, a final newline) to `path`, atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n")


def read_json(path: str | os.PathLike):
    with open(path) as f:
        return json.load(f)
