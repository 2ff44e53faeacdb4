"""DecodeSettings: one meaning of the decode settings for evaluate, caption, export and beam_search."""

from __future__ import annotations

import glob
import json
import os

import pytest

from caption_app import config as config_lib
from caption_app.inference.settings import DecodeSettings, DecodeSettingsError

RUN = DecodeSettings(beam_size=4, max_length=9, length_normalization=0.5, num_captions=0)


def test_none_or_zero_use_the_run_config():
    for empty in (None, 0):
        assert RUN.resolve(beam_size=empty, max_length=empty, num_captions=empty) == DecodeSettings(4, 9, 0.5, 4)
    assert RUN.resolve() == DecodeSettings(4, 9, 0.5, 4)  # num_captions 0 in the config: the beam size
    assert RUN.resolve(beam_size=2) == DecodeSettings(2, 9, 0.5, 2)
    assert RUN.resolve(length_normalization=0.0).length_normalization == 0.0  # 0 is a value here
    assert DecodeSettings(4, 9, 0.5, 3).resolve(beam_size=5).num_captions == 3


@pytest.mark.parametrize("kwargs,message", [
    (dict(beam_size=-1), r"beam_size must be a positive integer, got -1 \(--beam-size\)"),
    (dict(max_length=-3), r"max_length must be a positive integer, got -3 \(--max-length\)"),
    (dict(num_captions=-2), r"num_captions must be a positive integer, got -2 \(--num-captions\)"),
    (dict(length_normalization=-0.1), r"length_normalization must be >= 0.*-0.1"),
    (dict(length_normalization=float("nan")), "length_normalization must be >= 0"),
])
def test_invalid_values_are_errors(kwargs, message):
    with pytest.raises(DecodeSettingsError, match=message):
        RUN.resolve(**kwargs)


def test_more_captions_than_the_beam_is_an_error_not_clamped():
    with pytest.raises(DecodeSettingsError, match="--num-captions 5 exceeds --beam-size 4"):
        RUN.resolve(num_captions=5)
    with pytest.raises(DecodeSettingsError, match="--num-captions 3 exceeds --beam-size 2"):
        DecodeSettings(4, 9, 0.0, 3).resolve(beam_size=2)  # the run's 3 captions, a smaller beam
    assert issubclass(DecodeSettingsError, ValueError)  # the CLIs print it as `error: ...`, status 2


def test_config_decode_section_and_the_old_eval_keys(tmp_path):
    config = config_lib.get_preset("tiny")
    assert config.decode == DecodeSettings(beam_size=2, max_length=8)
    # `--set eval.beam_size=...` (the old key) and `--set decode.beam_size=...` are the same setting.
    assert config_lib.override(config, ["eval.beam_size=5"]).decode.beam_size == 5
    assert config_lib.override(config, ["decode.num_captions=1"]).decode.num_captions == 1
    # A config.json written before `decode` existed: the eval section had the decode settings.
    old = config.to_dict()
    old["eval"] = {"batch_size": 8, "beam_size": 6, "max_length": 11, "length_normalization": 0.7}
    del old["decode"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(old))
    loaded = config_lib.load(str(path))
    assert loaded.decode == DecodeSettings(beam_size=6, max_length=11, length_normalization=0.7)
    assert loaded.eval.batch_size == 8


@pytest.mark.slow
def test_the_commands_agree(trained_run, tmp_path):
    from caption_app.inference.image_files import caption_files
    from caption_app.evaluation.evaluate import evaluate
    from export import saved_model

    run = trained_run.run_dir
    beam = trained_run.config.decode.beam_size
    paths = sorted(glob.glob(os.path.join(trained_run.data_dir, "raw", "images", "*.jpg")))[:1]
    assert paths
    (zero,) = caption_files(run, paths, beam_size=0, max_length=0)  # 0: the run's config
    assert len(zero["captions"]) == beam
    with pytest.raises(ValueError, match=f"--num-captions {beam + 1} exceeds --beam-size {beam}"):
        caption_files(run, paths, num_results=beam + 1)
    with pytest.raises(ValueError, match="beam_size must be a positive integer, got -1"):
        evaluate(run, "val", beam_size=-1, json_path=str(tmp_path / "m.json"), verbose=False)
    with pytest.raises(saved_model.ExportError, match=f"--num-captions {beam + 1} exceeds --beam-size {beam}"):
        saved_model.export(run, str(tmp_path / "models"), num_captions=beam + 1)
    with pytest.raises(saved_model.ExportError, match="max_length must be a positive integer, got -1"):
        saved_model.export(run, str(tmp_path / "models"), max_length=-1)
