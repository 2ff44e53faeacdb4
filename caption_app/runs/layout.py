"""A run dir's layout and architecture fingerprint: what lives where, and whether a run dir is ours and of this architecture.

    RUN/config.json        the resolved config
    RUN/fingerprint.json   what the checkpoints' variables depend on
    RUN/vocab.txt          copy of the data dir's vocabulary
    RUN/manifest.json      copy of the data dir's manifest (+ "data_dir")
    RUN/tensor_sizes.json  image size, captions per image, caption length
                           (`shapes.json` in run dirs written before it was renamed; still read)
    RUN/checkpoints/       tf.train checkpoints (model, optimizer, epoch): caption_app/runs/checkpoints.py
    RUN/backup/            the latest mid-epoch backup (train.backup_every_steps)
    RUN/logs/              TensorBoard
    RUN/state.json         {"epochs_done": n, "total_epochs": m, "finished": bool}
    RUN/run.lock           held by the one process writing into it (caption_app/runs/lock.py)

A run dir knows its architecture: training into one whose checkpoints belong
to another architecture stops before anything is written, naming both.
Only run dirs are written to (`check_run_dir`: a non-empty directory without
`fingerprint.json` is refused, naming what is there), by one process at a
time (`RunDirLock`). Everything downstream (evaluate, caption, export) reads
only the run dir, through caption_app/runs/loader.py.
"""

from __future__ import annotations

import hashlib
import os
import sys

from caption_app import config as config_lib
from caption_app import io_utils
from caption_app.config import Config
from caption_app.data import manifest as manifest_lib
from caption_app.data.pipeline import TensorSizes
from caption_app.data.vocabulary import VOCAB_FILE, Vocabulary
from caption_app.errors import CaptionAppError
from caption_app.model import decoders
from caption_app.io_utils import write_json_atomic as write_json
from caption_app.runs.checkpoints import BACKUP, CHECKPOINTS, has_backup, has_checkpoint  # noqa: F401 (the layout)
from caption_app.runs.lock import LOCK_FILE

CONFIG = "config.json"
FINGERPRINT = "fingerprint.json"
VOCAB = VOCAB_FILE
TENSOR_SIZES = "tensor_sizes.json"
OLD_TENSOR_SIZES = "shapes.json"  # its name in run dirs written before the rename
STATE = "state.json"
LOGS = "logs"


class ArchitectureMismatch(CaptionAppError, RuntimeError):
    """The run dir's checkpoints were trained with another architecture."""


class NotARunDir(CaptionAppError, ValueError):
    """--run-dir is a file, or a non-empty directory that is not a run dir."""


class VocabularyMismatch(CaptionAppError, ValueError):
    """RUN/vocab.txt is not the vocabulary the run was trained with (fingerprint.json)."""


# What the project writes into a run dir before fingerprint.json exists
# (cache-features builds its cache first; a lock may stay from a run that
# stopped before writing anything).
_PRE_FINGERPRINT_ENTRIES = {LOCK_FILE, "feature_cache"}


def check_run_dir(run_dir: str) -> None:
    """Raises NotARunDir unless `run_dir` is missing, empty or a run dir. Reads only.

    Called before anything is written, so a user's folder (its config.json,
    manifest.json or vocab.txt) is never overwritten by mistake.
    """
    if io_utils.exists(run_dir) and not io_utils.isdir(run_dir):
        raise NotARunDir(f"--run-dir {run_dir} is a file, not a directory; give a new path (created) or an "
                         "existing run dir")
    if not io_utils.isdir(run_dir):
        return
    entries = sorted(io_utils.listdir(run_dir))
    if not entries or FINGERPRINT in entries or set(entries) <= _PRE_FINGERPRINT_ENTRIES:
        return
    shown = ", ".join(entries[:8]) + (f" and {len(entries) - 8} more" if len(entries) > 8 else "")
    raise NotARunDir(f"--run-dir {run_dir} is not empty and is not a run dir (no {FINGERPRINT}); it holds "
                     f"{shown}. Nothing was written; give a new or empty directory as --run-dir")


def vocab_sha1(vocab: Vocabulary) -> str:
    """The vocabulary's hash in the fingerprint (its tokens in id order)."""
    return hashlib.sha1("\n".join(vocab.tokens).encode("utf-8")).hexdigest()[:16]


def fingerprint(config: Config, vocab: Vocabulary, sizes: TensorSizes) -> dict:
    """Everything that decides the names and shapes of the checkpoint's variables."""
    vocab_hash = vocab_sha1(vocab)
    return {
        "backbone": config.model.backbone,
        "image_size": sizes.image_size,
        "embedding_size": config.model.embedding_size,
        "vocab_size": vocab.size,
        "vocab_sha1": vocab_hash,
        # The decoder type only when not the LSTM, so that the run dirs of before the key keep their
        # fingerprint; then what the decoder says decides its variables (the LSTM: lstm_units and its options).
        **({"decoder": config.model.decoder} if config.model.decoder != "lstm" else {}),
        **decoders.get(config.model.decoder).fingerprint(config.model),
        # The pixels the model learnt on (not a variable shape, but resuming with others is a mistake).
        **({"preprocess": config.data.preprocess} if config.data.preprocess != "default" else {}),
    }


def _describe(fp: dict, also: list[str] = ()) -> str:
    """The fingerprint's main keys, and the keys in `also` (those that differ) where they are other ones."""
    keys = ["backbone", "image_size", "embedding_size"] + (["lstm_units"] if "lstm_units" in fp else []) \
        + ["vocab_size", "vocab_sha1"]
    absent = {"image_first": True, "decoder": "lstm"}  # what a key left out of a fingerprint means; others: off
    return ", ".join(f"{k}={fp.get(k, absent.get(k, 'off'))}" for k in keys + [k for k in also if k not in keys])


