"""The one atomic file writer, shared by caption_app, export and tfrecords_tools.

A reader never sees half a file: each write goes to `PATH.tmp`, renamed over
`PATH` only when complete.
"""

from __future__ import annotations

import json
import os


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes `text` (UTF-8) to `path` under a temporary name, renamed when complete.

    The folder is created if missing.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json_atomic(path: str | os.PathLike, obj, *, sort_keys: bool = False) -> None:
    """Writes `obj` as JSON (indent 2, a final newline) to `path`, atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n")
