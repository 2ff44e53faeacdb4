"""The Python API (caption_app/api.py): Captioner.load on a run dir and on an export, every input
kind giving the same captions as the `caption` command, no retracing across calls, plain results."""

from __future__ import annotations

import glob
import io
import os

import numpy as np
import pytest
from PIL import Image

import caption_app
from caption_app import api
from caption_app.inference.image_files import caption_files
from caption_app.inference.settings import DecodeSettingsError
from tests.conftest import encode_image


def _blocks(seed: int, size: int = 40) -> np.ndarray:
    """Blocky random colours, [size, size, 3] uint8."""
    rng = np.random.default_rng(seed)
    return np.kron(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), np.ones((size // 4, size // 4, 1), np.uint8))


@pytest.fixture(scope="module")
def captioner(trained_run):
    return caption_app.Captioner.load(trained_run.run_dir)


def test_the_package_exports_the_api_class():
    assert caption_app.Captioner is api.Captioner
    assert {"Captioner", "CaptionResult", "load_config", "make_datasets", "build_model", "caption_loss",
            "__version__"} <= set(caption_app.__all__)


def test_every_input_kind_gives_the_caption_commands_captions(captioner, trained_run, tmp_path):
    pixels = _blocks(1)
    png = encode_image(pixels, "PNG")
    path = tmp_path / "blocks.png"
    path.write_bytes(png)
    expected, = caption_files(trained_run.run_dir, [str(path)])
    inputs = [str(path), path, png, Image.open(io.BytesIO(png)), pixels, pixels.astype(np.float32),
              np.asarray(Image.fromarray(pixels).convert("RGBA"))]
    results = captioner.caption(inputs)
    assert len(results) == len(inputs)
    for result in results:
        assert isinstance(result, api.CaptionResult) and result.error is None
        assert result.captions == [c["caption"] for c in expected["captions"]]
        assert all(isinstance(v, float) for v in result.log_probs + result.scores)
        np.testing.assert_allclose(result.log_probs, [c["log_prob"] for c in expected["captions"]], atol=1e-4)
    assert results[0].source == str(path) and results[2].source is None
    # A single image gives a single result; grey arrays are read as grey RGB.
    single = captioner.caption(pixels, num_captions=1)
    assert isinstance(single, api.CaptionResult) and single.captions == results[0].captions[:1]
    grey = np.asarray(Image.fromarray(pixels).convert("L"))
    assert captioner.caption(grey).captions == captioner.caption(np.repeat(grey[:, :, None], 3, -1)).captions


def test_the_decode_settings_mean_what_they_mean_in_caption(captioner, trained_run):
    image = _blocks(2)
    beam = trained_run.config.decode.beam_size
    assert len(captioner.caption(image).captions) == beam
    assert len(captioner.caption(image, beam_size=beam + 1, num_captions=3).captions) == 3
    with pytest.raises(DecodeSettingsError, match="exceeds --beam-size"):
        captioner.caption(image, beam_size=2, num_captions=3)
    with pytest.raises(DecodeSettingsError, match="max_length must be a positive integer"):
        captioner.caption(image, max_length=-1)


def test_the_second_call_of_a_batch_of_8_traces_nothing(captioner, trained_run):
    paths = sorted(glob.glob(os.path.join(trained_run.data_dir, "raw", "images", "*test*.jpg")))[:4]
    batch = paths + [_blocks(s) for s in range(4)]
    captioner.caption(batch)
    traced = captioner.tracing_count()
    # serving_default and caption_images, once each per decode setting used (traced when it was built)
    assert traced == 2 * len(captioner.loaded._functions)
    first = captioner.caption(batch)
    second = captioner.caption(batch[:3] + batch)  # another batch size: the same graphs
    assert captioner.tracing_count() == traced
    assert [r.captions for r in second[3:]] == [r.captions for r in first]


def test_bad_images_are_reported_per_image_and_bad_arrays_raise(captioner, tmp_path):
    results = captioner.caption([b"not an image", str(tmp_path / "missing.jpg"), _blocks(3)])
    assert results[0].captions == [] and results[0].error == "cannot caption: not a JPEG, PNG, GIF or BMP image"
    assert results[1].error == "cannot read: no such file or directory"
    assert results[2].error is None and results[2].captions
    with pytest.raises(ValueError, match=r"images\[0\]: an array image is \[height, width, channels\]"):
        captioner.caption([np.zeros((4, 4, 2), np.uint8)])
    with pytest.raises(ValueError, match="within 0-255"):
        captioner.caption([np.full((4, 4, 3), 300.0)])
    with pytest.raises(TypeError, match="expected a path, bytes, a PIL image or an array"):
        captioner.caption([42])
    with pytest.warns(UserWarning, match="within 0-1"):
        captioner.caption(np.full((8, 8, 3), 0.5, np.float32))


def test_load_says_what_a_path_is_not(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a run dir .* nor an exported SavedModel"):
        caption_app.Captioner.load(str(tmp_path))


def test_a_relative_run_dir_finds_its_checkpoints(trained_run, monkeypatch):
    """get_checkpoint_state joins relative entries to the directory already (they were joined twice)."""
    from caption_app.runs import checkpoints as checkpoints_lib
    from caption_app.runs import loader as run_loader

    parent, name = os.path.split(trained_run.run_dir)
    monkeypatch.chdir(parent)
    paths = checkpoints_lib.checkpoint_paths(checkpoints_lib.checkpoint_dir(name))
    assert paths == [os.path.join(name, "checkpoints", "ckpt-2"), os.path.join(name, "checkpoints", "ckpt-1")]
    assert run_loader.load_model(name)[4] == paths[0]
