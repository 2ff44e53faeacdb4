"""A run dir: config, architecture fingerprint, vocabulary, checkpoints, logs.

    RUN/config.json        the resolved config
    RUN/fingerprint.json   what the checkpoints' variables depend on
    RUN/vocab.txt          copy of the data dir's vocabulary
    RUN/manifest.json      copy of the data dir's manifest (+ "data_dir")
    RUN/tensor_sizes.json  image size, captions per image, caption length
                           (`shapes.json` in run dirs written before it was renamed; still read)
    RUN/checkpoints/       tf.train checkpoints (model, optimizer, epoch)
    RUN/backup/            the latest mid-epoch backup (train.backup_every_steps)
    RUN/logs/              TensorBoard
    RUN/state.json         {"epochs_done": n, "total_epochs": m, "finished": bool}
    RUN/run.lock           held by the one process writing into it (caption_app/run_lock.py)

A run dir knows its architecture: training into one whose checkpoints belong
to another architecture stops before anything is written, naming both.
Only run dirs are written to (`check_run_dir`: a non-empty directory without
`fingerprint.json` is refused, naming what is there), by one process at a
time (`RunDirLock`). A damaged checkpoint (index missing, data truncated, the
`checkpoint` file gone) is skipped with a note for the newest one that
restores (`restore_newest`, used by resume and by `load_model`); when none
restores the command stops listing them, and never starts over them.
Everything downstream (evaluate, caption, export) reads only the run dir.

`RunContext.create` is the one setup of a run that trains into it (`train`,
`cache-features`): manifest -> vocabulary -> tensor sizes -> fingerprint check
-> run dir description -> seed -> model built -> restored at the resume point.
`Checkpoints` is the run's checkpoint bookkeeping: the epoch and step
variables, the epoch checkpoints and the mid-epoch backup, the resume point,
and the key each phase's optimizer is saved under.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import os
import re
import sys
from typing import Callable

import keras
import tensorflow as tf

from caption_app import budget as budget_lib
from caption_app import config as config_lib
from caption_app import io_utils
from caption_app.config import Config
from caption_app.io_utils import write_json_atomic as write_json
from caption_app.data import manifest as manifest_lib
from caption_app.data.pipeline import TensorSizes, resolve_tensor_sizes
from caption_app.data.vocabulary import VOCAB_FILE, Vocabulary
from caption_app.model import show_and_tell
from caption_app.run_lock import LOCK_FILE, RunDirLock

CONFIG = "config.json"
FINGERPRINT = "fingerprint.json"
VOCAB = VOCAB_FILE
TENSOR_SIZES = "tensor_sizes.json"
OLD_TENSOR_SIZES = "shapes.json"  # its name in run dirs written before the rename
STATE = "state.json"
CHECKPOINTS = "checkpoints"
BACKUP = "backup"
LOGS = "logs"


class ArchitectureMismatch(RuntimeError):
    """The run dir's checkpoints were trained with another architecture."""


class NotARunDir(ValueError):
    """--run-dir is a file, or a non-empty directory that is not a run dir."""


class CheckpointError(RuntimeError):
    """No checkpoint restores (each is damaged), or a named checkpoint is damaged."""


class VocabularyMismatch(ValueError):
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
        "lstm_units": config.model.lstm_units,
        "vocab_size": vocab.size,
        "vocab_sha1": vocab_hash,
        # Only when on, so that the run dirs of before the option keep their fingerprint.
        **({"image_every_step": True} if config.model.image_every_step else {}),
        # The pixels the model learnt on (not a variable shape, but resuming with others is a mistake).
        **({"preprocess": config.data.preprocess} if config.data.preprocess != "default" else {}),
        **({"image_logits": True} if config.model.image_logits else {}),
        **({"attention_size": config.model.attention_size} if config.model.attention_size else {}),
        **({"image_first": False} if not config.model.image_first else {}),
    }


def _describe(fp: dict, also: list[str] = ()) -> str:
    """The fingerprint's main keys, and the keys in `also` (those that differ) where they are other ones."""
    keys = ["backbone", "image_size", "embedding_size", "lstm_units", "vocab_size", "vocab_sha1"]
    absent = {"image_first": True}  # what a key left out of a fingerprint means; others: off
    return ", ".join(f"{k}={fp.get(k, absent.get(k, 'off'))}" for k in keys + [k for k in also if k not in keys])


