"""The base class of every error the project raises on purpose: `except CaptionAppError` catches them all.

Each subclass also derives from the built-in it always was (ValueError,
RuntimeError, ...), so code that caught those keeps working. The message says
what was wrong, with which file or value, and what to do.
"""

from __future__ import annotations


class CaptionAppError(Exception):
    """An error with a message meant for a person: a bad value, file, run dir, data dir or export."""
