"""What every command-line tool shares: help with each option's meaning and default, --version,
a quiet stderr (TensorFlow's C++ start-up lines dropped unless asked for), `--config` as a preset,
a JSON file or the run's own, and a finished run that says so."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib

import pytest

import caption_app
from caption_app import config as config_lib
from caption_app import quiet
from caption_app.__main__ import PRESET_NAMES, _parser as caption_parser
from caption_app.__main__ import main as cli_main
from export.__main__ import _parser as export_parser
from tests.conftest import REPO_ROOT, cli_env, run_cli, tiny_config
from tfrecords_tools.__main__ import build_parser as tfrecords_parser

PARSERS = {"caption_app": caption_parser, "tfrecords_tools": tfrecords_parser, "export": export_parser}


def _all_parsers(parser: argparse.ArgumentParser, name: str):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _all_parsers(sub, f"{name} {sub_name}")


def test_presets_named_in_the_cli_are_the_configs_presets():
    assert tuple(sorted(PRESET_NAMES)) == tuple(sorted(config_lib.PRESETS))


@pytest.mark.parametrize("tool", sorted(PARSERS))
def test_help_gives_every_option_a_meaning_and_its_default(tool):
    problems = []
    for name, parser in _all_parsers(PARSERS[tool](), f"python -m {tool}"):
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            flag = action.option_strings[-1] if action.option_strings else action.dest
            if not (action.help or "").strip():
                problems.append(f"{name} {flag}: no help")
            elif action.default not in (None, False, [], argparse.SUPPRESS) and "default" not in action.help.lower():
                if f"(default: {action.default})" not in text:
                    problems.append(f"{name} {flag}: default {action.default!r} not shown")
    assert not problems, problems


def test_version_on_every_cli():
    with open(REPO_ROOT / "pyproject.toml", "rb") as f:
        version = tomllib.load(f)["project"]["version"]
    assert caption_app.__version__ == version
    for module in ("caption_app", "tfrecords_tools", "export"):
        result = run_cli(module, "--version", timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"python -m {module} {version}"


def test_export_version_with_a_number_still_picks_the_model_version():
    args = export_parser().parse_args(["--run-dir", "r", "--out", "o", "--version", "7"])
    assert args.model_version == 7
    assert export_parser().parse_args(["--run-dir", "r", "--out", "o", "--model-version", "3"]).model_version == 3


def test_importing_the_package_does_not_import_tensorflow():
    code = "import sys, caption_app; caption_app.__version__; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


# ---------------------------------------------------------------------------
# Quiet stderr.

def test_noise_pattern_drops_the_start_up_lines_and_keeps_the_rest():
    noise = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1795992484.837581   23483 port.cc:153] oneDNN custom operations are on. You may see",
        "I0000 00:00:1795992484.838028   23483 cudart_stub.cc:31] Could not find cuda drivers on your machine",
        "E0000 00:00:1795992497.991171   23838 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error",
        "E0000 00:00:1795992673.604682   30388 util.cc:131] oneDNN supports DT_INT64 only on platforms with AVX-512.",
        "PTBTokenizer tokenized 61 tokens at 478.42 tokens per second.",
    ]
    kept = ["error: /x is not a run dir", "Traceback (most recent call last):",
            "W0000 00:00:1.0 1 bfc_allocator.cc:1] Allocator (GPU_0_bfc) ran out of memory"]
    assert all(quiet.NOISE.search(line) for line in noise)
    assert not any(quiet.NOISE.search(line) for line in kept)


def test_stderr_filter_passes_other_lines_and_progress_updates_through(tmp_path):
    code = ("import os, sys; from caption_app.quiet import StderrFilter; f = StderrFilter().start(); "
            "os.write(2, b'I0000 port.cc:153] oneDNN custom operations are on.\\nkept line\\n\\r 50%|##\\r100%|###'); "
            "print('python line', file=sys.stderr); f.stop()")
    out = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, timeout=60)
    assert out.stderr == b"kept line\n\r 50%|##\r100%|###python line\n"


def _noise_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if quiet.NOISE.search(line)]


@pytest.mark.slow
def test_clis_print_no_tensorflow_start_up_lines(tmp_path):
    """Without TF_CPP_MIN_LOG_LEVEL (as a user runs them): only the tools' own lines on stderr."""
    env = cli_env(TF_CPP_MIN_LOG_LEVEL=None)
    result = run_cli("caption_app", "caption", "--run-dir", str(tmp_path), "x.jpg", env=env)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: {tmp_path} is not a run dir (no config.json); train into it first"]
    result = run_cli("export", "--run-dir", str(tmp_path), "--out", str(tmp_path / "out"), env=env)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    result = run_cli("tfrecords_tools", "inspect", str(tmp_path), env=env)
    assert result.returncode == 2 and not _noise_lines(result.stderr), result.stderr
    # With --verbose TensorFlow's own logging is untouched (on this machine it has start-up lines to show).
    verbose = run_cli("caption_app", "caption", "--verbose", "--run-dir", str(tmp_path), "x.jpg", env=env)
    assert verbose.returncode == 2 and verbose.stderr.splitlines()[-1].startswith("error: ")