def has_checkpoint(run_dir: str) -> bool:
    """Whether RUN/checkpoints holds any checkpoint, damaged or not (with or without its `checkpoint` file)."""
    return bool(checkpoint_paths(os.path.join(run_dir, CHECKPOINTS)))


def has_backup(run_dir: str) -> bool:
    return bool(checkpoint_paths(os.path.join(run_dir, BACKUP)))


def _number(path: str) -> int:
    match = re.search(r"-(\d+)$", path)
    return int(match.group(1)) if match else -1


def checkpoint_paths(directory: str) -> list[str]:
    """The checkpoints of `directory`, newest first.

    Those its `checkpoint` file lists; when that file is missing or
    unreadable, every `ckpt-N` with an index or data file on disk. Some may be
    damaged (see `checkpoint_damage`).
    """
    try:
        state = tf.train.get_checkpoint_state(directory)
    except Exception:  # a garbled `checkpoint` file: fall back to the files
        state = None
    paths: list[str] = []
    if state is not None:
        listed = list(state.all_model_checkpoint_paths) + [state.model_checkpoint_path]
        # get_checkpoint_state has joined relative entries to `directory` already (joining again broke
        # relative run dirs: runs/x/checkpoints/runs/x/checkpoints/ckpt-1).
        paths = [p for p in listed if p]
    if not paths and io_utils.isdir(directory):
        for name in io_utils.listdir(directory):
            match = re.match(r"^(.*-\d+)\.(index|data-\d+-of-\d+)$", name)
            if match:
                paths.append(os.path.join(directory, match.group(1)))
    return sorted(set(paths), key=lambda p: (_number(p), p), reverse=True)


def checkpoint_damage(path: str) -> str | None:
    """Why checkpoint `path` cannot be restored (its index missing, its data missing, truncated or
    unreadable), or None when every tensor in it reads back. Reads the whole checkpoint once."""
    name = os.path.basename(path)
    if not tf.io.gfile.exists(path + ".index"):
        return f"its index {name}.index is missing"
    if not tf.io.gfile.glob(glob.escape(path) + ".data-*"):
        return f"its data file {name}.data-* is missing"
    try:
        # The reader of this very prefix: tf.train.load_checkpoint first asks whether `path` is a folder,
        # which some file systems (TensorFlow's ram://) answer yes for any prefix of a file name.
        reader = tf.compat.v1.train.NewCheckpointReader(path)
        for key in reader.get_variable_to_shape_map():
            reader.get_tensor(key)
    except Exception as err:  # OpError, or e.g. IndexError "Read less bytes than requested"
        message = ((getattr(err, "message", None) or str(err)).strip().splitlines() or [type(err).__name__])[0]
        return f"it cannot be read (truncated or damaged: {message[:200]})"
    return None


def restore_newest(paths: list[str], restore: Callable[[str], None], what: str) -> str | None:
    """Restores the newest of `paths` that is undamaged and restores cleanly; notes each one skipped.

    Args:
      paths: checkpoints, newest first.
      restore: restores one path (raises when it does not fit).
      what: what they are, for messages ("checkpoints of RUN").
    Returns:
      The path restored, or None when `paths` is empty.
    Raises:
      CheckpointError: when none restores (listing each with its reason).
    """
    skipped: list[tuple[str, str]] = []
    for path in paths:
        reason = checkpoint_damage(path)
        if reason is None:
            try:
                restore(path)
            except Exception as err:  # OpError, AssertionError (variables that do not match), ...
                reason = f"it does not restore ({(str(err).strip().splitlines() or [type(err).__name__])[0][:200]})"
        if reason is None:
            for bad, why in skipped:
                print(f"note: skipped checkpoint {bad}: {why}; using {path}", file=sys.stderr, flush=True)
            return path
        skipped.append((path, reason))
    if len(skipped) == 1:
        raise CheckpointError(f"{skipped[0][0]} does not restore: {skipped[0][1]}. Nothing was changed; restore it "
                              "from a backup, or move it away")
    if skipped:
        listing = "; ".join(f"{p}: {why}" for p, why in skipped)
        raise CheckpointError(f"none of the {len(skipped)} {what} restores ({listing}). Nothing was changed; "
                              "restore the files from a backup, or move them away to start over")
    return None


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


def load_config(run_dir: str) -> Config:
    path = os.path.join(run_dir, CONFIG)
    if not io_utils.exists(path):
        raise FileNotFoundError(f"{run_dir} is not a run dir (no {CONFIG}); train into it first")
    return config_lib.load(path)


