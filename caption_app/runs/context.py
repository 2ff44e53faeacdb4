"""The one setup of a run that trains into a run dir (`train`, `cache-features`): `RunContext.create`.

manifest -> vocabulary -> tensor sizes -> fingerprint check -> run dir
description -> seed -> model built -> restored at the resume point.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

import keras
import tensorflow as tf

from caption_app import io_utils
from caption_app.config import Config
from caption_app.data import manifest as manifest_lib
from caption_app.data.pipeline import TensorSizes, resolve_tensor_sizes
from caption_app.data.vocabulary import Vocabulary
from caption_app.model import show_and_tell
from caption_app.runs.checkpoints import Checkpoints, ResumePoint, has_backup, has_checkpoint
from caption_app.runs.layout import (VOCAB, check_compatible, check_run_dir, check_vocab, fingerprint, prepare,
                                     remove_new_run)
from caption_app.runs.lock import LOCK_FILE, RunDirLock
from caption_app.training import budget as budget_lib
from caption_app.training import scst


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
    new_run: bool = False  # the run dir was missing or empty, and this context writes its description

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
        scst.check(config, manifest)  # self-critical training needs the train split's references
        # Refuse another architecture's run dir before touching anything in it.
        check_compatible(run_dir, fingerprint(config, vocab, sizes))
        if write_description or lock:
            check_run_dir(run_dir)  # and only into run dirs (or new, empty ones)
        if io_utils.exists(os.path.join(run_dir, VOCAB)):
            check_vocab(run_dir, Vocabulary.load(os.path.join(run_dir, VOCAB)), os.path.join(run_dir, VOCAB))
        has_saved = has_checkpoint(run_dir) or (resume_backup and has_backup(run_dir))
        lock_held = None
        new_run = False
        if lock:
            io_utils.makedirs(run_dir)
            lock_held = RunDirLock(run_dir, lock).acquire()
            # Asked under the lock: nothing but the lock file means nothing in it is another's.
            new_run = {name.rstrip("/") for name in io_utils.listdir(run_dir)} <= {LOCK_FILE}
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
                if new_run and write_description:
                    remove_new_run(run_dir)  # under the lock: everything in it was written by this command
                lock_held.release()
            raise
        return cls(run_dir, config, manifest, vocab, sizes, model, checkpoints, resume, lock_held,
                   new_run=new_run and write_description)

    def release(self) -> None:
        """Releases the run dir's lock (when this context holds it)."""
        if self.lock is not None:
            self.lock.release()
