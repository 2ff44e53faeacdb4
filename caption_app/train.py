"""train(config, data_dir, run_dir): im2txt's two phases with model.fit and XLA.

Phase 1 trains with the backbone frozen (or not, `train.freeze_backbone`),
phase 2 (`train.fine_tune_epochs`) fine-tunes everything at its own learning
rate. Durations are passes over the train pairs; steps per epoch, phase
lengths and the learning-rate schedule come from the manifest's counts
(caption_app/budget.py). Each epoch ends with a checkpoint (model, optimizer,
epoch) and the validation perplexity; a restarted run resumes after its last
finished epoch, or from a mid-epoch backup (`train.backup_every_steps`). A
NaN/Inf loss stops the run with NonFiniteLossError and nothing non-finite is
ever saved.

`train.strategy` picks the tf.distribute strategy (model, optimizer and
compile under its scope; `train.batch_size` is the global batch) and
`train.precision` the Keras dtype policy; see caption_app/distribute.py.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time

import keras
import tensorflow as tf

from caption_app import budget as budget_lib
from caption_app import distribute
from caption_app import features as features_lib
from caption_app import metrics as metrics_lib
from caption_app import run_dir as run_dir_lib
from caption_app.config import Config
from caption_app.data import manifest as manifest_lib
from caption_app.data.pipeline import make_dataset, resolve_shapes
from caption_app.data.vocabulary import Vocabulary
from caption_app.model import show_and_tell
from caption_app.model.loss import DatasetNLL, MaskedCrossEntropy


def steps_per_epoch(num_images: int, batch_size: int) -> int:
    """Full batches per epoch (the last partial batch is dropped for static XLA shapes)."""
    steps = num_images // batch_size
    if steps == 0:
        raise ValueError(f"the train split has {num_images} images, fewer than train.batch_size={batch_size}")
    return steps


@keras.saving.register_keras_serializable(package="caption_app")
class WarmupStaircase(keras.optimizers.schedules.LearningRateSchedule):
    """rate * min(1, step / warmup_steps) * decay_rate ** floor(step / decay_steps)."""

    def __init__(self, learning_rate: float, decay_steps: int, decay_rate: float, warmup_steps: int):
        self.learning_rate, self.decay_steps = learning_rate, decay_steps
        self.decay_rate, self.warmup_steps = decay_rate, warmup_steps

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        decayed = self.learning_rate * tf.pow(self.decay_rate, tf.floor(step / self.decay_steps))
        return decayed * tf.minimum(1.0, step / self.warmup_steps)

    def get_config(self):
        return {"learning_rate": self.learning_rate, "decay_steps": self.decay_steps,
                "decay_rate": self.decay_rate, "warmup_steps": self.warmup_steps}


def learning_rate_schedule(config: Config, phase: budget_lib.Phase):
    """The schedule of one phase, in steps derived from the manifest (never a typed count)."""
    t, rate = config.train, phase.learning_rate
    if phase.schedule == "constant":
        return rate
    if phase.schedule == "staircase":
        if phase.warmup_steps:
            return WarmupStaircase(rate, phase.decay_steps, t.lr_decay_factor, phase.warmup_steps)
        return keras.optimizers.schedules.ExponentialDecay(
            rate, decay_steps=phase.decay_steps, decay_rate=t.lr_decay_factor, staircase=True)
    if phase.schedule == "cosine":
        total, warmup = max(1, phase.steps), phase.warmup_steps
        return keras.optimizers.schedules.CosineDecay(
            0.0 if warmup else rate, decay_steps=total - warmup, alpha=0.01,
            warmup_target=rate if warmup else None, warmup_steps=warmup)
    raise ValueError(f"unknown {phase.name} learning-rate schedule {phase.schedule!r} (train.lr_schedule, "
                     "train.fine_tune_lr_schedule); choose staircase, cosine or constant")


def make_optimizer(config: Config, learning_rate) -> keras.optimizers.Optimizer:
    """The configured optimizer (global-norm clipped), loss-scaled under mixed_float16."""
    t = config.train
    clip = {"global_clipnorm": t.clip_gradient_norm} if t.clip_gradient_norm > 0 else {}
    if t.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate, **clip)
    elif t.optimizer == "adam" and t.weight_decay > 0:
        optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=t.weight_decay, **clip)
    elif t.optimizer == "adam":
        optimizer = keras.optimizers.Adam(learning_rate, **clip)
    else:
        raise ValueError(f"unknown train.optimizer {t.optimizer!r}; choose sgd or adam")
    if t.precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


class PerplexityCallback(keras.callbacks.Callback):
    """Validation perplexity each epoch: exp(mean cross-entropy over all val tokens)."""

    def __init__(self, dataset: tf.data.Dataset, log_dir: str):
        super().__init__()
        self.dataset = dataset
        self.writer = tf.summary.create_file_writer(os.path.join(log_dir, "validation"))
        self._nll = None

    def on_epoch_end(self, epoch, logs=None):
        if self._nll is None:
            self._nll = DatasetNLL(self.model)
        total_nll, tokens = self._nll(self.dataset)
        perplexity = metrics_lib.perplexity(total_nll, tokens)
        if logs is not None:
            logs["val_perplexity"] = perplexity
        print(f"epoch {epoch + 1}: val_perplexity {perplexity:.3f} ({tokens} tokens)", flush=True)
        with self.writer.as_default():
            tf.summary.scalar("perplexity", perplexity, step=epoch + 1)
        self.writer.flush()


class NonFiniteLossError(RuntimeError):
    """The loss (or the weights) became NaN/Inf; nothing after the last good checkpoint was saved."""


def _all_finite(variables) -> bool:
    checks = [tf.reduce_all(tf.math.is_finite(tf.convert_to_tensor(v))) for v in variables
              if keras.backend.is_float_dtype(v.dtype)]
    return bool(tf.reduce_all(checks)) if checks else True


def _check_finite(checkpointed_model: keras.Model, optimizer, what: str) -> None:
    """Raises NonFiniteLossError instead of saving NaN/Inf weights or optimizer slots."""
    variables = list(checkpointed_model.weights) + (list(optimizer.variables) if optimizer is not None else [])
    if not _all_finite(variables):
        raise NonFiniteLossError(
            f"training stopped: the weights became NaN/Inf before {what}, which was NOT saved; the last good "
            "checkpoint is kept. Lower train.learning_rate, keep train.clip_gradient_norm > 0, or train in "
            "float32 (train.precision=float32)")


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops at the first step whose loss is NaN/Inf, with a message, before anything else saves.

    Keras' TerminateOnNaN only stops; this raises NonFiniteLossError (the CLI
    prints it and exits with status 2) and, listed first, runs before the
    backup callback of the same step. The epoch-end checkpoint never comes.
    """

    def __init__(self, run_dir: str, learning_rate: float):
        super().__init__()
        self.run_dir, self.learning_rate, self.epoch = run_dir, learning_rate, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(float(loss)):
            return
        self.model.stop_training = True
        kept = tf.train.latest_checkpoint(run_dir_lib.checkpoint_dir(self.run_dir))
        raise NonFiniteLossError(
            f"training stopped: the loss became {float(loss)} at epoch {self.epoch + 1}, step {batch + 1}. "
            f"Nothing after it was saved; the last good checkpoint is {kept or 'none (no epoch finished)'}. "
            f"Lower train.learning_rate (now {self.learning_rate}), keep train.clip_gradient_norm > 0, or "
            "train in float32 (train.precision=float32), then rerun the same command to resume")


