"""Shared fixtures of the caption_app tests: one tiny generated dataset, one tiny trained run.

Both are built once per session in temporary dirs (never under tests/data or
/work/shared): a shapes dataset of 40/12/12 images at 32 px, and a run of the
tiny configuration trained on it for two epochs, shared by the evaluate and
caption tests.
"""

from __future__ import annotations

import dataclasses
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from caption_app import config as config_lib

REPO_ROOT = Path(__file__).resolve().parents[1]

NUM_TRAIN, NUM_VAL, NUM_TEST = 40, 12, 12
IMAGE_SIZE = 32


def tiny_config(*assignments: str) -> config_lib.Config:
    """The `tiny` preset (the tests' one configuration: 32 px, widths of 16, a small CNN from
    scratch, batch 3) with `--set` assignments applied; CLI tests pass `--config tiny`."""
    return config_lib.override(config_lib.get_preset("tiny"), list(assignments))


def set_args(*assignments: str) -> list[str]:
    """["a=1", "b=2"] -> ["--set", "a=1", "--set", "b=2"] (CLI arguments)."""
    return [a for assignment in assignments for a in ("--set", assignment)]


def convert_tiny_shapes(out_dir: Path, *, num_train: int = NUM_TRAIN, num_val: int = NUM_VAL,
                        num_test: int = NUM_TEST, min_word_count: int = 1, seed: int = 0) -> str:
    from tfrecords_tools.shapes import convert_shapes

    convert_shapes(out_dir, seed=seed, num_train=num_train, num_val=num_val, num_test=num_test,
                   image_size=IMAGE_SIZE, min_word_count=min_word_count, progress=False, verbose=False)
    return str(out_dir)


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory) -> str:
    """A converted shapes data dir: 40 train / 12 val / 12 test images, 32 px, min_word_count 1."""
    return convert_tiny_shapes(tmp_path_factory.mktemp("shapes_data"))


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    run_dir: str
    data_dir: str
    config: config_lib.Config
    history: dict


@pytest.fixture(scope="session")
def trained_run(shapes_data, tmp_path_factory) -> TrainedRun:
    """The tiny config trained for 2 epochs on `shapes_data` (shared; copy it before mutating)."""
    from caption_app.training.train import train

    # 2 x 13 steps at 0.02 give a model that says a word or two (not asserted).
    config = tiny_config("train.epochs=2", "train.learning_rate=0.02")
    run_dir = str(tmp_path_factory.mktemp("trained") / "run")
    history = train(config, shapes_data, run_dir, verbose=0)
    return TrainedRun(run_dir, shapes_data, config, history)


def encode_image(pixels: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    """pixels [h, w, c] uint8 -> the bytes of a `fmt` file (PIL), converted to `mode` first."""
    image = Image.fromarray(pixels)
    if mode is not None:
        image = image.convert(mode)
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def read_records(out: Path, split: str) -> list[dict]:
    """The records of a converted data dir's split, parsed with the one schema, in file order."""
    import tensorflow as tf

    from caption_app.data import manifest as manifest_lib
    from caption_app.data import records

    files = manifest_lib.load(str(out)).files(split)
    if not files:
        return []
    ds = tf.data.TFRecordDataset(files).map(records.parse_example)
    return [{"image_id": r["image_id"].numpy().decode(), "encoded": r["encoded"].numpy(),
             "captions": [c.decode() for c in r["captions"].numpy()]} for r in ds]


def cli_env(**changes: str | None) -> dict[str, str]:
    """The environment of a CLI run by a test: this checkout's code first on PYTHONPATH, TensorFlow's
    C++ logging quiet, no TF_CONFIG inherited; `changes` set variables (None removes one)."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def cli_command(module: str, *args: str) -> list[str]:
    """`python -m module args...` (a path ending in .py runs as a script)."""
    if module.endswith(".py"):
        return [sys.executable, module, *args]
    return [sys.executable, "-m", module, *args]


def run_cli(module: str, *args: str, timeout: float = 300, env: dict | None = None,
            cwd: str | Path = REPO_ROOT) -> subprocess.CompletedProcess:
    """`python -m module args...` from the repo root, as a user would run it (text output captured)."""
    return subprocess.run(cli_command(module, *args), cwd=cwd, env=env or cli_env(), capture_output=True,
                          text=True, timeout=timeout)


def start_cli(module: str, *args: str, env: dict | None = None, text: bool = False) -> subprocess.Popen:
    """`run_cli` without waiting: the running process (stdout and stderr piped)."""
    return subprocess.Popen(cli_command(module, *args), cwd=REPO_ROOT, env=env or cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=text)


def restore_checkpoint(run_dir: str, checkpoint: str, config: config_lib.Config, phase: str = "phase1"):
    """A fresh model and phase `phase`'s optimizer restored from `checkpoint` of `run_dir`, through the
    run's own bookkeeping (run_dir.Checkpoints). Returns (model, optimizer, epoch)."""
    from caption_app.runs import checkpoints as checkpoints_lib
    from caption_app.runs import loader as run_loader
    from caption_app.model.show_and_tell import build_model
    from caption_app.training.optimizers import make_optimizer

    model = build_model(config, run_loader.load_vocab(run_dir).size)
    optimizer = make_optimizer(config, config.train.learning_rate)
    optimizer.build(model.trainable_variables)
    checkpoints = checkpoints_lib.Checkpoints(run_dir, model)
    checkpoints.restore(checkpoint, phase, optimizer).assert_existing_objects_matched()
    return model, optimizer, int(checkpoints.epoch.numpy())


# The longest test files first (measured: `pytest --durations`): pytest-xdist's `--dist loadfile` hands
# whole files to the workers in collection order, so with these at the front the last files to run are
# short ones and the two workers finish together, instead of one running test_train.py alone at the end.
LONGEST_FIRST = ("test_cli.py", "test_fault_tolerance.py", "test_im2txt_import.py", "test_end_to_end.py",
                 "test_distribute.py", "test_precision.py", "test_scst.py", "test_evaluate.py",
                 "test_hostile_serving.py", "test_hostile_train.py", "test_train.py", "test_image_every_step.py",
                 "test_attention_maps.py", "test_litert.py", "test_small_datasets.py", "test_any_filesystem.py",
                 "test_tfrecords_tools.py", "test_beam_pipeline.py", "test_old_run_dirs.py", "test_feature_cache.py",
                 "test_budget.py", "test_generation_seam.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # stable: a file keeps its order