def load_tensor_sizes(run_dir: str) -> TensorSizes:
    """RUN/tensor_sizes.json, or RUN/shapes.json in a run dir written before the rename."""
    path = os.path.join(run_dir, TENSOR_SIZES)
    if not io_utils.exists(path) and io_utils.exists(os.path.join(run_dir, OLD_TENSOR_SIZES)):
        path = os.path.join(run_dir, OLD_TENSOR_SIZES)
    return TensorSizes(**io_utils.read_json(path))


def load_manifest(run_dir: str, data_dir: str | None = None) -> manifest_lib.Manifest:
    """The manifest of the data the run trained on (or of `data_dir`)."""
    if data_dir is None:
        path = os.path.join(run_dir, manifest_lib.MANIFEST)
        if not io_utils.exists(path):  # an imported run (caption_app/im2txt_import.py) was trained elsewhere
            raise FileNotFoundError(f"{run_dir} has no {manifest_lib.MANIFEST} (it was not trained here); "
                                    "pass the data dir with --data")
        data_dir = io_utils.read_json(path)["data_dir"]
    return manifest_lib.load(data_dir)


def load_vocab(run_dir: str) -> Vocabulary:
    """RUN/vocab.txt, checked against the vocabulary hash of RUN/fingerprint.json (when there is one)."""
    path = os.path.join(run_dir, VOCAB)
    vocab = Vocabulary.load(path)
    check_vocab(run_dir, vocab, path)
    return vocab


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


def checkpoint_dir(run_dir: str) -> str:
    return os.path.join(run_dir, CHECKPOINTS)


def latest_checkpoint(run_dir: str) -> str:
    """The newest epoch checkpoint's path (not checked: `load_model` falls back past damaged ones)."""
    paths = checkpoint_paths(checkpoint_dir(run_dir))
    if not paths:
        raise FileNotFoundError(f"{run_dir} has no checkpoint yet; train first")
    return paths[0]


def load_model(run_dir: str, checkpoint: str | None = None):
    """Rebuilds the run's model and restores a checkpoint: the newest that restores cleanly by
    default (damaged newer ones skipped with a note), or `checkpoint` (damaged: CheckpointError).

    The one load path of evaluate, caption and export. RUN/vocab.txt is checked
    against the fingerprint's vocabulary hash.

    Returns:
      (model, config, vocab, sizes, checkpoint path).
    """
    config = load_config(run_dir)
    vocab = load_vocab(run_dir)
    sizes = load_tensor_sizes(run_dir)
    paths = [checkpoint] if checkpoint else checkpoint_paths(checkpoint_dir(run_dir))
    if not paths:
        raise FileNotFoundError(f"{run_dir} has no checkpoint yet; train first")
    # Inference in float32 whatever the training precision (the variables are float32 either way).
    model = show_and_tell.build_model(config, vocab.size, backbone_weights="none", precision="float32")

    def restore(path: str) -> None:
        tf.train.Checkpoint(model=model).restore(path).expect_partial().assert_existing_objects_matched()

    what = f"checkpoint {checkpoint}" if checkpoint else f"checkpoints of {run_dir}"
    path = restore_newest(paths, restore, what)
    return model, config, vocab, sizes, path


# ---------------------------------------------------------------------------
# Checkpoint bookkeeping of a training run.

def optimizer_key(phase: str) -> str:
    """The checkpoint key of phase `phase`'s optimizer (e.g. "phase1" -> "optimizer_phase1").

    Each phase's optimizer is saved under its own key, so a phase-2 run never
    pours phase 1's slots into its optimizer (see distribute.FitModel).
    """
    return f"optimizer_{phase}"


def restore_optimizer(checkpoint: str, phase: str, optimizer: keras.optimizers.Optimizer) -> None:
    """Restores phase `phase`'s optimizer state (iterations, slots) from `checkpoint` into `optimizer`
    (built on the model's trainable variables)."""
    tf.train.Checkpoint(**{optimizer_key(phase): optimizer}).restore(checkpoint).expect_partial()


@dataclasses.dataclass(frozen=True)
class ResumePoint:
    """Where a run continues: `epoch` epochs finished and `step` steps of the next one done,
    restored from `path` (None: nothing to resume, start at epoch 0)."""

    path: str | None = None
    epoch: int = 0
    step: int = 0


