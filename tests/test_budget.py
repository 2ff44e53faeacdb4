"""The training budget in pair exposures (caption_app/training/budget.py) and the im2txt preset's schedule."""

from __future__ import annotations

import json
import os

import pytest
import tensorflow as tf

from caption_app.training import budget as budget_lib
from caption_app import config as config_lib
from caption_app.runs import checkpoints as checkpoints_lib
from caption_app.runs import layout as run_layout
from caption_app.data import manifest as manifest_lib
from caption_app.training.optimizers import learning_rate_schedule
from caption_app.training.train import train
from tests.conftest import convert_tiny_shapes, tiny_config
from tfrecords_tools import coco

# COCO 2014 as published: train2014 82,783 images / 414,113 captions, val2014 40,504 / 202,654
# (123,287 images, 616,767 captions). `--split-scheme im2txt` (tfrecords_tools/coco.py) keeps all of
# train2014 plus val2014's first int(0.85 * 40,504) images for train, the next 5% for val, the rest for
# test. Those 34,428 val images hold 172,250 captions, so train has 586,363 pairs: im2txt's
# `num_examples_per_epoch` (research/im2txt/im2txt/configuration.py line 87); its README ("Prepare the
# Training Data") reports the 20,267 test pairs, which leaves val 10,137.
VAL2014_IMAGES = 40_504
TRAIN_CUT = int(coco.IM2TXT_TRAIN_FRACTION * VAL2014_IMAGES)  # 34,428
VAL_CUT = int(coco.IM2TXT_VAL_END * VAL2014_IMAGES)  # 36,453
COCO_IM2TXT_SPLITS = {
    "train": (82_783 + TRAIN_CUT, 414_113 + 172_250),
    "val": (VAL_CUT - TRAIN_CUT, 10_137),
    "test": (VAL2014_IMAGES - VAL_CUT, 20_267),
}
# im2txt's run (research/im2txt/README.md, "Initial Training" and "Fine Tune the Inception v3 Model";
# research/im2txt/im2txt/train.py lines 37 and 69-77): 1,000,000 steps of 32 pairs at SGD 2.0 halved
# every int(586363 / 32 * 8) = 146,590 steps, then 2,000,000 more at a constant 0.0005.
IM2TXT_BATCH_PAIRS, IM2TXT_PHASE1_STEPS, IM2TXT_PHASE2_STEPS = 32, 1_000_000, 2_000_000


def write_manifest(directory, splits: dict, max_captions_per_image: int) -> manifest_lib.Manifest:
    """A manifest.json with these (images, captions) per split; its shard files are empty stand-ins,
    so it is loaded without counting their records (only the counts matter here)."""
    raw = {"format_version": manifest_lib.FORMAT_VERSION, "vocab_size": 12_000, "max_caption_words": 49,
           "max_captions_per_image": max_captions_per_image,
           "tokenizer": {"lowercase": True, "strip_punctuation": True, "tokenizer": "whitespace"},
           "splits": {name: {"num_images": n, "num_captions": c, "files": [f"{name}-00000-of-00001.tfrecord"]}
                      for name, (n, c) in splits.items()}}
    for name in splits:
        open(os.path.join(directory, f"{name}-00000-of-00001.tfrecord"), "w").close()
    with open(os.path.join(directory, manifest_lib.MANIFEST), "w") as f:
        json.dump(raw, f)
    return manifest_lib.load(str(directory), check_shards=False)


def test_the_coco_split_adds_up():
    assert (TRAIN_CUT, VAL_CUT) == (34_428, 36_453)
    assert sum(n for n, _ in COCO_IM2TXT_SPLITS.values()) == 123_287
    assert sum(c for _, c in COCO_IM2TXT_SPLITS.values()) == 616_767
    assert COCO_IM2TXT_SPLITS["train"] == (117_211, 586_363)