class CheckpointCallback(keras.callbacks.Callback):
    """Saves model, optimizer and epoch at the end of every epoch; records progress.

    tf.train.CheckpointManager writes a checkpoint atomically: the variables
    go to a `ckpt-N_temp` dir and are merged into `ckpt-N.data-*` and
    `ckpt-N.index`, then the `checkpoint` file naming the latest is replaced
    atomically (written to a temp name, renamed). A kill mid-save leaves the
    previous checkpoint the latest. Only the newest `max_to_keep` are kept.
    """

    def __init__(self, manager: tf.train.CheckpointManager, epoch: tf.Variable, run_dir: str, total_epochs: int,
                 model: keras.Model, optimizer, *, chief: bool = True):
        super().__init__()
        self.manager, self.epoch, self.run_dir, self.total_epochs = manager, epoch, run_dir, total_epochs
        self.checkpointed_model, self.optimizer, self.chief = model, optimizer, chief

    def on_epoch_end(self, epoch, logs=None):
        _check_finite(self.checkpointed_model, self.optimizer, f"the checkpoint of epoch {epoch + 1}")
        self.epoch.assign(epoch + 1)
        self.manager.save(checkpoint_number=epoch + 1)
        if self.chief:
            run_dir_lib.write_state(self.run_dir, epoch + 1, self.total_epochs, finished=False)


