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

A run dir knows its architecture: training into one whose checkpoints belong
to another architecture stops before anything is written, naming both.
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
import hashlib
import json
import os
import shutil

import keras
import tensorflow as tf

from caption_app import budget as budget_lib
from caption_app import config as config_lib
from caption_app.config import Config
from caption_app.io_utils import write_json_atomic as write_json
from caption_app.data import manifest as manifest_lib
from caption_app.data.pipeline import TensorSizes, resolve_tensor_sizes
from caption_app.data.vocabulary import VOCAB_FILE, Vocabulary
from caption_app.model import show_and_tell

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


def fingerprint(config: Config, vocab: Vocabulary, sizes: TensorSizes) -> dict:
    """Everything that decides the names and shapes of the checkpoint's variables."""
    vocab_hash = hashlib.sha1("\n".join(vocab.tokens).encode("utf-8")).hexdigest()[:16]
    return {
        "backbone": config.model.backbone,
        "image_size": sizes.image_size,
        "embedding_size": config.model.embedding_size,
        "lstm_units": config.model.lstm_units,
        "vocab_size": vocab.size,
        "vocab_sha1": vocab_hash,
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
            sizes: TensorSizes) -> None:
    """Writes the run dir's description (after check_compatible passed)."""
    os.makedirs(run_dir, exist_ok=True)
    _write_json(os.path.join(run_dir, FINGERPRINT), fingerprint(config, vocab, sizes))
    config_lib.save(config, os.path.join(run_dir, CONFIG))
    shutil.copyfile(manifest.vocab_path, os.path.join(run_dir, VOCAB))
    _write_json(os.path.join(run_dir, manifest_lib.MANIFEST),
                {**manifest.raw, "data_dir": os.path.abspath(manifest.data_dir)})
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
    if not os.path.exists(path):
        return {"epochs_done": 0, "total_epochs": None, "finished": False}
    with open(path) as f:
        return json.load(f)


def load_config(run_dir: str) -> Config:
    path = os.path.join(run_dir, CONFIG)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{run_dir} is not a run dir (no {CONFIG}); train into it first")
    return config_lib.load(path)


def load_tensor_sizes(run_dir: str) -> TensorSizes:
    """RUN/tensor_sizes.json, or RUN/shapes.json in a run dir written before the rename."""
    path = os.path.join(run_dir, TENSOR_SIZES)
    if not os.path.exists(path) and os.path.exists(os.path.join(run_dir, OLD_TENSOR_SIZES)):
        path = os.path.join(run_dir, OLD_TENSOR_SIZES)
    with open(path) as f:
        return TensorSizes(**json.load(f))


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
      (model, config, vocab, sizes, checkpoint path).
    """
    config = load_config(run_dir)
    vocab = load_vocab(run_dir)
    sizes = load_tensor_sizes(run_dir)
    checkpoint = checkpoint or latest_checkpoint(run_dir)
    # Inference in float32 whatever the training precision (the variables are float32 either way).
    model = show_and_tell.build_model(config, vocab.size, backbone_weights="none", precision="float32")
    tf.train.Checkpoint(model=model).restore(checkpoint).expect_partial().assert_existing_objects_matched()
    return model, config, vocab, sizes, checkpoint


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

    def latest_backup(self) -> ResumePoint:
        """RUN/backup's newest backup (path None when there is none)."""
        path = tf.train.latest_checkpoint(os.path.join(self.run_dir, BACKUP))
        if path is None:
            return ResumePoint()
        epoch, step = tf.Variable(0, dtype=tf.int64), tf.Variable(0, dtype=tf.int64)
        tf.train.Checkpoint(epoch=epoch, step=step).restore(path).expect_partial()
        return ResumePoint(path, int(epoch.numpy()), int(step.numpy()))

    def resume_point(self, total_epochs: int, *, backups: bool = True) -> ResumePoint:
        """After the last epoch checkpoint, or (`backups`) from a newer mid-epoch backup of the next epoch."""
        point = ResumePoint()
        latest = tf.train.latest_checkpoint(checkpoint_dir(self.run_dir))
        if latest:
            epoch = tf.Variable(0, dtype=tf.int64)
            tf.train.Checkpoint(epoch=epoch).restore(latest).expect_partial()
            point = ResumePoint(latest, int(epoch.numpy()))
        backup = self.latest_backup() if backups else ResumePoint()
        if backup.path and backup.epoch == point.epoch and backup.step > 0 and point.epoch < total_epochs:
            point = backup
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

    def restore_model(self, point: ResumePoint) -> None:
        """The model's weights from `point` (its `epoch` variable set to the point's epoch)."""
        self.restore(point.path)
        self.epoch.assign(point.epoch)

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
    """

    run_dir: str
    config: Config
    manifest: manifest_lib.Manifest
    vocab: Vocabulary
    sizes: TensorSizes
    model: keras.Model
    checkpoints: Checkpoints
    resume: ResumePoint

    @classmethod
    def create(cls, config: Config, data_dir: str, run_dir: str, *, strategy: tf.distribute.Strategy | None = None,
               write_description: bool = True, write_dir: str | None = None,
               resume_backup: bool = True) -> "RunContext":
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
        Raises:
          ArchitectureMismatch: before anything is written, when the run dir
            holds another architecture.
        """
        manifest = manifest_lib.load(data_dir)
        vocab = Vocabulary.load(manifest.vocab_path)
        if vocab.size != manifest.vocab_size:
            raise ValueError(f"{manifest.vocab_path} has {vocab.size} ids but the manifest says "
                             f"{manifest.vocab_size}")
        sizes = resolve_tensor_sizes(config, manifest)
        # Refuse another architecture's run dir before touching anything in it.
        check_compatible(run_dir, fingerprint(config, vocab, sizes))
        has_saved = has_checkpoint(run_dir) or (resume_backup and has_backup(run_dir))
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
            if has_saved:
                resume = checkpoints.resume_point(total_epochs, backups=resume_backup)
                if resume.path:
                    checkpoints.restore_model(resume)
        return cls(run_dir, config, manifest, vocab, sizes, model, checkpoints, resume)
