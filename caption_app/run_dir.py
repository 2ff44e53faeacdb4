"""A run dir: config, architecture fingerprint, vocabulary, checkpoints, logs.

    RUN/config.json        the resolved config
    RUN/fingerprint.json   what the checkpoints' variables depend on
    RUN/vocab.txt          copy of the data dir's vocabulary
    RUN/manifest.json      copy of the data dir's manifest (+ "data_dir")
    RUN/shapes.json        image size, captions per image, caption length
    RUN/checkpoints/       tf.train checkpoints (model, optimizer, epoch)
    RUN/backup/            the latest mid-epoch backup (train.backup_every_steps)
    RUN/logs/              TensorBoard
    RUN/state.json         {"epochs_done": n, "total_epochs": m, "finished": bool}

A run dir knows its architecture: training into one whose checkpoints belong
to another architecture stops before anything is written, naming both.
Everything downstream (evaluate, caption, export) reads only the run dir.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import tensorflow as tf

from caption_app import config as config_lib
from caption_app.config import Config
from caption_app.data import manifest as manifest_lib
from caption_app.data.pipeline import Shapes
from caption_app.data.vocabulary import Vocabulary
from caption_app.model import show_and_tell

CONFIG = "config.json"
FINGERPRINT = "fingerprint.json"
VOCAB = "vocab.txt"
SHAPES = "shapes.json"
STATE = "state.json"
CHECKPOINTS = "checkpoints"
BACKUP = "backup"
LOGS = "logs"


class ArchitectureMismatch(RuntimeError):
    """The run dir's checkpoints were trained with another architecture."""


def fingerprint(config: Config, vocab: Vocabulary, shapes: Shapes) -> dict:
    """Everything that decides the names and shapes of the checkpoint's variables."""
    vocab_hash = hashlib.sha1("\n".join(vocab.tokens).encode("utf-8")).hexdigest()[:16]
    return {
        "backbone": config.model.backbone,
        "image_size": shapes.image_size,
        "embedding_size": config.model.embedding_size,
        "lstm_units": config.model.lstm_units,
        "vocab_size": vocab.size,
        "vocab_sha1": vocab_hash,
        # Only when on, so that the run dirs of before the option keep their fingerprint.
        **({"image_every_step": True} if config.model.image_every_step else {}),
    }


def _describe(fp: dict) -> str:
    return ", ".join(f"{k}={fp.get(k)}" for k in ("backbone", "image_size", "embedding_size", "lstm_units",
                                                  "vocab_size", "vocab_sha1"))


def has_checkpoint(run_dir: str) -> bool:
    return tf.train.latest_checkpoint(os.path.join(run_dir, CHECKPOINTS)) is not None


def has_backup(run_dir: str) -> bool:
    return tf.train.latest_checkpoint(os.path.join(run_dir, BACKUP)) is not None


def check_compatible(run_dir: str, new: dict) -> None:
    """Raises ArchitectureMismatch when `run_dir` holds another architecture.

    Reads only; call it before writing anything into the run dir.
    """
    path = os.path.join(run_dir, FINGERPRINT)
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old != new:
            diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
            raise ArchitectureMismatch(
                f"run dir {run_dir} holds checkpoints of another architecture "
                f"(differs in {', '.join(diff)}).\n"
                f"  run dir:  {_describe(old)}\n"
                f"  this run: {_describe(new)}\n"
                "Nothing was changed. Train into a new --run-dir, or use the run dir's own settings.")
    elif has_checkpoint(run_dir) or has_backup(run_dir):
        raise ArchitectureMismatch(
            f"run dir {run_dir} has checkpoints but no {FINGERPRINT}, so their architecture is unknown; "
            f"this run is {_describe(new)}. Nothing was changed. Use a new --run-dir.")


def prepare(run_dir: str, config: Config, manifest: manifest_lib.Manifest, vocab: Vocabulary,
            shapes: Shapes) -> None:
    """Writes the run dir's description (after check_compatible passed)."""
    os.makedirs(run_dir, exist_ok=True)
    _write_json(os.path.join(run_dir, FINGERPRINT), fingerprint(config, vocab, shapes))
    config_lib.save(config, os.path.join(run_dir, CONFIG))
    shutil.copyfile(manifest.vocab_path, os.path.join(run_dir, VOCAB))
    _write_json(os.path.join(run_dir, manifest_lib.MANIFEST),
                {**manifest.raw, "data_dir": os.path.abspath(manifest.data_dir)})
    _write_json(os.path.join(run_dir, SHAPES), {"image_size": shapes.image_size,
                                                "num_captions": shapes.num_captions,
                                                "caption_length": shapes.caption_length})


def _write_json(path: str, obj: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def write_state(run_dir: str, epochs_done: int, total_epochs: int, finished: bool) -> None:
    _write_json(os.path.join(run_dir, STATE), {"epochs_done": epochs_done, "total_epochs": total_epochs,
                                               "finished": finished})


def read_state(run_dir: str) -> dict:
    path = os.path.join(run_dir, STATE)
    if not os.path.exists(path):
        return {"epochs_done": 0, "total_epochs": None, "finished": False}
    with open(path) as f:
        return json.load(f)


def load_config(run_dir: str) -> Config:
    path = os.path.join(run_dir, CONFIG)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{run_dir} is not a run dir (no {CONFIG}); train into it first")
    return config_lib.load(path)


def load_shapes(run_dir: str) -> Shapes:
    with open(os.path.join(run_dir, SHAPES)) as f:
        return Shapes(**json.load(f))


def load_manifest(run_dir: str, data_dir: str | None = None) -> manifest_lib.Manifest:
    """The manifest of the data the run trained on (or of `data_dir`)."""
    if data_dir is None:
        with open(os.path.join(run_dir, manifest_lib.MANIFEST)) as f:
            data_dir = json.load(f)["data_dir"]
    return manifest_lib.load(data_dir)


def load_vocab(run_dir: str) -> Vocabulary:
    return Vocabulary.load(os.path.join(run_dir, VOCAB))


def checkpoint_dir(run_dir: str) -> str:
    return os.path.join(run_dir, CHECKPOINTS)


def latest_checkpoint(run_dir: str) -> str:
    path = tf.train.latest_checkpoint(checkpoint_dir(run_dir))
    if path is None:
        raise FileNotFoundError(f"{run_dir} has no checkpoint yet; train first")
    return path


def load_model(run_dir: str, checkpoint: str | None = None):
    """Rebuilds the run's model and restores a checkpoint (the latest by default).

    Returns:
      (model, config, vocab, shapes, checkpoint path).
    """
    config = load_config(run_dir)
    vocab = load_vocab(run_dir)
    shapes = load_shapes(run_dir)
    checkpoint = checkpoint or latest_checkpoint(run_dir)
    # Inference in float32 whatever the training precision (the variables are float32 either way).
    model = show_and_tell.build_model(config, vocab.size, backbone_weights="none", precision="float32")
    tf.train.Checkpoint(model=model).restore(checkpoint).expect_partial().assert_existing_objects_matched()
    return model, config, vocab, shapes, checkpoint