def test_im2txt_preset_on_coco_trains_what_im2txt_trained(tmp_path):
    config = config_lib.get_preset("im2txt")
    manifest = write_manifest(tmp_path, COCO_IM2TXT_SPLITS, max_captions_per_image=7)
    budget = budget_lib.budget_for(config, manifest)
    pairs = 586_363
    assert budget.train_pairs == pairs
    assert budget.pairs_per_step == 30  # 6 images x 5 captions; every COCO image has >= 5
    assert budget.learning_rate_scale == 1.0  # im2txt's rates, unscaled
    phase1, phase2 = budget.phases

    def passes(steps):
        return steps * budget.pairs_per_step / pairs

    # Decay every 8 passes; 54.6 + 109 passes (im2txt: 1M and 2M steps of 32 pairs).
    assert passes(phase1.decay_steps) == pytest.approx(8.0, abs=1e-3)
    assert passes(phase1.steps) == pytest.approx(IM2TXT_PHASE1_STEPS * IM2TXT_BATCH_PAIRS / pairs, abs=0.05)
    assert passes(phase1.steps) == pytest.approx(54.6, abs=0.01)
    assert passes(phase2.steps) == pytest.approx(IM2TXT_PHASE2_STEPS * IM2TXT_BATCH_PAIRS / pairs, abs=0.1)
    assert passes(phase2.steps) == pytest.approx(109, abs=0.2)
    # The same pair exposures as im2txt, within 0.1%.
    assert budget.pair_exposures(phase1.steps) == pytest.approx(32e6, rel=1e-3)
    assert budget.pair_exposures(phase2.steps) == pytest.approx(64e6, rel=1e-3)
    # Rates: 2.0 halved six times by the end of phase 1, then a constant 0.0005 with everything trainable.
    schedule = learning_rate_schedule(config, phase1)
    assert float(schedule(0)) == pytest.approx(2.0)
    assert float(schedule(phase1.decay_steps - 1)) == pytest.approx(2.0)
    assert float(schedule(phase1.decay_steps)) == pytest.approx(1.0)
    assert float(schedule(phase1.steps - 1)) == pytest.approx(0.5 ** 6 * 2.0)
    assert not phase1.backbone_trainable and phase2.backbone_trainable
    assert learning_rate_schedule(config, phase2) == pytest.approx(0.0005)
    assert config.train.clip_gradient_norm == 5.0
    assert config.model.lstm_dropout == pytest.approx(0.3)  # lstm_dropout_keep_prob 0.7
    assert config.model.init_scale == 0.08
    # Checkpointed epochs: 55 in phase 1 (the last is 0.6 pass), 110 in phase 2.
    assert (phase1.num_epochs, phase2.first_epoch, budget.total_epochs) == (55, 55, 165)
    assert phase1.last_epoch_steps == phase1.steps - 54 * budget.steps_per_epoch


def test_all_captions_per_image_keep_one_pass_over_the_images():
    # captions_per_image 0 (the manifest's maximum): an epoch is images // batch, as it always was.
    config = tiny_config("train.batch_size=6", "train.epochs=3", "data.captions_per_image=0")
    for images, captions, most in ((41, 205, 5), (42, 205, 7), (96, 96, 1), (7, 9, 3), (123_287, 616_767, 7)):
        budget = budget_lib.resolve_budget(config, num_images=images, num_captions=captions,
                                           max_captions_per_image=most)
        assert budget.steps_per_epoch == images // 6  # the last partial batch is dropped
        (phase,) = budget.phases
        assert (phase.steps, phase.num_epochs, phase.last_epoch_steps) == (
            3 * budget.steps_per_epoch, 3, budget.steps_per_epoch)
    with pytest.raises(ValueError, match="train.batch_size=6"):
        budget_lib.resolve_budget(config, num_images=5, num_captions=25, max_captions_per_image=5)


