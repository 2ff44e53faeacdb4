"""The one JSON writer: atomic (a temp file renamed into place), indented, newline-terminated.

A reader (TF Serving, `evaluate --watch`, a person, a resumed run) never sees
a half-written file: it sees the old one or the new one.
"""

from __future__ import annotations

import json
import os


def write_json(path: str, obj, *, sort_keys: bool = False) -> None:
    """Writes `obj` to `path` atomically, creating its folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=sort_keys)
        f.write("\n")
    os.replace(tmp, path)
