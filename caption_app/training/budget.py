"""The training budget in image-caption pair exposures: passes -> steps.

A batch holds `train.batch_size` images with `C` captions each (C =
`data.captions_per_image`, or the manifest's maximum), so a step exposes
`B x C` pairs where a one-caption-per-example trainer (im2txt) exposes `B`.
Durations in the config (`train.epochs`, `train.fine_tune_epochs`,
`train.lr_decay_epochs`, `train.warmup_epochs`) are therefore counted in
passes over the train split's pairs (its captions, from the manifest), and
`resolve_budget` turns them into optimizer steps for this batch:

    pairs per step  = B * min(C * images, pairs) / images     (= B * C when every image has >= C captions)
    steps per pass  = pairs / pairs per step                  (one checkpointed epoch: its floor)
    phase steps     = round(passes * steps per epoch); epochs = ceil(phase steps / steps per epoch)

With C at least the largest caption count (the default), a pass is exactly
one pass over the images, as before. With `train.reference_batch_pairs` set,
the configured learning rates are the rates of a batch of that many pairs
and are scaled linearly to this batch's pairs per step (Goyal et al. 2017);
a linear warmup (`train.warmup_epochs`) keeps the scaled rate's first steps
stable.

Pure arithmetic on the config and the manifest's counts: no TensorFlow.
"""

from __future__ import annotations

import dataclasses

from caption_app.config import Config


@dataclasses.dataclass(frozen=True)
class Phase:
    """One training phase, in optimizer steps."""

    name: str  # "phase1" | "phase2" | "scst"
    passes: float  # passes over the train pairs, as configured
    steps: int  # optimizer steps of the whole phase
    first_epoch: int  # epochs (checkpoints) finished before this phase
    num_epochs: int  # checkpointed epochs in it; all `steps_per_epoch` long but the last
    last_epoch_steps: int  # steps of its last epoch (shorter for fractional passes)
    backbone_trainable: bool
    schedule: str  # staircase | cosine | constant
    learning_rate: float  # the peak rate per step (after the linear scaling)
    decay_steps: int  # staircase: multiply by the decay factor every this many steps
    warmup_steps: int  # linear warmup from 0 (staircase and cosine)

    @property
    def last_epoch(self) -> int:
        """Epochs finished when this phase ends."""
        return self.first_epoch + self.num_epochs

    def epoch_steps(self, epoch: int, steps_per_epoch: int) -> int:
        """Steps of the (0-based, global) `epoch` of this phase."""
        return self.last_epoch_steps if epoch == self.last_epoch - 1 else steps_per_epoch


@dataclasses.dataclass(frozen=True)
class Budget:
    """What `train` runs: pairs per step, steps per epoch, and the phases."""

    train_pairs: int  # image-caption pairs of the train split (its captions)
    pairs_per_step: float
    steps_per_pass: float  # exact; an epoch is its floor (the last partial batch is dropped)
    steps_per_epoch: int
    learning_rate_scale: float  # pairs per step / train.reference_batch_pairs, or 1
    phases: tuple[Phase, ...]

    @property
    def total_epochs(self) -> int:
        return self.phases[-1].last_epoch if self.phases else 0

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.phases)

    def pair_exposures(self, steps: int) -> float:
        return steps * self.pairs_per_step


def resolve_budget(config: Config, *, num_images: int, num_captions: int, max_captions_per_image: int) -> Budget:
    """The train split's counts (from the manifest) + the config -> the phases in steps.

    Args:
      num_images, num_captions: the train split's images and captions (pairs).
      max_captions_per_image: the manifest's largest caption count of an image.
    """
    t = config.train
    if num_images <= 0 or num_captions <= 0:
        raise ValueError(f"the train split has {num_images} images and {num_captions} captions; "
                         "convert a dataset with train images")
    captions = min(config.data.captions_per_image or max_captions_per_image, max_captions_per_image)
    exposed = min(max(1, captions) * num_images, num_captions)  # pairs one pass over the images exposes
    steps_per_epoch = (num_images * num_captions) // (t.batch_size * exposed)  # floor(pairs / pairs per step)
    if steps_per_epoch == 0:
        raise ValueError(f"the train split has {num_images} images, fewer than train.batch_size={t.batch_size}")
    pairs_per_step = t.batch_size * exposed / num_images
    scale = pairs_per_step / t.reference_batch_pairs if t.reference_batch_pairs > 0 else 1.0

    phases = []
    # (name, passes, backbone trainable, schedule, rate at this batch)
    specs = [("phase1", t.epochs, not t.freeze_backbone, t.lr_schedule, t.learning_rate * scale)]
    if t.fine_tune_epochs > 0:
        specs.append(("phase2", t.fine_tune_epochs, True, t.fine_tune_lr_schedule or t.lr_schedule,
                      t.fine_tune_learning_rate * scale))
    if t.scst_epochs > 0:  # self-critical training: the backbone frozen; its rate is per sample, never scaled
        specs.append(("scst", t.scst_epochs, False, t.scst_lr_schedule, t.scst_learning_rate))
    first = 0
    for name, passes, trainable, schedule, rate in specs:
        if passes < 0:
            raise ValueError(f"{name} has {passes} passes; train.epochs, train.fine_tune_epochs and "
                             "train.scst_epochs must be >= 0")
        steps = round(passes * steps_per_epoch)
        if passes > 0 and steps == 0:
            steps = 1
        num_epochs = -(-steps // steps_per_epoch)
        last = steps - (num_epochs - 1) * steps_per_epoch if num_epochs else 0
        phases.append(Phase(
            name=name, passes=passes, steps=steps, first_epoch=first, num_epochs=num_epochs,
            last_epoch_steps=last, backbone_trainable=trainable, schedule=schedule,
            learning_rate=rate,
            decay_steps=max(1, round(t.lr_decay_epochs * steps_per_epoch)),
            warmup_steps=min(max(steps - 1, 0), round(t.warmup_epochs * steps_per_epoch))
            if schedule != "constant" and name != "scst" else 0))
        first += num_epochs
    return Budget(train_pairs=num_captions, pairs_per_step=pairs_per_step,
                  steps_per_pass=num_captions / pairs_per_step, steps_per_epoch=steps_per_epoch,
                  learning_rate_scale=scale, phases=tuple(phases))


def budget_for(config: Config, manifest) -> Budget:
    """`resolve_budget` with the train split's counts from a loaded manifest."""
    train = manifest.split("train")
    return resolve_budget(config, num_images=train.num_images, num_captions=train.num_captions,
                          max_captions_per_image=manifest.max_captions_per_image)


def describe(budget: Budget) -> str:
    """One line per phase: passes, steps, epochs, pair exposures, rates."""
    lines = [f"budget: {budget.train_pairs} train pairs, {budget.pairs_per_step:.1f} pairs/step, "
             f"{budget.steps_per_epoch} steps/epoch (one pass over the pairs)"
             + (f", learning rates x{budget.learning_rate_scale:.3g} (linear scaling)"
                if budget.learning_rate_scale != 1.0 else "")]
    for p in budget.phases:
        lines.append(f"  {p.name}: {p.passes:g} passes = {p.steps} steps in {p.num_epochs} epochs "
                     f"({budget.pair_exposures(p.steps):.4g} pair exposures), {p.schedule} from "
                     f"{p.learning_rate:.4g}" + (f", decay every {p.decay_steps} steps" if p.schedule == "staircase"
                                                 else "")
                     + (f", warmup {p.warmup_steps} steps" if p.warmup_steps else ""))
    return "\n".join(lines)