def test_fewer_captions_per_image_take_more_steps_per_pass():
    # 100 images x 5 captions: 1 caption per image exposes a fifth of the pairs per pass over the images.
    one = budget_lib.resolve_budget(tiny_config("train.batch_size=10", "data.captions_per_image=1"),
                                    num_images=100, num_captions=500, max_captions_per_image=5)
    five = budget_lib.resolve_budget(tiny_config("train.batch_size=10", "data.captions_per_image=5"),
                                     num_images=100, num_captions=500, max_captions_per_image=5)
    assert (one.pairs_per_step, one.steps_per_epoch) == (10, 50)
    assert (five.pairs_per_step, five.steps_per_epoch) == (50, 10)


def test_linear_scaling_and_warmup():
    config = tiny_config("train.batch_size=32", "data.captions_per_image=5", "train.reference_batch_pairs=32",
                         "train.optimizer=sgd", "train.learning_rate=2.0", "train.lr_schedule=staircase",
                         "train.lr_decay_epochs=2", "train.warmup_epochs=0.5", "train.epochs=6")
    budget = budget_lib.resolve_budget(config, num_images=640, num_captions=3200, max_captions_per_image=5)
    (phase,) = budget.phases
    assert budget.learning_rate_scale == 5.0 and phase.learning_rate == 10.0
    assert (budget.steps_per_epoch, phase.decay_steps, phase.warmup_steps) == (20, 40, 10)
    schedule = learning_rate_schedule(config, phase)
    values = [float(schedule(s)) for s in (0, 5, 10, 39, 40, 80)]
    assert values == pytest.approx([0.0, 5.0, 10.0, 10.0, 5.0, 2.5])
    # Phase 2 has its own schedule when given; "" keeps phase 1's.
    config = config_lib.override(config, ["train.fine_tune_epochs=1", "train.fine_tune_lr_schedule=constant"])
    phase2 = budget_lib.resolve_budget(config, num_images=640, num_captions=3200, max_captions_per_image=5).phases[1]
    assert phase2.schedule == "constant" and phase2.warmup_steps == 0
    assert learning_rate_schedule(config, phase2) == pytest.approx(0.0005 * 5)
    config = config_lib.override(config, ["train.fine_tune_lr_schedule="])
    assert budget_lib.resolve_budget(config, num_images=640, num_captions=3200,
                                     max_captions_per_image=5).phases[1].schedule == "staircase"


def test_old_config_json_with_whole_epochs_loads_as_passes(tmp_path):
    old = config_lib.get_preset("tiny").to_dict()
    old["train"]["epochs"], old["train"]["fine_tune_epochs"] = 16, 2
    for new_field in ("reference_batch_pairs", "fine_tune_lr_schedule"):
        del old["train"][new_field]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(old))
    loaded = config_lib.load(str(path))
    assert loaded.train.epochs == 16.0 and isinstance(loaded.train.epochs, float)
    assert loaded.train.fine_tune_epochs == 2.0 and isinstance(loaded.train.fine_tune_epochs, float)
    assert loaded.train.reference_batch_pairs == 0 and loaded.train.fine_tune_lr_schedule == ""


def test_fractional_passes_end_with_a_short_epoch(tmp_path):
    data = convert_tiny_shapes(tmp_path / "data", num_train=24, num_val=4, num_test=4)
    run = str(tmp_path / "run")
    config = tiny_config("train.batch_size=4", "train.epochs=1.5")  # 6 steps per epoch: 6 + 3
    history = train(config, data, run, verbose=0)
    assert history["steps_per_epoch"] == 6 and history["epochs_done"] == 2
    assert run_layout.read_state(run) == {"epochs_done": 2, "total_epochs": 2, "finished": True}
    reader = tf.train.load_checkpoint(checkpoints_lib.latest_checkpoint(run))
    iterations = next(k for k in reader.get_variable_to_shape_map()
                      if k.startswith("optimizer_phase1/") and "iterations" in k)
    assert int(reader.get_tensor(iterations)) == 9
