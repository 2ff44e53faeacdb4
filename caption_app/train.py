"""train(config, data_dir, run_dir): im2txt's two phases with model.fit and XLA.

Phase 1 trains with the backbone frozen (or not, `train.freeze_backbone`),
phase 2 (`train.fine_tune_epochs`) fine-tunes everything at its own learning
rate. Steps per epoch and the learning-rate schedule come from the manifest's
counts. Each epoch ends with a checkpoint (model, optimizer, epoch) and the
validation perplexity; a restarted run resumes after its last finished epoch.
"""

from __future__ import annotations

import os
import time

import keras
import tensorflow as tf

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


def learning_rate_schedule(config: Config, learning_rate: float, steps: int, epochs: int):
    """The schedule of one phase, in steps derived from the manifest (never a typed count)."""
    t = config.train
    if t.lr_schedule == "constant":
        return learning_rate
    if t.lr_schedule == "staircase":
        return keras.optimizers.schedules.ExponentialDecay(
            learning_rate, decay_steps=max(1, round(t.lr_decay_epochs * steps)), decay_rate=t.lr_decay_factor,
            staircase=True)
    if t.lr_schedule == "cosine":
        total = max(1, epochs * steps)
        warmup = min(total - 1, round(t.warmup_epochs * steps))
        return keras.optimizers.schedules.CosineDecay(
            0.0 if warmup else learning_rate, decay_steps=total - warmup, alpha=0.01,
            warmup_target=learning_rate if warmup else None, warmup_steps=warmup)
    raise ValueError(f"unknown train.lr_schedule {t.lr_schedule!r}; choose staircase, cosine or constant")


def make_optimizer(config: Config, learning_rate) -> keras.optimizers.Optimizer:
    t = config.train
    clip = {"global_clipnorm": t.clip_gradient_norm} if t.clip_gradient_norm > 0 else {}
    if t.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate, **clip)
    if t.optimizer == "adam":
        if t.weight_decay > 0:
            return keras.optimizers.AdamW(learning_rate, weight_decay=t.weight_decay, **clip)
        return keras.optimizers.Adam(learning_rate, **clip)
    raise ValueError(f"unknown train.optimizer {t.optimizer!r}; choose sgd or adam")


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


class CheckpointCallback(keras.callbacks.Callback):
    """Saves model, optimizer and epoch at the end of every epoch; records progress."""

    def __init__(self, manager: tf.train.CheckpointManager, epoch: tf.Variable, run_dir: str, total_epochs: int):
        super().__init__()
        self.manager, self.epoch, self.run_dir, self.total_epochs = manager, epoch, run_dir, total_epochs

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.assign(epoch + 1)
        self.manager.save(checkpoint_number=epoch + 1)
        run_dir_lib.write_state(self.run_dir, epoch + 1, self.total_epochs, finished=False)