def check_compatible(run_dir: str, new: dict) -> None:
    """Raises ArchitectureMismatch when `run_dir` holds another architecture.

    Reads only; call it before writing anything into the run dir.
    """
    path = os.path.join(run_dir, FINGERPRINT)
    if io_utils.exists(path):
        old = io_utils.read_json(path)
        if old != new:
            diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
            vocab_hint = ""
            if "vocab_sha1" in diff or "vocab_size" in diff:  # e.g. an imported im2txt run and new data
                vocab_hint = (f" The data's vocabulary is not the run's: to train this run on that data, convert "
                              f"it with `python -m tfrecords_tools ... --vocab {os.path.join(run_dir, VOCAB)}`.")
            raise ArchitectureMismatch(
                f"run dir {run_dir} holds checkpoints of another architecture "
                f"(differs in {', '.join(diff)}).\n"
                f"  run dir:  {_describe(old, diff)}\n"
                f"  this run: {_describe(new, diff)}\n"
                "Nothing was changed. Train into a new --run-dir, or use the run dir's own settings." + vocab_hint)
    elif has_checkpoint(run_dir) or has_backup(run_dir):
        raise ArchitectureMismatch(
            f"run dir {run_dir} has checkpoints but no {FINGERPRINT}, so their architecture is unknown; "
            f"this run is {_describe(new)}. Nothing was changed. Use a new --run-dir.")


def check_config_matches(run_dir: str, described: dict) -> None:
    """Raises ArchitectureMismatch when RUN/config.json (its fingerprint `described`) is not the architecture
    RUN/fingerprint.json says the checkpoints have: config.json was edited, the checkpoints are fine."""
    path = os.path.join(run_dir, FINGERPRINT)
    if not io_utils.exists(path):
        return
    trained = io_utils.read_json(path)
    if trained != described:
        diff = [k for k in sorted(set(trained) | set(described)) if trained.get(k) != described.get(k)]
        raise ArchitectureMismatch(
            f"{os.path.join(run_dir, CONFIG)} describes another architecture than the run's checkpoints "
            f"(differs in {', '.join(diff)}).\n"
            f"  checkpoints ({FINGERPRINT}): {_describe(trained, diff)}\n"
            f"  {CONFIG}:            {_describe(described, diff)}\n"
            f"The checkpoints are not damaged: put back config.json's values above (or train a new run dir).")


def remove_new_run(run_dir: str) -> None:
    """Removes everything but the lock file from a run dir that was new (missing or empty) when the command
    holding its lock started, once that command has failed before any checkpoint: all of it is that
    command's, and no half-made run dir is left behind. Call it while holding the lock."""
    if not io_utils.isdir(run_dir):
        return
    for name in io_utils.listdir(run_dir):
        name = name.rstrip("/")
        if name == LOCK_FILE:
            continue
        path = os.path.join(run_dir, name)
        if io_utils.isdir(path):
            io_utils.rmtree(path)
        else:
            io_utils.remove(path)
    print(f"note: the run did not start; removed what it had written into {run_dir}", file=sys.stderr, flush=True)


def prepare(run_dir: str, config: Config, manifest: manifest_lib.Manifest, vocab: Vocabulary,
            sizes: TensorSizes) -> None:
    """Writes the run dir's description (after check_compatible passed)."""
    io_utils.makedirs(run_dir)
    _write_json(os.path.join(run_dir, FINGERPRINT), fingerprint(config, vocab, sizes))
    config_lib.save(config, os.path.join(run_dir, CONFIG))
    io_utils.copyfile(manifest.vocab_path, os.path.join(run_dir, VOCAB))
    _write_json(os.path.join(run_dir, manifest_lib.MANIFEST),
                {**manifest.raw, "data_dir": io_utils.abspath(manifest.data_dir)})
    _write_json(os.path.join(run_dir, TENSOR_SIZES), {"image_size": sizes.image_size,
                                                "num_captions": sizes.num_captions,
                                                "caption_length": sizes.caption_length})


def _write_json(path: str, obj: dict) -> None:
    write_json(path, obj, sort_keys=True)


def write_state(run_dir: str, epochs_done: int, total_epochs: int, finished: bool) -> None:
    _write_json(os.path.join(run_dir, STATE), {"epochs_done": epochs_done, "total_epochs": total_epochs,
                                               "finished": finished})


def read_state(run_dir: str) -> dict:
    path = os.path.join(run_dir, STATE)
    if not io_utils.exists(path):
        return {"epochs_done": 0, "total_epochs": None, "finished": False}
    return io_utils.read_json(path)


def check_vocab(run_dir: str, vocab: Vocabulary, path: str) -> None:
    """Raises VocabularyMismatch when `vocab` (read from `path`) is not the run's trained vocabulary."""
    fp_path = os.path.join(run_dir, FINGERPRINT)
    if not io_utils.exists(fp_path):
        return
    expected = io_utils.read_json(fp_path).get("vocab_sha1")
    if expected and vocab_sha1(vocab) != expected:
        raise VocabularyMismatch(
            f"{path} is not the vocabulary run dir {run_dir} was trained with (its hash {vocab_sha1(vocab)} "
            f"differs from {FINGERPRINT}'s vocab_sha1 {expected}): it was edited or replaced. Copy back the "
            "data dir's vocab.txt the run trained on")