class BackupCallback(keras.callbacks.Callback):
    """Mid-epoch backups: every `every` steps, model + optimizer + (epoch, step) to RUN/backup.

    One backup is kept (a CheckpointManager of its own, numbered by global
    step, so the same atomic writes as the epoch checkpoints). A run killed
    mid-epoch resumes from it when it is newer than the last epoch checkpoint.
    """

    def __init__(self, manager: tf.train.CheckpointManager, epoch: tf.Variable, step: tf.Variable, every: int,
                 steps_per_epoch: int, model: keras.Model, optimizer, first_step: int = 0):
        super().__init__()
        self.manager, self.epoch_var, self.step_var = manager, epoch, step
        self.every, self.steps, self.offset, self.epoch = every, steps_per_epoch, first_step, 0
        self.checkpointed_model, self.optimizer = model, optimizer

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        done = self.offset + batch + 1  # steps done in this epoch
        if done % self.every or done >= self.steps:
            return
        _check_finite(self.checkpointed_model, self.optimizer, f"the backup at epoch {self.epoch + 1} step {done}")
        self.epoch_var.assign(self.epoch)
        self.step_var.assign(done)
        self.manager.save(checkpoint_number=self.epoch * self.steps + done)

    def on_epoch_end(self, epoch, logs=None):
        self.offset = 0  # only the resumed epoch starts part-way


def _shard_policy(strategy: tf.distribute.Strategy, num_files: int) -> tf.data.experimental.AutoShardPolicy:
    """Each worker reads its own record files when there are enough; else every worker reads all
    and keeps its share of each global batch (the same batches as one worker would see)."""
    workers = distribute.num_workers(strategy)
    if workers > 1 and num_files >= workers:
        return tf.data.experimental.AutoShardPolicy.FILE
    return tf.data.experimental.AutoShardPolicy.DATA


def _compile(model: keras.Model, optimizer, config: Config, strategy: tf.distribute.Strategy) -> keras.Model:
    """Compiles what `fit` runs over `model` (a distribute.FitModel, or a ReplicaTrainer for several
    replicas) and returns it; `model` itself stays uncompiled (see FitModel).

    XLA stays on in every configuration: one replica (and TPU) compile the
    whole step (`jit_compile`, checked: Keras drops it silently for an LSTM
    that may use cuDNN); several replicas compile each replica's forward and
    backward pass (see caption_app/distribute.py for why).
    """
    t = config.train
    if distribute.needs_replica_trainer(strategy):
        trainer = distribute.ReplicaTrainer(model, clip_norm=t.clip_gradient_norm,
                                            multi_worker=distribute.num_workers(strategy) > 1,
                                            jit_compile=t.jit_compile)
        with strategy.scope():
            trainer.compile(optimizer=optimizer, loss=MaskedCrossEntropy(), jit_compile=False)
        return trainer
    fit_model = distribute.FitModel(model)
    with strategy.scope():
        fit_model.compile(optimizer=optimizer, loss=MaskedCrossEntropy(), jit_compile=t.jit_compile)
    if t.jit_compile and not fit_model.jit_compile:
        raise RuntimeError("Keras turned XLA off for this model (an LSTM that may use cuDNN?); "
                           "keep model.use_cudnn=false with train.jit_compile=true")
    return fit_model


def xla_description(fit_model: keras.Model) -> str:
    if isinstance(fit_model, distribute.ReplicaTrainer):
        return "on (per replica)" if fit_model.per_replica_jit_compile else "off"
    return "on" if fit_model.jit_compile else "off"


def _latest_backup(run_dir: str) -> tuple[str | None, int, int]:
    """(path, epochs finished, steps done in the next epoch) of RUN/backup's newest backup."""
    path = tf.train.latest_checkpoint(os.path.join(run_dir, run_dir_lib.BACKUP))
    if path is None:
        return None, 0, 0
    epoch, step = tf.Variable(0, dtype=tf.int64), tf.Variable(0, dtype=tf.int64)
    tf.train.Checkpoint(epoch=epoch, step=step).restore(path).expect_partial()
    return path, int(epoch.numpy()), int(step.numpy())


