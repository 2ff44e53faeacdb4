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
# Not a divisor of NUM_TRAIN: the dropped remainder shows in steps per epoch.
BATCH_SIZE = 3


# `--set` assignments applied to the `tiny` preset by every test (and the CLI tests).
TINY_ASSIGNMENTS = [
    "data.image_size=32", "data.max_caption_length=16", "data.shuffle_buffer=64",
    "data.augment=", "data.cache=false", "data.captions_per_image=0",
    "model.backbone=small_cnn", "model.backbone_weights=none",
    "model.embedding_size=16", "model.lstm_units=16", "model.lstm_dropout=0.0",
    "train.epochs=1", "train.fine_tune_epochs=0", f"train.batch_size={BATCH_SIZE}",
    "train.optimizer=adam", "train.learning_rate=0.01", "train.lr_schedule=constant",
    "train.freeze_backbone=false", "train.jit_compile=true",
    "eval.beam_size=2", "eval.max_length=8", "eval.batch_size=8",
]


def tiny_config(*assignments: str) -> config_lib.Config:
    """The `tiny` preset with every size the tests rely on set explicitly.

    The values are spelled out here so that tuning the preset does not change
    what the tests check: 32 px, widths of 16, a small CNN from scratch.
    """
    return config_lib.override(config_lib.get_preset("tiny"), TINY_ASSIGNMENTS + list(assignments))


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
    from caption_app.train import train

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


def run_cli(module: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m module args...` from the repo root, as a user would run it."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
