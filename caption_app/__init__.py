"""Show and Tell image captioning on Keras 3 / TensorFlow 2.

The Python API (caption_app/api.py), importable from here:

    from caption_app import Captioner
    captioner = Captioner.load("runs/mine")      # a run dir, or an exported SavedModel version dir
    captioner.caption(["dog.jpg", pil_image])[0].captions

and the pieces of a `model.fit` of your own: `load_config`, `make_datasets`,
`build_model`, `caption_loss`. They load lazily: `import caption_app` does
not import TensorFlow (the command-line tools' `--help` stays instant).
(`caption_app.model.show_and_tell.Captioner` is the model's inference view
that the API wraps; it keeps its name there and is not exported here.)
"""

from __future__ import annotations

import importlib

_DISTRIBUTION = "show-and-tell-keras"
_API = ("Captioner", "CaptionResult", "load_config", "make_datasets", "TrainingData", "build_model",
        "caption_loss")
__all__ = [*_API, "__version__"]


def _version() -> str:
    """pyproject.toml's version: read from the source checkout this package sits in, else the
    installed distribution's metadata (pyproject is the one place it is written)."""
    import os

    pyproject = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyproject.toml")
    if os.path.isfile(pyproject):
        import tomllib

        with open(pyproject, "rb") as f:
            project = tomllib.load(f).get("project", {})
        if project.get("name") == _DISTRIBUTION and "version" in project:
            return project["version"]
    from importlib import metadata

    try:
        return metadata.version(_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "0+unknown"


__version__ = _version()


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module("caption_app.api"), name)
    raise AttributeError(f"module 'caption_app' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API])