def train(config: Config, data_dir: str, run_dir: str, *, verbose: int = 2,
          strategy: tf.distribute.Strategy | None = None) -> dict:
    """Trains (or resumes) a captioner.

    Args:
      config: the resolved config.
      data_dir: a converted dataset (manifest.json, vocab.txt, shards).
      run_dir: where checkpoints, logs and the run's description go.
      verbose: Keras fit verbosity.
      strategy: a tf.distribute strategy (default: built from
        config.train.strategy, before any other TensorFlow op).
    Returns:
      {"epochs_done", "val_perplexity", "seconds", "steps_per_epoch",
       "replicas", "xla", "resumed_from"}.
    """
    t = config.train
    distribute.check_settings(t.strategy, t.precision)
    if strategy is None:
        strategy = distribute.make_strategy(t.strategy)
    chief = distribute.is_chief(strategy)
    manifest = manifest_lib.load(data_dir)
    vocab = Vocabulary.load(manifest.vocab_path)
    if vocab.size != manifest.vocab_size:
        raise ValueError(f"{manifest.vocab_path} has {vocab.size} ids but the manifest says {manifest.vocab_size}")
    shapes = resolve_shapes(config, manifest)
    features_lib.check_config(config)
    replicas = strategy.num_replicas_in_sync
    if t.batch_size % replicas:
        raise ValueError(f"train.batch_size={t.batch_size} is the global batch and must divide evenly over "
                         f"the {replicas} replicas; use a multiple of {replicas}")
    # Refuse another architecture's run dir before touching anything in it.
    run_dir_lib.check_compatible(run_dir, run_dir_lib.fingerprint(config, vocab, shapes))
    resuming = run_dir_lib.has_checkpoint(run_dir) or run_dir_lib.has_backup(run_dir)
    # Every worker saves (saving may need collectives); only the chief into the run dir.
    write_dir = run_dir if chief else tempfile.mkdtemp(prefix="caption_app_worker_")
    if chief:
        run_dir_lib.prepare(run_dir, config, manifest, vocab, shapes)

    keras.utils.set_random_seed(t.seed)
    budget = budget_lib.budget_for(config, manifest)
    steps, total_epochs = budget.steps_per_epoch, budget.total_epochs
    print(budget_lib.describe(budget), flush=True)
    train_ds = make_dataset(config, manifest, vocab, "train", training=True, shapes=shapes).repeat()
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = _shard_policy(strategy, len(manifest.files("train")))
    train_ds = train_ds.with_options(options)
    val_batch_size = max(t.batch_size, 32) if manifest.split("val").num_images else None
    val_ds = make_dataset(config, manifest, vocab, "val", training=False, shapes=shapes,
                          batch_size=val_batch_size) if val_batch_size else None

    with strategy.scope():
        # When resuming, the checkpoint has every weight: skip the ImageNet download.
        model = show_and_tell.build_model(config, vocab.size, backbone_weights="none" if resuming else None)
        epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")

    start_epoch, start_step, restore_from = 0, 0, None
    if resuming:
        latest = tf.train.latest_checkpoint(run_dir_lib.checkpoint_dir(run_dir))
        if latest:
            tf.train.Checkpoint(epoch=epoch).restore(latest).expect_partial()
            start_epoch, restore_from = int(epoch.numpy()), latest
        backup, backup_epoch, backup_step = _latest_backup(run_dir)
        if backup and backup_epoch == start_epoch and backup_step > 0 and start_epoch < total_epochs:
            start_step, restore_from = backup_step, backup
        resuming = restore_from is not None
    if resuming:
        with strategy.scope():
            tf.train.Checkpoint(model=model, epoch=epoch).restore(restore_from).expect_partial()
        epoch.assign(start_epoch)
        epoch_steps = next((p.epoch_steps(start_epoch, steps) for p in budget.phases
                            if p.first_epoch <= start_epoch < p.last_epoch), steps)
        where = f"epoch {start_epoch} of {total_epochs}" + (f", step {start_step} of {epoch_steps}"
                                                            if start_step else "")
        print(f"resuming {run_dir} from {restore_from} ({where})", flush=True)

    history: dict = {"steps_per_epoch": steps, "epochs_done": start_epoch, "val_perplexity": None,
                     "replicas": replicas, "resumed_from": restore_from, "xla": None}
    began = time.time()
    for phase in budget.phases:
        name, first, last, learning_rate = phase.name, phase.first_epoch, phase.last_epoch, phase.learning_rate
        backbone_trainable = phase.backbone_trainable
        if start_epoch >= last:
            continue
        show_and_tell.set_backbone_trainable(model, backbone_trainable)
        schedule = learning_rate_schedule(config, phase)
        with strategy.scope():
            optimizer = make_optimizer(config, schedule)
            optimizer.build(model.trainable_variables)
        checkpoint = tf.train.Checkpoint(model=model, epoch=epoch, **{f"optimizer_{name}": optimizer})
        if resuming and (start_epoch > first or start_step > 0):
            # Same phase as the interrupted run: its optimizer state continues
            # (the model and epoch were restored above).
            with strategy.scope():
                tf.train.Checkpoint(**{f"optimizer_{name}": optimizer}).restore(restore_from).expect_partial()
                if not callable(schedule):
                    # Keras keeps a constant learning rate in a variable, which the restore
                    # overwrote: the config's rate wins, as it does for schedules.
                    optimizer.learning_rate = schedule
            print(f"{name}: optimizer restored at step {int(optimizer.iterations.numpy())}", flush=True)
        manager = tf.train.CheckpointManager(checkpoint, run_dir_lib.checkpoint_dir(write_dir),
                                             max_to_keep=t.max_checkpoints_to_keep)
        # The model fit trains; checkpoints always hold the full `model` (a head shares its layers).
        fit_target, fit_train_ds, fit_val_ds = model, train_ds, val_ds
        if t.feature_cache and not backbone_trainable:
            fit_target, fit_train_ds, fit_val_ds = features_lib.frozen_phase(
                config, model, manifest, vocab, shapes, run_dir, val_batch_size=val_batch_size)
        fit_model = _compile(fit_target, optimizer, config, strategy)
        history["xla"] = xla_description(fit_model)
        begin = max(first, start_epoch)
        print(f"{name}: epochs {begin + 1}-{last}, {steps} steps/epoch, backbone "
              f"{'trainable' if backbone_trainable else 'frozen'}"
              f"{' (from the feature cache)' if fit_target is not model else ''}, XLA {history['xla']}, "
              f"{replicas} replica(s), precision {t.precision}", flush=True)

        def callbacks(first_step: int) -> list:
            logs = os.path.join(write_dir, run_dir_lib.LOGS)
            out = [StopOnNonFiniteLoss(run_dir, learning_rate)]
            if fit_val_ds is not None:
                out.append(PerplexityCallback(fit_val_ds, logs))
            if t.backup_every_steps > 0:
                backup_manager = tf.train.CheckpointManager(
                    tf.train.Checkpoint(model=model, epoch=epoch, step=step, **{f"optimizer_{name}": optimizer}),
                    os.path.join(write_dir, run_dir_lib.BACKUP), max_to_keep=1)
                out.append(BackupCallback(backup_manager, epoch, step, t.backup_every_steps, steps, model,
                                          optimizer, first_step))
            out += [CheckpointCallback(manager, epoch, run_dir, total_epochs, model, optimizer, chief=chief),
                    keras.callbacks.TensorBoard(logs, update_freq="epoch")]
            return out

        fits = []
        if start_step and begin == start_epoch:
            # The interrupted epoch's remaining steps (the data order restarts; see README).
            fits.append((begin + 1, begin, phase.epoch_steps(begin, steps) - start_step, start_step))
            begin += 1
        whole = last - (phase.last_epoch_steps != steps)  # a fractional pass ends the phase with a short epoch
        if begin < whole:
            fits.append((whole, begin, steps, 0))
        if max(begin, whole) < last:
            fits.append((last, last - 1, phase.last_epoch_steps, 0))
        for epochs, initial_epoch, epoch_steps, first_step in fits:
            with strategy.scope():
                fit = fit_model.fit(fit_train_ds, epochs=epochs, initial_epoch=initial_epoch,
                                    steps_per_epoch=epoch_steps, callbacks=callbacks(first_step),
                                    verbose=verbose if chief else 0, shuffle=False)
            if fit.history.get("val_perplexity"):
                history["val_perplexity"] = fit.history["val_perplexity"][-1]
        start_step = 0
        history["epochs_done"] = last
    if chief:
        run_dir_lib.write_state(run_dir, history["epochs_done"], total_epochs, finished=True)
    else:
        shutil.rmtree(write_dir, ignore_errors=True)
    history["seconds"] = time.time() - began
    return history
