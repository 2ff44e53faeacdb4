"""The optimizer and learning-rate schedule of a training phase.

The schedule is in steps derived from the manifest's counts (steps per epoch
x epochs), never a typed count.
"""

from __future__ import annotations

import keras

from caption_app.config import Config


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