class Checkpoints:
    """The run's checkpoints: RUN/checkpoints (one per epoch) and RUN/backup (mid-epoch, one kept).

    Both hold {"model", "epoch", "step" (backup only), optimizer_key(phase)}.
    Create it (and so its `epoch` and `step` variables) in the strategy's scope.

    Args:
      run_dir: the run dir (resume points are read from it).
      model: the full captioning model (a feature-cache head shares its layers).
      write_dir: where checkpoints are written (the run dir, or a scratch dir on
        a non-chief worker).
      max_to_keep: epoch checkpoints kept.
    """

    def __init__(self, run_dir: str, model: keras.Model, *, write_dir: str | None = None, max_to_keep: int = 5):
        self.run_dir, self.model = run_dir, model
        self.write_dir = write_dir or run_dir
        self.max_to_keep = max_to_keep
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")

    def _read_position(self, path: str) -> tuple[int, int]:
        epoch, step = tf.Variable(0, dtype=tf.int64), tf.Variable(0, dtype=tf.int64)
        tf.train.Checkpoint(epoch=epoch, step=step).restore(path).expect_partial()
        return int(epoch.numpy()), int(step.numpy())

    def latest_backup(self) -> ResumePoint:
        """RUN/backup's newest backup (path None when there is none). Not checked for damage."""
        paths = checkpoint_paths(os.path.join(self.run_dir, BACKUP))
        if not paths or checkpoint_damage(paths[0]) is not None:
            return ResumePoint()
        return ResumePoint(paths[0], *self._read_position(paths[0]))

    def restore_resume_point(self, total_epochs: int, *, backups: bool = True) -> ResumePoint:
        """Restores the model at the resume point and returns it.

        The resume point is the newest epoch checkpoint that restores cleanly,
        or (`backups`) a newer mid-epoch backup of the next epoch. Damaged
        checkpoints are skipped with a note naming them and why.

        Raises:
          CheckpointError: when there are checkpoints (or a backup) but none restores.
        """
        epoch_paths = checkpoint_paths(checkpoint_dir(self.run_dir))
        backup_paths = checkpoint_paths(os.path.join(self.run_dir, BACKUP)) if backups else []

        def restore(path: str) -> None:
            self.restore(path).assert_existing_objects_matched()

        point, failure = ResumePoint(), None
        if epoch_paths:
            try:
                path = restore_newest(epoch_paths, restore, f"checkpoints in {checkpoint_dir(self.run_dir)}")
                point = ResumePoint(path, self._read_position(path)[0])
            except CheckpointError as err:
                failure = err
        if backup_paths:
            backup = backup_paths[0]
            reason = checkpoint_damage(backup)
            if reason is not None:
                print(f"note: skipped the mid-epoch backup {backup}: {reason}", file=sys.stderr, flush=True)
                failure = failure or CheckpointError(f"{backup} does not restore: {reason}")
            else:
                epoch, step = self._read_position(backup)
                if epoch == point.epoch and step > 0 and point.epoch < total_epochs:
                    restore(backup)
                    point = ResumePoint(backup, epoch, step)
        if point.path is None and (epoch_paths or backup_paths):
            # Never start from scratch over saved checkpoints.
            raise failure or CheckpointError(
                f"the checkpoints of {self.run_dir} do not give a resume point; nothing was changed")
        if point.path:
            self.epoch.assign(point.epoch)
        return point

    def restore(self, path: str, phase: str | None = None, optimizer=None):
        """Restores the model and `epoch` (and phase `phase`'s `optimizer`) from checkpoint `path`.

        Returns:
          The tf.train load status (e.g. `.assert_existing_objects_matched()`).
        """
        objects = {"model": self.model, "epoch": self.epoch}
        if optimizer is not None:
            objects[optimizer_key(phase)] = optimizer
        return tf.train.Checkpoint(**objects).restore(path).expect_partial()

    def epoch_manager(self, phase: str, optimizer) -> tf.train.CheckpointManager:
        """Saves {model, epoch, phase's optimizer} to RUN/checkpoints, keeping `max_to_keep`."""
        checkpoint = tf.train.Checkpoint(model=self.model, epoch=self.epoch, **{optimizer_key(phase): optimizer})
        return tf.train.CheckpointManager(checkpoint, checkpoint_dir(self.write_dir), max_to_keep=self.max_to_keep)

    def backup_manager(self, phase: str, optimizer) -> tf.train.CheckpointManager:
        """Saves {model, epoch, step, phase's optimizer} to RUN/backup, keeping one."""
        checkpoint = tf.train.Checkpoint(model=self.model, epoch=self.epoch, step=self.step,
                                         **{optimizer_key(phase): optimizer})
        return tf.train.CheckpointManager(checkpoint, os.path.join(self.write_dir, BACKUP), max_to_keep=1)


