"""Run dirs written before the redesign of issue 10 still load, evaluate, caption, export and resume.

The old layout differs in two files: the tensor sizes were RUN/shapes.json
(now RUN/tensor_sizes.json) and config.json had the decode settings in its
`eval` section (now `decode`). The checkpoints' variable paths did not change
(pinned by tests/test_model.py::test_checkpoint_paths_did_not_move).
"""

from __future__ import annotations

import glob
import json
import os
import shutil

import tensorflow as tf

from caption_app import config as config_lib
from caption_app.runs import layout as run_layout
from caption_app.runs import loader as run_loader
from caption_app.inference.image_files import caption_files
from caption_app.data import manifest as manifest_lib
from caption_app.data.pipeline import resolve_tensor_sizes
from caption_app.evaluation.evaluate import evaluate
from caption_app.training.train import train
from export import saved_model


def _old_layout(trained_run, run: str) -> None:
    """A copy of the shared trained run, rewritten into the layout of the old code."""
    shutil.copytree(trained_run.run_dir, run)
    os.rename(os.path.join(run, "tensor_sizes.json"), os.path.join(run, "shapes.json"))
    path = os.path.join(run, "config.json")
    with open(path) as f:
        config = json.load(f)
    decode = config.pop("decode")
    assert decode["num_captions"] == 0  # the old code had no such setting: captions = beam size
    config["eval"].update(beam_size=decode["beam_size"], max_length=decode["max_length"],
                          length_normalization=decode["length_normalization"])
    with open(path, "w") as f:
        json.dump(config, f)


def test_an_old_run_dir_loads_evaluates_captions_exports_and_resumes(trained_run, tmp_path):
    run = str(tmp_path / "run")
    _old_layout(trained_run, run)
    config = trained_run.config
    assert not os.path.exists(os.path.join(run, run_layout.TENSOR_SIZES))

    model, loaded, vocab, sizes, checkpoint = run_loader.load_model(run)
    assert loaded == config  # the decode settings came back from the old eval section
    assert sizes == resolve_tensor_sizes(config, manifest_lib.load(trained_run.data_dir))
    assert checkpoint.endswith("ckpt-2")

    images = sorted(glob.glob(os.path.join(trained_run.data_dir, "raw", "images", "*.jpg")))[:2]
    results = caption_files(run, images)
    assert [len(r["captions"]) for r in results] == [config.decode.beam_size] * 2

    metrics = evaluate(run, "val", json_path=str(tmp_path / "metrics.json"), verbose=False)
    assert metrics["num_images"] > 0

    version = saved_model.export(run, str(tmp_path / "models"), warmup=False)
    loaded_export = tf.saved_model.load(version)
    out = loaded_export.signatures["caption_images"](images=tf.zeros([1, 40, 40, 3]))
    assert out["captions"].shape == (1, config.decode.beam_size)

    # Resume: one more epoch on top of the old run's two.
    history = train(config_lib.override(config, ["train.epochs=3"]), trained_run.data_dir, run, verbose=0)
    assert history["resumed_from"].endswith("ckpt-2") and history["epochs_done"] == 3
    assert run_layout.read_state(run) == {"epochs_done": 3, "total_epochs": 3, "finished": True}
