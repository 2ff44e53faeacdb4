"""A run's checkpoints: finding them, telling damaged ones apart, restoring the newest good one, and the epoch/backup bookkeeping of training.

A damaged checkpoint (index missing, data truncated, the `checkpoint` file
gone) is skipped with a note for the newest one that restores
(`restore_newest`, used by resume and by the loader); when none restores the
command stops listing them, and never starts over them. `Checkpoints` is the
run's checkpoint bookkeeping: the epoch and step variables, the epoch
checkpoints and the mid-epoch backup, the resume point, and the key each
phase's optimizer is saved under.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import sys
from typing import Callable

import keras
import tensorflow as tf

from caption_app import io_utils
from caption_app.errors import CaptionAppError

CHECKPOINTS = "checkpoints"
BACKUP = "backup"


class CheckpointError(CaptionAppError, RuntimeError):
    """No checkpoint restores (each is damaged), or a named checkpoint is damaged."""


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


def checkpoint_dir(run_dir: str) -> str:
    return os.path.join(run_dir, CHECKPOINTS)


def latest_checkpoint(run_dir: str) -> str:
    """The newest epoch checkpoint's path (not checked: `load_model` falls back past damaged ones)."""
    paths = checkpoint_paths(checkpoint_dir(run_dir))
    if not paths:
        raise FileNotFoundError(f"{run_dir} has no checkpoint yet; train first")
    return paths[0]


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
