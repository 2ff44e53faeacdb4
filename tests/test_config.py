"""Config: presets, the im2txt hyperparameters, --set overrides, save/load."""

from __future__ import annotations

import dataclasses
import json

import pytest

from caption_app import config as config_lib
from caption_app.config import Config


def test_presets_exist_and_docstrings_start_with_their_command():
    assert {"shapes", "im2txt", "tiny"} <= set(config_lib.PRESETS)
    for name, preset in config_lib.PRESETS.items():
        config = config_lib.get_preset(name)
        assert isinstance(config, Config)
        assert config.name == name
        assert preset.__doc__.strip().startswith(f"python -m caption_app train --config {name} ")


def test_im2txt_preset_has_the_original_hyperparameters():
    c = config_lib.get_preset("im2txt")
    assert c.model.backbone == "inception_v3"
    assert c.model.backbone_weights == "imagenet"
    assert c.data.image_size == 299
    assert c.model.embedding_size == 512
    assert c.model.lstm_units == 512
    assert c.model.lstm_dropout == pytest.approx(1 - 0.7)  # lstm_dropout_keep_prob 0.7
    assert c.model.init_scale == 0.08
    # im2txt's 32 pairs per step: 6 images x 5 captions (tests/test_budget.py pins the schedule on COCO).
    assert (c.train.batch_size, c.data.captions_per_image) == (6, 5)
    assert c.train.optimizer == "sgd"
    assert c.train.learning_rate == 2.0
    assert c.train.lr_schedule == "staircase"
    assert c.train.lr_decay_epochs == 8.0
    assert c.train.lr_decay_factor == 0.5
    assert c.train.clip_gradient_norm == 5.0
    assert c.train.freeze_backbone is True
    assert c.train.fine_tune_learning_rate == 0.0005
    assert c.train.fine_tune_lr_schedule == "constant"


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError) as err:
        config_lib.get_preset("flickr30k_huge")
    message = str(err.value)
    assert "flickr30k_huge" in message
    for name in ("shapes", "im2txt", "tiny"):
        assert name in message


def test_set_overrides_by_name():
    base = config_lib.get_preset("im2txt")
    c = config_lib.override(base, ["model.backbone=inception_resnet_v2", "model.backbone_weights=/w/x.weights.h5",
                                   "train.epochs=3", "train.batch_size=7"])
    assert c.model.backbone == "inception_resnet_v2"
    assert c.model.backbone_weights == "/w/x.weights.h5"
    assert c.train.epochs == 3 and isinstance(c.train.epochs, float)  # passes over the train pairs
    assert c.train.batch_size == 7 and isinstance(c.train.batch_size, int)
    # Everything else is untouched, and the original is not mutated (frozen).
    assert dataclasses.replace(c, model=base.model, train=base.train) == base
    assert config_lib.override(base, []) == base


def test_set_parses_floats_and_whitespace():
    c = config_lib.override(config_lib.get_preset("tiny"), [" train.learning_rate = 0.25 "])
    assert c.train.learning_rate == 0.25 and isinstance(c.train.learning_rate, float)
    c = config_lib.override(c, ["train.learning_rate=3"])
    assert c.train.learning_rate == 3.0 and isinstance(c.train.learning_rate, float)


@pytest.mark.parametrize("text,expected", [("true", True), ("True", True), ("1", True), ("yes", True),
                                           ("on", True), ("false", False), ("FALSE", False), ("0", False),
                                           ("no", False), ("off", False)])
def test_set_parses_bools(text, expected):
    for start in (True, False):
        base = config_lib.override(config_lib.get_preset("tiny"), [f"train.jit_compile={start}"])
        assert base.train.jit_compile is start
        assert config_lib.override(base, [f"train.jit_compile={text}"]).train.jit_compile is expected


def test_set_rejects_a_bad_bool():
    with pytest.raises(ValueError, match=r"train\.jit_compile.*maybe"):
        config_lib.override(config_lib.get_preset("tiny"), ["train.jit_compile=maybe"])


def test_set_parses_tuples():
    base = config_lib.get_preset("tiny")
    assert config_lib.override(base, ["data.augment=flip,color"]).data.augment == ("flip", "color")
    assert config_lib.override(base, ["data.augment= flip , crop "]).data.augment == ("flip", "crop")
    assert config_lib.override(base, ["data.augment=flip"]).data.augment == ("flip",)
    assert config_lib.override(base, ["data.augment=flip", "data.augment="]).data.augment == ()


@pytest.mark.parametrize("assignment", ["train.epochs=three", "train.batch_size=2.5", "train.batch_size=",
                                        "train.learning_rate=fast"])
def test_set_bad_number_is_a_clear_value_error(assignment):
    key, _, value = assignment.partition("=")
    with pytest.raises(ValueError) as err:
        config_lib.override(config_lib.get_preset("tiny"), [assignment])
    assert key in str(err.value)
    assert value in str(err.value)


def test_set_unknown_field_lists_the_sections_keys():
    with pytest.raises(ValueError) as err:
        config_lib.override(config_lib.get_preset("tiny"), ["train.epoch=3"])
    message = str(err.value)
    assert "train.epoch" in message
    for field in dataclasses.fields(config_lib.Train):
        assert field.name in message


@pytest.mark.parametrize("assignment", ["trian.epochs=3", "epochs=3", "train=3", "name.x=1"])
def test_set_unknown_section_lists_the_sections(assignment):
    with pytest.raises(ValueError) as err:
        config_lib.override(config_lib.get_preset("tiny"), [assignment])
    message = str(err.value)
    assert "unknown config key" in message
    for section in ("data", "model", "train", "eval"):
        assert section in message


def test_set_without_equals_sign_is_an_error():
    with pytest.raises(ValueError, match="key=value"):
        config_lib.override(config_lib.get_preset("tiny"), ["train.epochs"])


@pytest.mark.parametrize("name", sorted(config_lib.PRESETS))
def test_save_load_round_trip(tmp_path, name):
    config = config_lib.override(config_lib.get_preset(name), ["data.augment=flip,crop", "train.epochs=5",
                                                                "train.jit_compile=false", "data.bucket_lengths=9,14"])
    path = str(tmp_path / "config.json")
    config_lib.save(config, path)
    loaded = config_lib.load(path)
    assert loaded == config
    assert isinstance(loaded.data.augment, tuple) and loaded.data.bucket_lengths == (9, 14)
    assert json.load(open(path)) == config.to_dict() | {"data": {**config.to_dict()["data"],
                                                                 "augment": ["flip", "crop"],
                                                                 "bucket_lengths": [9, 14]}}


def test_load_rejects_unknown_keys(tmp_path):
    d = config_lib.get_preset("tiny").to_dict()
    d["train"]["epochz"] = 3
    path = tmp_path / "config.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="train.epochz"):
        config_lib.load(str(path))
