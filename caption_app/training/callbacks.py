"""The training callbacks: validation perplexity, epoch checkpoints, mid-epoch backups, NaN/Inf stop,
TensorBoard.

Listed in this order by `train`: StopOnNonFiniteLoss first (so a NaN step
raises before the backup of the same step), then PerplexityCallback,
BackupCallback, CheckpointCallback, SampleCaptions and EpochSummaries.

TensorBoard (RUN/logs) counts in epochs finished: the scalars of epoch 1 are
at step 1, beside checkpoint ckpt-1 and the metrics `evaluate` writes for it
(RUN/logs/eval_<split>). Tags: train/loss, train/perplexity,
train/learning_rate, validation/loss, validation/perplexity (the same names
under train/ and validation/, so TensorBoard overlays them), and
samples/captions (text) and samples/images of a few fixed validation images.
"""

from __future__ import annotations

import math
import os

import keras
import tensorflow as tf

from caption_app.evaluation import metrics as metrics_lib
from caption_app.runs import checkpoints as checkpoints_lib
from caption_app.runs import layout as run_layout
from caption_app.data import records
from caption_app.data.pipeline import decode_image
from caption_app.model.loss import DatasetNLL
from caption_app.inference.captioner import TrainedCaptioner
from caption_app.errors import CaptionAppError


class PerplexityCallback(keras.callbacks.Callback):
    """Validation loss and perplexity each epoch, into the epoch's logs as `val_loss` (mean
    cross-entropy over all val tokens, the training loss' measure) and `val_perplexity`
    (exp of it); EpochSummaries writes them to TensorBoard."""

    def __init__(self, dataset: tf.data.Dataset, *, announce: bool = True):
        super().__init__()
        self.dataset = dataset
        self.announce = announce  # False when Keras prints the epoch's logs (fit verbose 1 or 2): they hold it
        self._nll = None

    def on_epoch_end(self, epoch, logs=None):
        if self._nll is None:
            self._nll = DatasetNLL(self.model)
        total_nll, tokens = self._nll(self.dataset)
        perplexity = metrics_lib.perplexity(total_nll, tokens)
        if logs is not None:
            logs["val_loss"] = total_nll / tokens
            logs["val_perplexity"] = perplexity
        if self.announce:
            print(f"epoch {epoch + 1}: val_perplexity {perplexity:.3f} ({tokens} tokens)", flush=True)


class EpochSummaries(keras.callbacks.Callback):
    """Each epoch's logs to TensorBoard at step epoch + 1 (epochs finished): `val_X` as
    validation/X, the others as train/X, plus train/perplexity (exp of the mean batch loss;
    not written when the loss is label-smoothed, `loss_is_nll=False`: it would not be a
    perplexity) and train/learning_rate. Replaces keras.callbacks.TensorBoard, whose epoch
    scalars sit one step before the checkpoint of the same epoch."""

    def __init__(self, log_dir: str, loss_is_nll: bool = True):
        super().__init__()
        self.log_dir, self._writers = log_dir, {}
        self.loss_is_nll = loss_is_nll

    def _writer(self, name: str):
        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(os.path.join(self.log_dir, name))
        return self._writers[name]

    def on_epoch_end(self, epoch, logs=None):
        scalars = {"train": {}, "validation": {}}
        for key, value in (logs or {}).items():
            if key.startswith("val_"):
                scalars["validation"][key[4:]] = value
            else:
                scalars["train"][key] = value
        train = scalars["train"]
        if self.loss_is_nll and "loss" in train and "perplexity" not in train:
            train["perplexity"] = math.exp(min(float(train["loss"]), 700.0))
        optimizer = getattr(self.model, "optimizer", None)
        optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # a LossScaleOptimizer's
        if optimizer is not None and "learning_rate" not in train:
            train["learning_rate"] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        for name, values in scalars.items():
            if values:
                with self._writer(name).as_default():
                    for key, value in values.items():
                        tf.summary.scalar(key, float(value), step=epoch + 1)
                self._writer(name).flush()

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


class SampleCaptions(keras.callbacks.Callback):
    """A few fixed validation images captioned after each epoch into TensorBoard (RUN/logs/samples):
    `samples/captions`, a text table (image, generated caption, first reference) at step epoch + 1,
    and `samples/images`, the images once per training process.

    Args:
      model: the full captioning model (also when a feature-cache head is what fits).
      samples: from `fixed_samples`.
      vocab: the run's vocabulary.
      settings: decode settings (a small beam keeps this cheap).
      log_dir: RUN/logs.
    """

    def __init__(self, model: keras.Model, samples: dict, vocab, settings, log_dir: str):
        super().__init__()
        self.samples, self.log_dir, self._writer, self._images_written = samples, log_dir, None, False
        captioner = TrainedCaptioner(model, vocab, decode=settings)
        self._caption = tf.function(lambda images: captioner.caption_pixels(images)["captions"][:, 0])

    def on_epoch_end(self, epoch, logs=None):
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "samples"))
        texts = [t.decode("utf-8") for t in self._caption(self.samples["images"]).numpy()]
        rows = ["| image | generated | reference |", "|---|---|---|"]
        for image_id, text, reference in zip(self.samples["image_ids"], texts, self.samples["references"]):
            rows.append("| " + " | ".join(_markdown_cell(c) for c in (image_id, text or "(empty)", reference)) + " |")
        with self._writer.as_default():
            tf.summary.text("samples/captions", "\n".join(rows), step=epoch + 1)
            if not self._images_written:
                tf.summary.image("samples/images", self.samples["images"] / 255.0, step=epoch + 1,
                                 max_outputs=len(texts))
                self._images_written = True
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _markdown_cell(text: str) -> str:
    # TensorBoard renders text summaries as markdown: a '|' would split the cell.
    return " ".join(text.split()).replace("|", "\\|")


def fixed_samples(files: list[str], count: int, image_size: int) -> dict | None:
    """The first `count` records of `files` (a split's shards, in order): {"images" [N, S, S, 3]
    float32 0-255, "image_ids" [N] str, "references" [N] str (each image's first caption)};
    None when there are none."""
    if count <= 0 or not files:
        return None
    images, image_ids, references = [], [], []
    for record in tf.data.TFRecordDataset(files).map(records.parse_example).take(count):
        images.append(decode_image(record["encoded"], image_size))
        image_ids.append(record["image_id"].numpy().decode("utf-8"))
        references.append(next((c.decode("utf-8") for c in record["captions"].numpy() if c), ""))
    if not images:
        return None
    return {"images": tf.stack(images), "image_ids": image_ids, "references": references}


class NonFiniteLossError(CaptionAppError, RuntimeError):
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
        kept = tf.train.latest_checkpoint(checkpoints_lib.checkpoint_dir(self.run_dir))
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
            run_layout.write_state(self.run_dir, epoch + 1, self.total_epochs, finished=False)


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


class CompileNotice(keras.callbacks.Callback):
    """Prints `text` once, as the first step begins (when XLA compiles it, which takes a while)."""

    def __init__(self, text: str):
        super().__init__()
        self.text, self.shown = text, False

    def on_train_batch_begin(self, batch, logs=None):
        if not self.shown:
            self.shown = True
            print(self.text, flush=True)
