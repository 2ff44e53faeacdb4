"""Masked cross-entropy: the training loss and the sums perplexity needs.

Targets use id 0 (`<pad>`) for padding; padded positions (and whole padded
captions of images with fewer captions) carry no weight.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from caption_app.data.vocabulary import PAD_ID


def token_loss(targets, logits, label_smoothing: float = 0.0):
    """targets [..., T] int, logits [..., T, V] -> (loss [..., T] float32, mask [..., T] float32).

    The cross-entropy -log p(target) = logsumexp(logits) - logits[target], computed without
    materializing the log-probabilities (bench/RESULTS.md, "The loss's form").
    label_smoothing=e trains towards (1 - e) on the target word and e spread evenly over the
    vocabulary: (1 - e) * nll + e * mean over words of -log p, where the mean of -log p is
    logsumexp - mean(logits). Words never seen after a context are then not pushed towards
    probability 0. Perplexity is always measured without smoothing (`token_nll`).
    """
    targets = ops.cast(targets, "int32")
    logits = ops.cast(logits, "float32")
    target_logit = ops.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    loss = ops.logsumexp(logits, axis=-1) - target_logit
    if label_smoothing:
        loss = loss - label_smoothing * (ops.mean(logits, axis=-1) - target_logit)
    mask = ops.cast(ops.not_equal(targets, PAD_ID), "float32")
    return loss * mask, mask


def token_nll(targets, logits):
    """targets [..., T] int, logits [..., T, V] -> (nll [..., T] float32, mask [..., T] float32):
    the plain cross-entropy per real token (what perplexity reads)."""
    return token_loss(targets, logits)


@keras.saving.register_keras_serializable(package="caption_app")
class MaskedCrossEntropy(keras.losses.Loss):
    """Mean cross-entropy over real (non-pad) target tokens of the batch (im2txt's loss), optionally
    label-smoothed (`token_loss`)."""

    def __init__(self, label_smoothing: float = 0.0, name="masked_cross_entropy", **kwargs):
        kwargs.pop("reduction", None)
        super().__init__(name=name, reduction="none", **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        loss, mask = token_loss(y_true, y_pred, self.label_smoothing)
        return ops.sum(loss) / ops.maximum(ops.sum(mask), 1.0)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def batch_nll_sums(model: keras.Model, inputs, targets):
    """One batch's (sum of token cross-entropy float64, number of tokens int64)."""
    nll, mask = token_nll(targets, model(inputs, training=False))
    return tf.reduce_sum(tf.cast(nll, tf.float64)), tf.reduce_sum(tf.cast(mask, tf.int64))


class DatasetNLL:
    """Sum of per-token cross-entropy and number of tokens over a whole dataset.

    Holds one traced batch function per model, so calling it every epoch does
    not retrace. Perplexity is exp(total_nll / total_tokens).
    """

    def __init__(self, model: keras.Model):
        self._batch_sums = tf.function(lambda inputs, targets: batch_nll_sums(model, inputs, targets),
                                       reduce_retracing=True)

    def __call__(self, dataset: tf.data.Dataset) -> tuple[float, int]:
        """dataset yields (inputs, targets, ...) -> (total_nll, total_tokens)."""
        total_nll, total_tokens = 0.0, 0
        for batch in dataset:
            nll, tokens = self._batch_sums(batch[0], batch[1])
            total_nll += float(nll)
            total_tokens += int(tokens)
        return total_nll, total_tokens