@pytest.mark.parametrize("args, user_level, expected", [
    ([], None, "2"), (["--verbose"], None, None), ([], "0", "0")])
def test_verbose_or_the_users_level_leave_tensorflow_logging_alone(tmp_path, args, user_level, expected):
    code = ("import os, sys; from caption_app.__main__ import main; "
            f"main(['caption', *{args!r}, '--run-dir', {str(tmp_path)!r}, 'x.jpg']); "
            "print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'))")
    out = subprocess.run([sys.executable, "-c", code], env=cli_env(TF_CPP_MIN_LOG_LEVEL=user_level),
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == str(expected), out.stderr


# ---------------------------------------------------------------------------
# --config: a preset, a JSON file, a run dir, or the run's own.

def test_config_from_a_preset_a_json_file_or_a_run_dir(trained_run, tmp_path):
    assert config_lib.from_name_or_file("tiny") == config_lib.get_preset("tiny")
    path = os.path.join(trained_run.run_dir, "config.json")
    assert config_lib.from_name_or_file(path) == trained_run.config
    assert config_lib.from_name_or_file(trained_run.run_dir) == trained_run.config
    old = json.loads(open(path).read())
    old["eval"]["beam_size"] = old["decode"].pop("beam_size")  # the key's old home
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert config_lib.from_name_or_file(str(tmp_path / "old.json")) == trained_run.config
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON config file"):
        config_lib.from_name_or_file(str(tmp_path / "bad.json"))
    (tmp_path / "odd.json").write_text(json.dumps({"train": {"epochz": 1}}))
    with pytest.raises(ValueError, match="epochz"):
        config_lib.from_name_or_file(str(tmp_path / "odd.json"))
    with pytest.raises(ValueError, match=r"neither a preset \(im2txt, shapes, tiny\) nor a JSON config"):
        config_lib.from_name_or_file("shapez")


def test_a_new_run_without_config_is_an_error_listing_the_presets(shapes_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli_main(["train", "--data", shapes_data, "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "give --config" in err[0] and "shapes, im2txt, tiny" in err[0], err
    assert not run.exists()
    assert cli_main(["cache-features", "--data", shapes_data, "--run-dir", str(run)]) == 2
    assert "give --config" in capsys.readouterr().err


def test_a_finished_run_says_so_and_keeps_its_config(trained_run, tmp_path, capsys):
    run = str(tmp_path / "run")
    shutil.copytree(trained_run.run_dir, run)
    before = open(os.path.join(run, "config.json")).read()
    assert cli_main(["train", "--data", trained_run.data_dir, "--run-dir", run, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "config: the run's own" in out
    assert re.search(r"has already finished training \(2 of 2 epochs", out), out
    assert "trained" not in out
    assert open(os.path.join(run, "config.json")).read() == before


@pytest.mark.slow
def test_resume_with_the_runs_own_config_and_a_longer_budget(trained_run, tmp_path, capsys):
    run = str(tmp_path / "run")
    shutil.copytree(trained_run.run_dir, run)
    assert cli_main(["train", "--data", trained_run.data_dir, "--run-dir", run, "--set", "train.epochs=3"]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "compiling the training step with XLA" in out
    assert re.search(r"trained 3 epochs in \d+s; val perplexity \d+\.\d{3}; run dir", out), out
    assert config_lib.load(os.path.join(run, "config.json")) == tiny_config(
        "train.epochs=3", "train.learning_rate=0.02")


@pytest.mark.slow
def test_training_on_a_terminal_shows_the_progress_bar_and_in_a_log_one_line_per_epoch(trained_run, tmp_path):
    """stdout a terminal (a pseudo-terminal here): Keras' bar (━ and the time per step); a pipe: no bar."""
    import pty
    import select

    from tests.conftest import cli_command

    def command(kind: str) -> list[str]:
        run = str(tmp_path / kind)
        shutil.copytree(trained_run.run_dir, run)
        return cli_command("caption_app", "train", "--data", trained_run.data_dir, "--run-dir", run,
                           "--set", "train.epochs=3", "--set", "train.jit_compile=false")  # bars, not XLA

    # Both at once (their start-ups overlap): the pipe in the background, read at the end.
    piped = subprocess.Popen(command("pipe"), cwd=REPO_ROOT, env=cli_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    leader, follower = pty.openpty()
    proc = subprocess.Popen(command("terminal"), cwd=REPO_ROOT, env=cli_env(), stdout=follower, stderr=subprocess.PIPE)
    os.close(follower)
    chunks, deadline = [], time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(leader)
        proc.kill() if proc.poll() is None else None
    assert proc.wait(timeout=60) == 0, proc.stderr.read().decode()
    out, err = piped.communicate(timeout=300)
    assert piped.returncode == 0, err
    outputs = {"terminal": b"".join(chunks).decode("utf-8", "replace"), "pipe": out}
    assert "━" in outputs["terminal"] and "/step" in outputs["terminal"], outputs["terminal"]
    assert "trained 3 epochs" in outputs["terminal"]
    assert "━" not in outputs["pipe"] and "/step" in outputs["pipe"], outputs["pipe"]
    assert "trained 3 epochs" in outputs["pipe"]
