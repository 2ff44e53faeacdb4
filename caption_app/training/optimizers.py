"""The optimizer and learning-rate schedule of a training phase.

The schedule is in steps that caption_app/training/budget.py derives from the
manifest's counts (passes over the train pairs), never a typed count.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from caption_app.training.budget import Phase
from caption_app.config import Config


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


def learning_rate_schedule(config: Config, phase: Phase):
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


def make_optimizer(config: Config, learning_rate, phase: Phase | None = None) -> keras.optimizers.Optimizer:
    """The configured optimizer (global-norm clipped), loss-scaled under mixed_float16.

    The SCST phase always uses Adam (its rates are Adam's: docs/training.md), with train.weight_decay."""
    t = config.train
    name = "adam" if phase is not None and phase.name == "scst" else t.optimizer
    clip = {"global_clipnorm": t.clip_gradient_norm} if t.clip_gradient_norm > 0 else {}
    if name == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate, **clip)
    elif name == "adam" and t.weight_decay > 0:
        optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=t.weight_decay, **clip)
    elif name == "adam":
        optimizer = keras.optimizers.Adam(learning_rate, **clip)
    else:
        raise ValueError(f"unknown train.optimizer {t.optimizer!r}; choose sgd or adam")
    if t.precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