# ---------------------------------------------------------------------------
# The setup of a run that trains into a run dir.

@dataclasses.dataclass
class RunContext:
    """What a training run works on, set up once by `RunContext.create`.

    Attributes:
      run_dir: the run dir.
      config: the resolved config.
      manifest: the data dir's manifest.
      vocab: its vocabulary (checked against the manifest's size).
      sizes: the tensor sizes (image size, captions per image, caption length).
      model: the captioning model, built (in the strategy's scope) after
        seeding, restored at `resume` when there is one.
      checkpoints: the run's checkpoint bookkeeping (its variables in the scope too).
      resume: where the run continues (path None: from the start).
      lock: the run dir's lock while this context writes into it (`release` it).
    """

    run_dir: str
    config: Config
    manifest: manifest_lib.Manifest
    vocab: Vocabulary
    sizes: TensorSizes
    model: keras.Model
    checkpoints: Checkpoints
    resume: ResumePoint
    lock: RunDirLock | None = None

    @classmethod
    def create(cls, config: Config, data_dir: str, run_dir: str, *, strategy: tf.distribute.Strategy | None = None,
               write_description: bool = True, write_dir: str | None = None,
               resume_backup: bool = True, lock: str | None = None) -> "RunContext":
        """Loads the data's description, checks the run dir, builds and restores the model.

        Args:
          config: the resolved config.
          data_dir: a converted dataset (manifest.json, vocab.txt, shards).
          run_dir: the run dir to train into.
          strategy: builds the model and the bookkeeping in its scope (default: none).
          write_description: write config, fingerprint, vocabulary, manifest and
            tensor sizes into the run dir (False on non-chief workers).
          write_dir: where checkpoints are written (default: `run_dir`).
          resume_backup: also resume from a mid-epoch backup (False: the last
            epoch checkpoint only).
          lock: take the run dir's lock for this command ("train",
            "cache-features" pass theirs), held until `release`; None: no
            lock (a non-chief worker, which writes elsewhere; tests).
        Raises:
          ConfigError, NotARunDir, ManifestError, ArchitectureMismatch,
            VocabularyMismatch: before anything is written.
          RunDirLocked: another process writes into the run dir.
          CheckpointError: the run dir has checkpoints but none restores.
        """
        config.validate()
        manifest = manifest_lib.load(data_dir)
        vocab = Vocabulary.load(manifest.vocab_path)
        if vocab.size != manifest.vocab_size:
            raise ValueError(f"{manifest.vocab_path} has {vocab.size} ids but the manifest says "
                             f"{manifest.vocab_size}; re-convert the dataset")
        sizes = resolve_tensor_sizes(config, manifest)
        # Refuse another architecture's run dir before touching anything in it.
        check_compatible(run_dir, fingerprint(config, vocab, sizes))
        if write_description or lock:
            check_run_dir(run_dir)  # and only into run dirs (or new, empty ones)
        if io_utils.exists(os.path.join(run_dir, VOCAB)):
            check_vocab(run_dir, Vocabulary.load(os.path.join(run_dir, VOCAB)), os.path.join(run_dir, VOCAB))
        has_saved = has_checkpoint(run_dir) or (resume_backup and has_backup(run_dir))
        lock_held = None
        if lock:
            io_utils.makedirs(run_dir)
            lock_held = RunDirLock(run_dir, lock).acquire()
        try:
            if write_description:
                prepare(run_dir, config, manifest, vocab, sizes)
            keras.utils.set_random_seed(config.train.seed)
            scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
            total_epochs = budget_lib.budget_for(config, manifest).total_epochs
            with scope:
                # When resuming, the checkpoint has every weight: skip the ImageNet download.
                model = show_and_tell.build_model(config, vocab.size, backbone_weights="none" if has_saved else None)
                checkpoints = Checkpoints(run_dir, model, write_dir=write_dir,
                                          max_to_keep=config.train.max_checkpoints_to_keep)
                resume = ResumePoint()
                if has_saved:  # never start from scratch over checkpoints: none restoring is an error
                    resume = checkpoints.restore_resume_point(total_epochs, backups=resume_backup)
        except BaseException:
            if lock_held is not None:
                lock_held.release()
            raise
        return cls(run_dir, config, manifest, vocab, sizes, model, checkpoints, resume, lock_held)

    def release(self) -> None:
        """Releases the run dir's lock (when this context holds it)."""
        if self.lock is not None:
            self.lock.release()
