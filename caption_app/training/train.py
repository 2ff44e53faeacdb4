"""train(config, data_dir, run_dir): im2txt's two phases with model.fit and XLA.

Phase 1 trains with the backbone frozen (or not, `train.freeze_backbone`),
phase 2 (`train.fine_tune_epochs`) fine-tunes everything at its own learning
rate, and the SCST phase (`train.scst_epochs`, caption_app/training/scst.py)
optimizes CIDEr-D of sampled captions. Durations are passes over the train pairs; steps per epoch, phase
lengths and the learning-rate schedule come from the manifest's counts
(caption_app/training/budget.py). Each epoch ends with a checkpoint (model, optimizer, epoch) and the
validation perplexity; a restarted run resumes after its last finished epoch,
or from a mid-epoch backup (`train.backup_every_steps`). A NaN/Inf loss stops
the run with NonFiniteLossError and nothing non-finite is ever saved.

`train.strategy` picks the tf.distribute strategy (model, optimizer and
compile under its scope; `train.batch_size` is the global batch) and
`train.precision` the Keras dtype policy; see caption_app/training/distribute.py.

Where the rest lives: the run's setup and checkpoint bookkeeping in
caption_app/runs/ (`RunContext`, `Checkpoints`), the optimizer and schedule in
optimizers.py, the callbacks in callbacks.py, compiling for `fit` under a
strategy in distribute.py, the frozen phase's feature cache in feature_cache.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time

import tensorflow as tf

from caption_app.training import budget as budget_lib
from caption_app.training import distribute
from caption_app.training import cider_reward
from caption_app.training import feature_cache
from caption_app.training import scst
from caption_app.runs import checkpoints as checkpoints_lib
from caption_app.runs import context as run_context
from caption_app.runs import layout as run_layout
from caption_app.training.callbacks import (BackupCallback, CheckpointCallback, CompileNotice, EpochSummaries,
                                   PerplexityCallback, SampleCaptions, StopOnNonFiniteLoss, fixed_samples)
from caption_app.config import Config
from caption_app.data import pipeline
from caption_app.data.pipeline import make_dataset
from caption_app.model import show_and_tell
from caption_app.training.optimizers import learning_rate_schedule, make_optimizer
from caption_app.errors import CaptionAppError


class DataError(CaptionAppError, ValueError):
    """A shard of the data dir turned out damaged while training (the message names it)."""


@contextlib.contextmanager
def _naming_damaged_shards(manifest):
    """Turns TensorFlow's DataLossError (a record that fails its CRC, a shard cut short) into
    DataError naming the shard and saying re-convert. The last checkpoint stays the latest."""
    try:
        yield
    except tf.errors.DataLossError as err:
        # TensorFlow's message does not name the file: read the shards once to find it.
        files = [f for split in ("train", "val") if split in manifest.splits for f in manifest.files(split)]
        damaged = [f for f in files if _record_damage(f)]
        where = ", ".join(damaged) if damaged else f"one of the shards of {manifest.data_dir}"
        text = (getattr(err, "message", None) or str(err)).replace("{{", "{").strip()
        detail = next((_record_damage(f) for f in damaged), text.splitlines()[0][:200] if text else "")
        raise DataError(f"damaged record data in {where} ({detail}); re-convert the dataset "
                        "(python -m tfrecords_tools ... --out DIR), then rerun to resume from the last "
                        "checkpoint") from None


def _record_damage(path: str) -> str | None:
    """Why the TFRecord file `path` does not read through (a record failing its CRC), or None."""
    try:
        for _ in tf.data.TFRecordDataset(path):
            pass
    except tf.errors.DataLossError as err:
        return (err.message or "").split("}}")[-1].split("[Op:")[0].strip() or "data loss"
    return None


def train(config: Config, data_dir: str, run_dir: str, *, verbose: int = 2,
          strategy: tf.distribute.Strategy | None = None, callbacks: list | None = None) -> dict:
    """Trains (or resumes) a captioner.

    Args:
      config: the resolved config.
      data_dir: a converted dataset (manifest.json, vocab.txt, shards).
      run_dir: where checkpoints, logs and the run's description go.
      verbose: Keras fit verbosity.
      strategy: a tf.distribute strategy (default: built from
        config.train.strategy, before any other TensorFlow op).
      callbacks: Keras callbacks of your own, called after the run's (checkpoints and
        backups of a step are written before yours see it).
    Returns:
      {"epochs_done", "val_perplexity" (None without val data), "seconds", "steps_per_epoch",
       "replicas", "xla", "resumed_from", "already_finished"}.
    """
    t = config.train
    config.validate()  # before anything is written
    distribute.check_settings(t.strategy, t.precision)
    if strategy is None:
        strategy = distribute.make_strategy(t.strategy)
    feature_cache.check_config(config)
    replicas = strategy.num_replicas_in_sync
    if t.batch_size % replicas:
        raise ValueError(f"train.batch_size={t.batch_size} is the global batch and must divide evenly over "
                         f"the {replicas} replicas; use a multiple of {replicas}")
    chief = distribute.is_chief(strategy)
    # Every worker saves (saving may need collectives); only the chief into the run dir.
    write_dir = run_dir if chief else tempfile.mkdtemp(prefix="caption_app_worker_")
    ctx = run_context.RunContext.create(config, data_dir, run_dir, strategy=strategy, write_description=chief,
                                        write_dir=write_dir, lock="train" if chief else None)
    try:
        return _train(ctx, strategy, chief=chief, verbose=verbose, write_dir=write_dir, callbacks=callbacks)
    except BaseException:
        if ctx.new_run and not checkpoints_lib.has_checkpoint(run_dir) and not checkpoints_lib.has_backup(run_dir):
            run_layout.remove_new_run(run_dir)  # a failed start leaves no run dir that looks like a run
        raise
    finally:
        ctx.release()


def _train(ctx: run_context.RunContext, strategy: tf.distribute.Strategy, *, chief: bool, verbose: int,
           write_dir: str, callbacks: list | None = None) -> dict:
    config, run_dir, replicas = ctx.config, ctx.run_dir, strategy.num_replicas_in_sync
    resume = ctx.resume
    total_epochs = budget_lib.budget_for(config, ctx.manifest).total_epochs
    if resume.path and resume.epoch >= total_epochs and not resume.step:
        print(f"{run_dir} has already finished training ({resume.epoch} of {total_epochs} epochs, {resume.path}); "
              "nothing to do (--set train.epochs=N with a larger N trains on; a new --run-dir starts over)", flush=True)
        if chief:
            run_layout.write_state(run_dir, resume.epoch, total_epochs, finished=True)
        return {"steps_per_epoch": None, "epochs_done": resume.epoch, "val_perplexity": None, "replicas": replicas,
                "resumed_from": resume.path, "xla": None, "seconds": 0.0, "already_finished": True}
    trainer = _Trainer(ctx, strategy, chief=chief, verbose=verbose, extra_callbacks=callbacks)
    if resume.path:
        where = f"epoch {resume.epoch} of {trainer.total_epochs}" + (
            f", step {resume.step} of {trainer.epoch_steps(resume.epoch)}" if resume.step else "")
        print(f"resuming {run_dir} from {resume.path} ({where})", flush=True)

    history: dict = {"steps_per_epoch": trainer.steps, "epochs_done": resume.epoch, "val_perplexity": None,
                     "replicas": replicas, "resumed_from": resume.path, "xla": None, "already_finished": False}
    began = time.time()
    for phase in trainer.budget.phases:
        if resume.epoch < phase.last_epoch:
            trainer.run_phase(phase, history)
    if chief:
        run_layout.write_state(run_dir, history["epochs_done"], trainer.total_epochs, finished=True)
    else:
        shutil.rmtree(write_dir, ignore_errors=True)
    history["seconds"] = time.time() - began
    return history


class _Trainer:
    """The datasets of a run and the fitting of one phase."""

    def __init__(self, ctx: run_context.RunContext, strategy: tf.distribute.Strategy, *, chief: bool,
                 verbose: int, extra_callbacks: list | None = None):
        self.ctx, self.strategy, self.chief, self.verbose = ctx, strategy, chief, verbose
        self.extra_callbacks = list(extra_callbacks or [])
        t = ctx.config.train
        manifest = ctx.manifest
        self.budget = budget_lib.budget_for(ctx.config, manifest)
        self.steps, self.total_epochs = self.budget.steps_per_epoch, self.budget.total_epochs
        print(budget_lib.describe(self.budget), flush=True)
        print(pipeline.describe_buckets(ctx.config, manifest, ctx.sizes.caption_length), flush=True)
        train_ds = make_dataset(ctx.config, manifest, ctx.vocab, "train", training=True, sizes=ctx.sizes).repeat()
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = distribute.shard_policy(strategy,
                                                                                    len(manifest.files("train")))
        self.train_ds = train_ds.with_options(options)
        has_val = "val" in manifest.splits and manifest.split("val").num_images > 0
        self.val_batch_size = max(t.batch_size, 32) if has_val else None
        if not has_val:
            print(f"no validation split: {manifest.data_dir} has no val images, so no val perplexity is "
                  "computed (give the conversion a val split, e.g. --val-fraction, to get one)", flush=True)
        self.val_ds = make_dataset(ctx.config, manifest, ctx.vocab, "val", training=False, sizes=ctx.sizes,
                                   batch_size=self.val_batch_size) if self.val_batch_size else None
        # A few fixed val images captioned into TensorBoard each epoch (on the chief only).
        self.samples = fixed_samples(manifest.files("val"), ctx.config.eval.sample_images,
                                     ctx.sizes.image_size) if chief and self.val_batch_size else None

    def epoch_steps(self, epoch: int) -> int:
        """Steps of (0-based) `epoch`: a phase of fractional passes ends with a shorter epoch."""
        return next((p.epoch_steps(epoch, self.steps) for p in self.budget.phases
                     if p.first_epoch <= epoch < p.last_epoch), self.steps)

    def run_phase(self, phase: budget_lib.Phase, history: dict) -> None:
        """Fits `phase` from the run's resume point (its optimizer restored when the phase was under way)."""
        ctx, strategy, t = self.ctx, self.strategy, self.ctx.config.train
        model, checkpoints, resume = ctx.model, ctx.checkpoints, ctx.resume
        show_and_tell.set_backbone_trainable(model, phase.backbone_trainable)
        schedule = learning_rate_schedule(ctx.config, phase)
        with strategy.scope():
            optimizer = make_optimizer(ctx.config, schedule, phase)
            optimizer.build(model.trainable_variables)
        start_epoch, start_step = resume.epoch, resume.step if resume.epoch >= phase.first_epoch else 0
        if resume.path and (start_epoch > phase.first_epoch or start_step > 0):
            # Same phase as the interrupted run: its optimizer state continues
            # (the model and epoch were restored by RunContext.create).
            with strategy.scope():
                checkpoints_lib.restore_optimizer(resume.path, phase.name, optimizer)
                if not callable(schedule):
                    # Keras keeps a constant learning rate in a variable, which the restore
                    # overwrote: the config's rate wins, as it does for schedules.
                    optimizer.learning_rate = schedule
            print(f"{phase.name}: optimizer restored at step {int(optimizer.iterations.numpy())}", flush=True)
        manager = checkpoints.epoch_manager(phase.name, optimizer)
        # The model fit trains; checkpoints always hold the full `model` (a head shares its layers).
        fit_target, fit_train_ds, fit_val_ds = model, self.train_ds, self.val_ds
        if phase.name == "scst":
            fresh = resume.epoch < phase.first_epoch or (resume.epoch == phase.first_epoch and not resume.step)
            if self.chief and fresh:
                kept = scst.keep_start_checkpoint(ctx.run_dir, checkpoints_lib.latest_checkpoint(ctx.run_dir))
                print(f"scst: starts from {kept} (kept there; evaluate --checkpoint {kept} scores it)", flush=True)
            frequencies = cider_reward.DocumentFrequencies.for_run(
                checkpoints.write_dir, ctx.manifest, run_layout.vocab_sha1(ctx.vocab), write=True)
            print(f"scst: CIDEr-D document frequencies of {frequencies.num_documents} train images "
                  f"({len(frequencies.keys)} n-grams), {t.scst_samples} samples per image, baseline "
                  f"{t.scst_baseline}", flush=True)
            fit_train_ds = scst.make_scst_dataset(ctx.config, ctx.manifest, ctx.vocab, ctx.sizes, frequencies)
            fit_train_ds = fit_train_ds.with_options(self.train_ds.options())
            fit_model = scst.compile_for_scst(model, optimizer, ctx.config, ctx.vocab, frequencies, strategy)
            history["xla"] = ("on (the backbone and the model's part; sampling and reward outside)"
                              if t.jit_compile else "off")
        else:
            if t.feature_cache and not phase.backbone_trainable:
                fit_target, fit_train_ds, fit_val_ds = feature_cache.frozen_phase(
                    ctx, val_batch_size=self.val_batch_size)
            fit_model = distribute.compile_for_fit(fit_target, optimizer, ctx.config, strategy)
            history["xla"] = distribute.xla_description(fit_model)
        begin = max(phase.first_epoch, start_epoch)
        print(f"{phase.name}: epochs {begin + 1}-{phase.last_epoch}, {self.steps} steps/epoch, backbone "
              f"{'trainable' if phase.backbone_trainable else 'frozen'}"
              f"{' (from the feature cache)' if fit_target is not model else ''}, XLA {history['xla']}, "
              f"{strategy.num_replicas_in_sync} replica(s), precision {t.precision}", flush=True)

        fit_verbose = self.verbose if self.chief else 0

        def callbacks(first_step: int) -> list:
            logs = os.path.join(checkpoints.write_dir, run_layout.LOGS)
            out = [StopOnNonFiniteLoss(ctx.run_dir, phase.learning_rate)]
            if fit_val_ds is not None:
                # Keras' epoch line (progress bar or verbose=2) shows val_perplexity; without one, print it.
                out.append(PerplexityCallback(fit_val_ds, announce=fit_verbose == 0))
            if t.backup_every_steps > 0:
                out.append(BackupCallback(checkpoints.backup_manager(phase.name, optimizer), checkpoints.epoch,
                                          checkpoints.step, t.backup_every_steps, self.steps, model, optimizer,
                                          first_step))
            out += [CheckpointCallback(manager, checkpoints.epoch, ctx.run_dir, self.total_epochs, model, optimizer,
                                       chief=self.chief)]
            if self.samples is not None:
                settings = ctx.config.decode.resolve(strategy="beam", beam_size=ctx.config.eval.sample_beam_size,
                                                     num_captions=1)
                out.append(SampleCaptions(model, self.samples, ctx.vocab, settings, logs))
            out.append(EpochSummaries(logs, loss_is_nll=not t.label_smoothing and phase.name != "scst"))
            out += list(self.extra_callbacks)
            return out + ([compile_notice] if self.verbose and self.chief and history["xla"] != "off" else [])

        compile_notice = CompileNotice(f"{phase.name}: compiling the training step with XLA "
                                       "(the first step takes longer)")

        fits = []  # (epochs, initial_epoch, steps, first_step) of each fit call
        if start_step and begin == start_epoch:
            # The interrupted epoch's remaining steps (the data order restarts; see README).
            fits.append((begin + 1, begin, phase.epoch_steps(begin, self.steps) - start_step, start_step))
            begin += 1
        last = phase.last_epoch
        whole = last - (phase.last_epoch_steps != self.steps)  # a fractional pass ends with a short epoch
        if begin < whole:
            fits.append((whole, begin, self.steps, 0))
        if max(begin, whole) < last:
            fits.append((last, last - 1, phase.last_epoch_steps, 0))
        for epochs, initial_epoch, epoch_steps, first_step in fits:
            with strategy.scope(), _naming_damaged_shards(ctx.manifest):
                fit = fit_model.fit(fit_train_ds, epochs=epochs, initial_epoch=initial_epoch,
                                    steps_per_epoch=epoch_steps, callbacks=callbacks(first_step),
                                    verbose=fit_verbose, shuffle=False)
            if fit.history.get("val_perplexity"):
                history["val_perplexity"] = fit.history["val_perplexity"][-1]
        history["epochs_done"] = phase.last_epoch
