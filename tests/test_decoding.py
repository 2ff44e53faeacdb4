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


# ---------------------------------------------------------------- strategies' settings


@pytest.mark.parametrize("kwargs,message", [
    (dict(strategy="top_k"), r"strategy must be one of beam, greedy, sample, got 'top_k' \(--strategy\)"),
    (dict(temperature=0.0), r"temperature must be a finite number > 0, got 0.0 \(--temperature\)"),
    (dict(temperature=-1.0), r"temperature must be a finite number > 0, got -1.0 \(--temperature\)"),
    (dict(temperature=float("inf")), r"temperature must be a finite number > 0, got inf"),
    (dict(temperature=float("nan")), r"temperature must be a finite number > 0, got nan"),
    (dict(top_k=-1), r"top_k must be an integer >= 0 \(0: off\), got -1 \(--top-k\)"),
    (dict(top_k=2.5), r"top_k must be an integer >= 0 \(0: off\), got 2.5 \(--top-k\)"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\] \(1: off\), got 0.0 \(--top-p\)"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\] \(1: off\), got 1.5 \(--top-p\)"),
    (dict(top_p=float("nan")), r"top_p must be in \(0, 1\] \(1: off\), got nan \(--top-p\)"),
    (dict(seed=1.5), r"seed must be an integer, got 1.5 \(--seed\)"),
    (dict(seed=True), r"seed must be an integer, got True \(--seed\)"),
    (dict(no_repeat_ngram=-2), r"no_repeat_ngram must be an integer >= 0 \(0: off\), got -2 \(--no-repeat-ngram\)"),
    (dict(strategy="greedy", num_captions=3),
     r"--num-captions 3 with --strategy greedy: greedy decoding gives one caption"),
])
def test_invalid_strategy_values_are_errors(kwargs, message):
    with pytest.raises(DecodeSettingsError, match=message):
        RUN.resolve(**kwargs)


def test_num_captions_means_what_the_strategy_returns():
    from caption_app.inference.settings import DEFAULT_NUM_SAMPLES

    assert DEFAULT_NUM_SAMPLES == 5
    assert RUN.resolve().num_captions == 4  # beam: the beam size, as before
    assert RUN.resolve(strategy="greedy").num_captions == 1  # 0: greedy's one caption
    assert RUN.resolve(strategy="greedy", num_captions=1).num_captions == 1
    assert RUN.resolve(strategy="sample").num_captions == DEFAULT_NUM_SAMPLES
    assert RUN.resolve(strategy="sample", num_captions=12).num_captions == 12  # not bounded by the beam size
    # A run's count belongs to its strategy: another strategy does not inherit it.
    beam_run = DecodeSettings(beam_size=4, num_captions=3)
    assert beam_run.resolve(strategy="greedy").num_captions == 1
    assert beam_run.resolve(strategy="sample").num_captions == DEFAULT_NUM_SAMPLES
    assert beam_run.resolve().num_captions == 3
    sample_run = DecodeSettings(strategy="sample", num_captions=8, beam_size=2)
    assert sample_run.resolve().num_captions == 8
    assert sample_run.resolve(strategy="beam").num_captions == 2


def test_none_keeps_the_runs_strategy_values():
    run = DecodeSettings(strategy="sample", temperature=0.7, top_k=5, top_p=0.9, seed=11, no_repeat_ngram=2)
    resolved = run.resolve()
    assert (resolved.strategy, resolved.temperature, resolved.top_k, resolved.top_p, resolved.seed,
            resolved.no_repeat_ngram) == ("sample", 0.7, 5, 0.9, 11, 2)
    # 0 is a value for these: top_k 0 and no_repeat_ngram 0 turn them off, seed 0 is a seed.
    changed = run.resolve(top_k=0, no_repeat_ngram=0, seed=0, temperature=1.5, top_p=1.0, strategy="greedy")
    assert (changed.strategy, changed.temperature, changed.top_k, changed.top_p, changed.seed,
            changed.no_repeat_ngram) == ("greedy", 1.5, 0, 1.0, 0, 0)