def train(config: Config, data_dir: str, run_dir: str, *, verbose: int = 2) -> dict:
    """Trains (or resumes) a captioner.

    Args:
      config: the resolved config.
      data_dir: a converted dataset (manifest.json, vocab.txt, shards).
      run_dir: where checkpoints, logs and the run's description go.
      verbose: Keras fit verbosity.
    Returns:
      {"epochs_done", "val_perplexity", "seconds", "steps_per_epoch"}.
    """
    manifest = manifest_lib.load(data_dir)
    vocab = Vocabulary.load(manifest.vocab_path)
    if vocab.size != manifest.vocab_size:
        raise ValueError(f"{manifest.vocab_path} has {vocab.size} ids but the manifest says {manifest.vocab_size}")
    shapes = resolve_shapes(config, manifest)
    features_lib.check_config(config)
    # Refuse another architecture's run dir before touching anything in it.
    run_dir_lib.check_compatible(run_dir, run_dir_lib.fingerprint(config, vocab, shapes))
    resuming = run_dir_lib.has_checkpoint(run_dir)
    run_dir_lib.prepare(run_dir, config, manifest, vocab, shapes)

    keras.utils.set_random_seed(config.train.seed)
    t = config.train
    steps = steps_per_epoch(manifest.split("train").num_images, t.batch_size)
    total_epochs = t.epochs + t.fine_tune_epochs
    train_ds = make_dataset(config, manifest, vocab, "train", training=True, shapes=shapes).repeat()
    val_batch_size = max(t.batch_size, 32) if manifest.split("val").num_images else None
    val_ds = make_dataset(config, manifest, vocab, "val", training=False, shapes=shapes,
                          batch_size=val_batch_size) if val_batch_size else None

    # When resuming, the checkpoint has every weight: skip the ImageNet download.
    model = show_and_tell.build_model(config, vocab.size, backbone_weights="none" if resuming else None)
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    phases = [("phase1", 0, t.epochs, not t.freeze_backbone, t.learning_rate)]
    if t.fine_tune_epochs > 0:
        phases.append(("phase2", t.epochs, total_epochs, True, t.fine_tune_learning_rate))

    start_epoch = 0
    if resuming:
        latest = run_dir_lib.latest_checkpoint(run_dir)
        tf.train.Checkpoint(model=model, epoch=epoch).restore(latest).expect_partial()
        start_epoch = int(epoch.numpy())
        print(f"resuming {run_dir} from {latest} (epoch {start_epoch} of {total_epochs})", flush=True)

    history: dict = {"steps_per_epoch": steps, "epochs_done": start_epoch, "val_perplexity": None}
    began = time.time()
    for name, first, last, backbone_trainable, learning_rate in phases:
        if start_epoch >= last:
            continue
        show_and_tell.set_backbone_trainable(model, backbone_trainable)
        optimizer = make_optimizer(config, learning_rate_schedule(config, learning_rate, steps, last - first))
        optimizer.build(model.trainable_variables)
        checkpoint = tf.train.Checkpoint(model=model, epoch=epoch, **{f"optimizer_{name}": optimizer})
        if resuming and start_epoch > first:
            # Same phase as the interrupted run: its optimizer state continues
            # (the model and epoch were restored above).
            tf.train.Checkpoint(**{f"optimizer_{name}": optimizer}).restore(
                run_dir_lib.latest_checkpoint(run_dir)).expect_partial()
        manager = tf.train.CheckpointManager(checkpoint, run_dir_lib.checkpoint_dir(run_dir),
                                             max_to_keep=t.max_checkpoints_to_keep)
        # The model fit trains; checkpoints always hold the full `model` (a head shares its layers).
        fit_model, fit_train_ds, fit_val_ds = model, train_ds, val_ds
        if t.feature_cache and not backbone_trainable:
            fit_model, fit_train_ds, fit_val_ds = features_lib.frozen_phase(
                config, model, manifest, vocab, shapes, run_dir, val_batch_size=val_batch_size)
        fit_model.compile(optimizer=optimizer, loss=MaskedCrossEntropy(), jit_compile=t.jit_compile)
        if t.jit_compile and not fit_model.jit_compile:
            raise RuntimeError("Keras turned XLA off for this model (an LSTM that may use cuDNN?); "
                               "keep model.use_cudnn=false with train.jit_compile=true")
        callbacks = [CheckpointCallback(manager, epoch, run_dir, total_epochs),
                     keras.callbacks.TensorBoard(os.path.join(run_dir, run_dir_lib.LOGS), update_freq="epoch")]
        if fit_val_ds is not None:
            callbacks.insert(0, PerplexityCallback(fit_val_ds, os.path.join(run_dir, run_dir_lib.LOGS)))
        print(f"{name}: epochs {max(first, start_epoch) + 1}-{last}, {steps} steps/epoch, backbone "
              f"{'trainable' if backbone_trainable else 'frozen'}"
              f"{' (from the feature cache)' if fit_model is not model else ''}, "
              f"XLA {'on' if fit_model.jit_compile else 'off'}", flush=True)
        fit = fit_model.fit(fit_train_ds, epochs=last, initial_epoch=max(first, start_epoch),
                            steps_per_epoch=steps, callbacks=callbacks, verbose=verbose, shuffle=False)
        if fit.history.get("val_perplexity"):
            history["val_perplexity"] = fit.history["val_perplexity"][-1]
        history["epochs_done"] = last
    run_dir_lib.write_state(run_dir, history["epochs_done"], total_epochs, finished=True)
    history["seconds"] = time.time() - began
    return history