def test_old_decode_dicts_load_as_the_beam_search_they_meant(tmp_path):
    from caption_app.inference import strategies

    # An old export's assets/config.json "decode" dict (and an old config.json's "decode"): no new keys.
    old = {"beam_size": 4, "max_length": 12, "length_normalization": 0.5, "num_captions": 2, "words_per_beam": 0}
    settings = DecodeSettings(**old)
    assert (settings.strategy, settings.temperature, settings.top_k, settings.top_p, settings.seed,
            settings.no_repeat_ngram) == ("beam", 1.0, 0, 1.0, 0, 0)
    assert settings.to_strategy() == strategies.Beam(beam_size=4, num_results=2, length_normalization=0.5)
    config = config_lib.get_preset("tiny").to_dict()
    config["decode"] = dict(old)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert config_lib.load(str(path)).decode == settings
    # The new keys round-trip through config.json and --set.
    new = config_lib.override(config_lib.get_preset("tiny"), [
        "decode.strategy=sample", "decode.temperature=0.8", "decode.top_k=4", "decode.top_p=0.9",
        "decode.seed=7", "decode.no_repeat_ngram=3"])
    config_lib.save(new, str(path))
    loaded = config_lib.load(str(path))
    assert loaded.decode == new.decode and loaded.decode.strategy == "sample" and loaded.decode.top_p == 0.9
    assert loaded.validate() is loaded


def test_to_strategy_is_the_one_mapping():
    from caption_app.inference.strategies import Beam, Greedy, Sample

    assert DecodeSettings().to_strategy() == Beam(beam_size=3, num_results=3)
    assert RUN.to_strategy() == Beam(beam_size=4, num_results=4, length_normalization=0.5)
    assert DecodeSettings(beam_size=5, num_captions=2, words_per_beam=3, no_repeat_ngram=2).to_strategy() == Beam(
        beam_size=5, num_results=2, words_per_beam=3, no_repeat_ngram=2)
    assert DecodeSettings(strategy="greedy", length_normalization=0.7, no_repeat_ngram=2).to_strategy() == Greedy(
        length_normalization=0.7, no_repeat_ngram=2)
    assert DecodeSettings(strategy="sample", num_captions=0, temperature=0.5, top_k=3, top_p=0.8, seed=9,
                          no_repeat_ngram=1).to_strategy() == Sample(
        num_samples=5, temperature=0.5, top_k=3, top_p=0.8, seed=9, no_repeat_ngram=1)
    with pytest.raises(DecodeSettingsError, match="--top-p"):
        DecodeSettings(strategy="sample", top_p=2.0).to_strategy()


def test_cli_flags_default_to_the_run():
    import argparse

    from caption_app.inference.settings import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    defaults = vars(parser.parse_args([]))
    assert defaults == dict(beam_size=None, max_length=None, length_normalization=None, num_captions=None,
                            strategy=None, temperature=None, top_k=None, top_p=None, seed=None,
                            no_repeat_ngram=None)
    args = parser.parse_args(["--strategy", "sample", "--temperature", "0.7", "--top-k", "5", "--top-p", "0.9",
                              "--seed", "3", "--no-repeat-ngram", "2", "--num-captions", "8"])
    settings = RUN.resolve(**{k: v for k, v in vars(args).items()})
    assert settings == DecodeSettings(beam_size=4, max_length=9, length_normalization=0.5, num_captions=8,
                                      strategy="sample", temperature=0.7, top_k=5, top_p=0.9, seed=3,
                                      no_repeat_ngram=2)
    with pytest.raises(SystemExit):
        parser.parse_args(["--strategy", "nucleus"])
    for action in parser._actions[1:]:
        assert "default" in action.help and "the run's" in action.help or "the beam size" in action.help, action.help
