"""Backbones: Inception-v4, TF-slim checkpoint import (v3, v4) against the shared reference, keras-cv backbones.

The reference tests regenerate the weight recipe of ../shared/reference/<net>/README.md
with numpy, write a real TF checkpoint with the slim variable names, import it
through `model.backbone_weights` (build_model -> build_backbone, the path users
take) and compare with the outputs TF-slim's own graph computed. They skip when
../shared is absent; the structure and error tests always run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zlib
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from caption_app.runs import layout as run_layout
from caption_app.data.pipeline import TensorSizes
from caption_app.data.vocabulary import Vocabulary
from caption_app.model import backbones, inception_v4, slim_import
from caption_app.model.show_and_tell import build_model
from tests.conftest import tiny_config

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
V = 20  # vocabulary size of the models built here


# ----------------------------------------------------------------------------- helpers

def write_checkpoint(prefix: str, tensors: dict[str, np.ndarray], version: int = 2) -> None:
    """A real TF checkpoint, readable by tf.train.load_checkpoint.

    version 1: the single-file format of the TF-slim model zoo's .ckpt files;
    version 2: `prefix.index` + `prefix.data-00000-of-00001`.
    """
    names = sorted(tensors)
    if version == 1:
        tf.raw_ops.Save(filename=prefix, tensor_names=names, data=[tensors[n] for n in names])
    else:
        tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                          tensors=[tensors[n] for n in names])


def recipe(name: str, shape: list[int], kind: str) -> np.ndarray:
    """The reference README's `slim-inception-ref-recipe-v1` value of one checkpoint variable."""
    z = np.random.default_rng(zlib.crc32(name.encode("utf-8"))).standard_normal(shape).astype(np.float32)
    if kind in ("conv_weights", "logits_weights"):
        fan_in = math.prod(shape[:-1])
        return z * np.float32(math.sqrt((2.0 if kind == "conv_weights" else 1.0) / fan_in))
    if kind == "biases":
        return z * np.float32(0.01)
    if kind in ("beta", "moving_mean"):
        return z * np.float32(0.1)
    if kind == "moving_variance":
        return np.float32(1) + np.float32(0.1) * np.abs(z)
    raise ValueError(f"unknown kind {kind}")


def reference_input() -> np.ndarray:
    """x[n,i,j,c] = sin(0.05*(i+1)*(c+1) + 0.07*(j+1)*(n+1)), [2, 299, 299, 3], float64 then float32."""
    n, i, j, c = np.indices((2, 299, 299, 3), dtype=np.float64)
    return np.sin(0.05 * (i + 1) * (c + 1) + 0.07 * (j + 1) * (n + 1)).astype(np.float32)


def load_reference(net: str) -> tuple[list[dict], dict, dict[str, np.ndarray]]:
    """(variables.json, golden.json, recipe tensors) of ../shared/reference/<net>; the recipe verified."""
    directory = REFERENCE / net
    if not (directory / "golden.json").exists():
        pytest.skip(f"{directory} is absent (the shared reference data lives beside the repo)")
    variables = json.loads((directory / "variables.json").read_text())
    golden = json.loads((directory / "golden.json").read_text())
    tensors, lines = {}, []
    for v in variables:
        value = recipe(v["name"], v["shape"], v["kind"])
        digest = hashlib.sha256(value.astype("<f4").tobytes()).hexdigest()
        assert digest == v["recipe_sha256"], f"recipe of {v['name']} differs from the reference"
        tensors[v["name"]] = value
        lines.append(f"{v['name']} {digest}")
    assert hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest() == golden["weights_digest"]["value"]
    x = reference_input()
    assert hashlib.sha256(x.tobytes()).hexdigest() == golden["input_sha256"]
    return variables, golden, tensors


def _stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image mean and population std over all elements, float64 accumulation."""
    flat = x.reshape(x.shape[0], -1).astype(np.float64)
    return flat.mean(1), flat.std(1)


def check_against_golden(backbone_name: str, ckpt: str, golden: dict, tensors: dict, endpoints: dict[str, str],
                         logits: tuple[str, str]) -> None:
    """Imports `ckpt` through a config, runs the reference input, compares with `golden`.

    endpoints: slim endpoint -> Keras layer of the backbone (intermediate stats and probes).
    logits: (weights, biases) checkpoint names of the classifier, applied to our
      features here (the backbone leaves the classifier out) to check the argmax.
    """
    config = tiny_config(f"model.backbone={backbone_name}", f"model.backbone_weights={ckpt}", "data.image_size=299")
    model = build_model(config, V)
    backbone = model.image_encoder.backbone
    names = list(endpoints.values())
    probe = keras.Model(backbone.input, [backbone.get_layer(n).output for n in names] + [backbone.output])
    x = reference_input()
    # The model's own preprocessing turns 0-255 pixels into the network's [-1, 1] input.
    pixels = (x.astype(np.float64) + 1.0) * 127.5
    preprocess = backbones.get(backbone_name).preprocess_layer()
    outputs = [keras.ops.convert_to_numpy(o) for o in probe(preprocess(pixels.astype(np.float32)), training=False)]
    *maps, features = outputs

    tol = golden["suggested_tolerances"]
    expected = np.array([golden["prelogits"]["image0"], golden["prelogits"]["image1"]], np.float32)
    assert features.shape == expected.shape
    np.testing.assert_allclose(features, expected, rtol=0, atol=tol["prelogits_max_abs"])

    weights, biases = (tensors[n] for n in logits)
    ours = features.astype(np.float64) @ weights.reshape(weights.shape[-2], -1) + biases
    want = np.array(golden["logits"]["full"])  # [2, 1001]
    np.testing.assert_allclose(ours, want, rtol=0, atol=tol["logits_max_abs"])
    assert list(ours.argmax(-1)) == list(golden["logits"]["argmax"])

    for (slim_name, _), value in zip(endpoints.items(), maps):
        assert list(value.shape[1:]) == golden["endpoint_shapes"][slim_name][1:], slim_name
        if slim_name in golden["intermediate"]["stats"]:
            mean, std = _stats(value)
            stats = golden["intermediate"]["stats"][slim_name]
            np.testing.assert_allclose(mean, stats["mean"], rtol=0, atol=tol["intermediate_mean_std_abs"])
            np.testing.assert_allclose(std, stats["std"], rtol=0, atol=tol["intermediate_mean_std_abs"])
        if slim_name in golden["probes"]["values"]:
            for image in range(2):
                for (row, col), channels in zip(golden["probes"]["positions"][slim_name],
                                                golden["probes"]["values"][slim_name][image]):
                    np.testing.assert_allclose(value[image, row, col, :8], channels, rtol=0, atol=1e-4,
                                               err_msg=f"{slim_name} image {image} at ({row}, {col})")


# ----------------------------------------------------------------------------- the shared reference (slow)

@pytest.mark.slow
def test_inception_v4_matches_tf_slim_from_a_v1_checkpoint(tmp_path):
    """The zoo's inception_v4.ckpt is in the V1 single-file format; written so here."""
    variables, golden, tensors = load_reference("inception_v4")
    # The backbone's map covers exactly the base network of the reference (596 variables).
    model = inception_v4.inception_v4(299)
    mapped = slim_import.inception_v4_variable_map(model)
    base = {v["name"]: v["shape"] for v in variables
            if v["name"].split("/")[1] not in ("AuxLogits", "Logits")}
    assert len(base) == 596
    assert {k: list(w.shape) for k, w in mapped.items()} == base
    ckpt = str(tmp_path / "inception_v4.ckpt")
    write_checkpoint(ckpt, {**tensors, "global_step": np.int64(1_000_000)}, version=1)
    assert not os.path.exists(ckpt + ".index")
    check_against_golden("inception_v4", ckpt, golden, tensors,
                         {"Conv2d_1a_3x3": "Conv2d_1a_3x3.Relu", "Mixed_5e": "Mixed_5e", "Mixed_6h": "Mixed_6h",
                          "Mixed_7d": "Mixed_7d"},
                         ("InceptionV4/Logits/Logits/weights", "InceptionV4/Logits/Logits/biases"))


@pytest.mark.slow
def test_slim_inception_v3_imports_onto_keras_inception_v3(tmp_path):
    variables, golden, tensors = load_reference("inception_v3_slim")
    ckpt = str(tmp_path / "inception_v3.ckpt")
    write_checkpoint(ckpt, tensors, version=2)
    # keras.applications names: mixed2 is slim's Mixed_5d, mixed7 Mixed_6e, mixed10 Mixed_7c.
    check_against_golden("inception_v3", ckpt, golden, tensors,
                         {"Mixed_5d": "mixed2", "Mixed_6e": "mixed7", "Mixed_7c": "mixed10"},
                         ("InceptionV3/Logits/Conv2d_1c_1x1/weights", "InceptionV3/Logits/Conv2d_1c_1x1/biases"))


def test_the_inception_v3_map_names_the_reference_variables():
    directory = REFERENCE / "inception_v3_slim"
    if not (directory / "variables.json").exists():
        pytest.skip(f"{directory} is absent (the shared reference data lives beside the repo)")
    base = {v["name"]: v["shape"] for v in json.loads((directory / "variables.json").read_text())
            if v["name"].split("/")[1] not in ("AuxLogits", "Logits")}
    model = backbones.build_backbone("inception_v3", "none", 75)
    mapped = slim_import.inception_v3_variable_map(model)
    assert {k: list(w.shape) for k, w in mapped.items()} == base  # 376 variables, names and shapes


# ----------------------------------------------------------------------------- Inception-v4 structure

@pytest.fixture(scope="module")
def v4():
    return inception_v4.inception_v4(299)


def test_inception_v4_parameter_count(v4):
    # The reference checkpoint (variables.json) holds 46,074,066 values: the base network's 41,174,400
    # + Logits 1,538,537 (1536 * 1001 + 1001) + AuxLogits 3,361,129. The backbone is the base network:
    # 149 convolutions, each a kernel kh*kw*in*out and batch-norm beta, moving mean and moving variance
    # (Keras counts the moving statistics as weights too, so the count is the base's value count).
    # Moving statistics: 64,960 in the reference, minus the aux head's 2 * (128 + 768) = 1,792.
    assert v4.count_params() == 41_174_400
    assert len(v4.weights) == 596 == 4 * inception_v4.NUM_CONVOLUTIONS
    non_trainable = sum(math.prod(w.shape) for w in v4.non_trainable_weights)
    assert non_trainable == 64_960 - 2 * (128 + 768) == 63_168
    convs = [layer for layer in v4.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == inception_v4.NUM_CONVOLUTIONS and not any(c.use_bias for c in convs)
    norms = [layer for layer in v4.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert all(not n.scale and n.center and n.epsilon == 0.001 for n in norms)


def test_inception_v4_endpoints_at_299(v4):
    shapes = {name: tuple(v4.get_layer(name).output.shape[1:]) for name in
              ("Conv2d_1a_3x3.Relu", "Mixed_3a", "Mixed_4a", "Mixed_5a", "Mixed_5e", "Mixed_6a", "Mixed_6h",
               "Mixed_7a", "Mixed_7d")}
    assert shapes == {"Conv2d_1a_3x3.Relu": (149, 149, 32), "Mixed_3a": (73, 73, 160), "Mixed_4a": (71, 71, 192),
                      "Mixed_5a": (35, 35, 384), "Mixed_5e": (35, 35, 384), "Mixed_6a": (17, 17, 1024),
                      "Mixed_6h": (17, 17, 1024), "Mixed_7a": (8, 8, 1536), "Mixed_7d": (8, 8, 1536)}
    assert tuple(v4.output.shape) == (None, inception_v4.FEATURE_SIZE)
    spec = backbones.get("inception_v4")
    assert (spec.image_size, spec.min_image_size, spec.feature_size, spec.preprocessing) == \
        (299, 75, 1536, "inception")


def test_inception_v4_slim_names(v4):
    mapped = slim_import.inception_v4_variable_map(v4)
    assert mapped["InceptionV4/Mixed_5b/Branch_1/Conv2d_0b_3x3/weights"] is \
        v4.get_layer("Mixed_5b.Branch_1.Conv2d_0b_3x3").kernel
    norm = v4.get_layer("Mixed_7d.Branch_2.Conv2d_0e_3x1.BatchNorm")
    assert mapped["InceptionV4/Mixed_7d/Branch_2/Conv2d_0e_3x1/BatchNorm/moving_variance"] is norm.moving_variance
    assert tuple(mapped["InceptionV4/Conv2d_1a_3x3/weights"].shape) == (3, 3, 3, 32)
    assert len(mapped) == 596 and len({id(w) for w in mapped.values()}) == 596  # one to one
    with pytest.raises(ValueError, match="no TF-slim counterpart"):
        inception_v4.slim_variable_name("Conv2d_1a_3x3.BatchNorm", "gamma")


# ----------------------------------------------------------------------------- checkpoint import errors

def test_checkpoint_formats_are_recognized(tmp_path):
    value = {"InceptionV4/Conv2d_1a_3x3/weights": np.zeros((3, 3, 3, 32), np.float32)}
    write_checkpoint(str(tmp_path / "v1.ckpt"), value, version=1)
    write_checkpoint(str(tmp_path / "v2.ckpt"), value, version=2)
    keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]).save_weights(str(tmp_path / "d.weights.h5"))
    assert slim_import.is_tf_checkpoint(str(tmp_path / "v1.ckpt"))
    assert slim_import.is_tf_checkpoint(str(tmp_path / "v2.ckpt"))
    assert not slim_import.is_tf_checkpoint(str(tmp_path / "d.weights.h5"))
    assert not slim_import.is_tf_checkpoint(str(tmp_path / "nowhere.ckpt"))
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    assert not slim_import.is_tf_checkpoint(str(tmp_path / "text.ckpt"))


@pytest.mark.slow
def test_import_lists_missing_unexpected_and_mismatched_variables_and_assigns_nothing(tmp_path):
    model = backbones.build_backbone("inception_v4", "none", 75)
    mapped = slim_import.inception_v4_variable_map(model)
    tensors = {name: np.full(tuple(w.shape), 0.5, np.float32) for name, w in mapped.items()}
    del tensors["InceptionV4/Conv2d_1a_3x3/BatchNorm/beta"]  # the seed author's error
    tensors["InceptionV4/Mixed_5b/Branch_1/Conv2d_0b_3x3/weights"] = np.zeros((3, 3, 64, 97), np.float32)
    tensors["InceptionV4/Mixed_5b/Branch_4/Conv2d_0a_1x1/weights"] = np.zeros((1, 1, 384, 8), np.float32)
    # Ignored: the classifier heads and entries outside the network's scope.
    tensors["InceptionV4/Logits/Logits/biases"] = np.zeros((1001,), np.float32)
    tensors["InceptionV4/AuxLogits/Aux_logits/biases"] = np.zeros((1001,), np.float32)
    tensors["global_step"] = np.int64(7)
    ckpt = str(tmp_path / "broken.ckpt")
    write_checkpoint(ckpt, tensors)
    before = [w.numpy().copy() for w in model.weights[:8]]
    with pytest.raises(slim_import.SlimImportError) as err:
        slim_import.import_slim_checkpoint(model, "inception_v4", ckpt)
    message = str(err.value)
    assert "needed but not in the checkpoint (1): InceptionV4/Conv2d_1a_3x3/BatchNorm/beta" in message
    assert "not in the backbone (1): InceptionV4/Mixed_5b/Branch_4/Conv2d_0a_1x1/weights" in message
    assert "InceptionV4/Mixed_5b/Branch_1/Conv2d_0b_3x3/weights [3, 3, 64, 97] vs Keras [3, 3, 64, 96]" in message
    for ignored in ("Logits", "AuxLogits", "global_step"):
        assert f"{ignored}/" not in message and "global_step" not in message
    assert "inception_v4_2016_09_09.tar.gz" in message
    for a, b in zip(before, model.weights[:8]):
        np.testing.assert_array_equal(a, b.numpy())  # nothing assigned
    # The same through the config: a BackboneError (a ValueError) with the same listing.
    with pytest.raises(backbones.BackboneError, match="Conv2d_1a_3x3/BatchNorm/beta"):
        build_model(tiny_config("model.backbone=inception_v4", f"model.backbone_weights={ckpt}",
                                "data.image_size=75"), V)
    # Repaired, it imports; the report counts what was used and what was ignored.
    tensors["InceptionV4/Conv2d_1a_3x3/BatchNorm/beta"] = np.full((32,), 0.25, np.float32)
    tensors["InceptionV4/Mixed_5b/Branch_1/Conv2d_0b_3x3/weights"] = np.full((3, 3, 64, 96), 0.5, np.float32)
    del tensors["InceptionV4/Mixed_5b/Branch_4/Conv2d_0a_1x1/weights"]
    write_checkpoint(ckpt, tensors)
    report = slim_import.import_slim_checkpoint(model, "inception_v4", ckpt)
    assert report.loaded == 596 and report.values == 41_174_400
    assert set(report.ignored) == {"InceptionV4/Logits/Logits/biases", "InceptionV4/AuxLogits/Aux_logits/biases",
                                   "global_step"}
    np.testing.assert_array_equal(model.get_layer("Conv2d_1a_3x3.BatchNorm").beta.numpy(), np.full(32, 0.25))


def test_a_checkpoint_of_another_network_is_refused(tmp_path):
    ckpt = str(tmp_path / "inception_v3.ckpt")
    write_checkpoint(ckpt, {"InceptionV3/Conv2d_1a_3x3/weights": np.zeros((3, 3, 3, 32), np.float32)})
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(slim_import.SlimImportError) as err:
        slim_import.import_slim_checkpoint(model, "inception_v4", ckpt)
    assert "no InceptionV4/ variables" in str(err.value) and "InceptionV3" in str(err.value)
    with pytest.raises(backbones.BackboneError, match="small_cnn has no TF-slim importer.*inception_v3, inception_v4"):
        build_model(tiny_config(f"model.backbone_weights={ckpt}"), V)


@pytest.mark.parametrize("name,hint", [
    ("inception_v4", "inception_v4_2016_09_09.tar.gz: extract it (tar xzf) and pass "
                     "--set model.backbone_weights=/path/to/inception_v4.ckpt"),
    ("efficientnetv2_b0", "'efficientnetv2_b0_imagenet'"),
    ("resnet50_v2", "'resnet50_v2_imagenet'"),
])
def test_backbones_without_keras_imagenet_weights_say_where_weights_come_from(name, hint):
    with pytest.raises(backbones.BackboneError) as err:
        build_model(tiny_config(f"model.backbone={name}", "model.backbone_weights=imagenet",
                                "data.image_size=75"), V)
    assert f"no ImageNet weights file for backbone {name}" in str(err.value) and hint in str(err.value)


def test_offline_imagenet_for_inception_v3_also_offers_the_slim_checkpoint():
    spec = backbones.get("inception_v3")
    if backbones.imagenet_weights_available("inception_v3"):
        pytest.skip("the ImageNet file is cached or the network is reachable: no offline error to check")
    with pytest.raises(backbones.BackboneError) as err:
        build_model(tiny_config("model.backbone=inception_v3", "model.backbone_weights=imagenet",
                                "data.image_size=75"), V)
    assert spec.imagenet_file in str(err.value) and "inception_v3_2016_08_28.tar.gz" in str(err.value)


# ----------------------------------------------------------------------------- Keras weights files

def test_a_weights_file_of_another_architecture_names_the_first_mismatched_variables(tmp_path):
    """A file of a deeper small_cnn would load into a shallower one without a word from Keras."""
    bigger = backbones.build_backbone("small_cnn", "none", 64)  # 4 conv blocks
    path = str(tmp_path / "small_cnn_64.weights.h5")
    bigger.save_weights(path)
    with pytest.raises(backbones.BackboneError) as err:
        build_model(tiny_config(f"model.backbone_weights={path}"), V)  # 32 px: 3 conv blocks
    message = str(err.value)
    assert "another architecture" in message and path in message
    assert "10 variables differ" in message  # the 4th block: 2 conv kernels + 2 batch norms x 4
    assert "layers/batch_normalization_6/vars/0: [192] in the file, not in the model" in message
    # And a file of a narrower network at the same depth: shapes differ.
    other = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(4, 3, use_bias=False)])
    other.save_weights(path)
    with pytest.raises(backbones.BackboneError, match=r"layers/conv2d/vars/0: \[3, 3, 3, 4\] in the file, "
                                                      r"\[3, 3, 3, 32\] in the model"):
        build_model(tiny_config(f"model.backbone_weights={path}"), V)


# ----------------------------------------------------------------------------- every backbone

@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(backbones.BACKBONES))
def test_every_backbone_builds_at_its_minimum_size_with_its_feature_size(name):
    spec = backbones.get(name)
    model = backbones.build_backbone(name, "none", spec.min_image_size)
    images = np.random.default_rng(0).uniform(-1, 1, (2, spec.min_image_size, spec.min_image_size, 3))
    features = keras.ops.convert_to_numpy(model(images.astype(np.float32), training=False))
    assert np.isfinite(features).all()
    if name == "small_cnn":  # its features grow with the image size
        model = backbones.build_backbone(name, "none", spec.image_size)
    assert tuple(model.output.shape) == (None, spec.feature_size)
    assert spec.preprocessing in ("inception", "unit") and spec.min_image_size <= spec.image_size


@pytest.mark.slow
@pytest.mark.parametrize("name,params", [
    ("efficientnetv2_b0", 5_919_312),  # the keras-cv presets' metadata "params"
    ("resnet50_v2", 23_564_800),
])
def test_keras_cv_backbones_load_keras_cv_weights_and_caption(tmp_path, name, params):
    import keras_cv

    keras.utils.set_random_seed(3)
    # The backbone as keras-cv itself builds it (with its own 1/255 rescaling, as its presets are), saved.
    constructor, arguments = backbones.KERAS_CV_ARGUMENTS[name]
    original = getattr(keras_cv.models, constructor)(include_rescaling=True, input_shape=(32, 32, 3), **arguments)
    assert original.count_params() == params
    path = str(tmp_path / f"{name}.weights.h5")
    original.save_weights(path)
    config = tiny_config(f"model.backbone={name}", f"model.backbone_weights={path}", "data.image_size=32")
    model = build_model(config, V)
    backbone = model.image_encoder.backbone
    assert len(backbone.weights) == len(original.weights)
    for ours, theirs in zip(backbone.weights, original.weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    # Same features as keras-cv's model on 0-255 pixels: our "unit" preprocessing is its rescaling.
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    theirs = keras.ops.convert_to_numpy(keras.ops.mean(original(pixels, training=False), axis=(1, 2)))
    preprocess = backbones.get(name).preprocess_layer()
    ours = keras.ops.convert_to_numpy(backbone(preprocess(pixels), training=False))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    # And the whole captioner runs on it (a training step costs ~20 s of tracing here; see the README).
    ids = np.random.default_rng(1).integers(4, V, (2, 1, 5)).astype(np.int32)
    logits = keras.ops.convert_to_numpy(model({"image": pixels, "input_ids": ids}, training=False))
    assert logits.shape == (2, 1, 5, V) and np.isfinite(logits).all()


# ----------------------------------------------------------------------------- the run dir

def test_an_inception_v3_run_dir_refuses_inception_v4(tmp_path):
    vocab = Vocabulary(["a", "dog"])
    sizes = TensorSizes(image_size=299, num_captions=5, caption_length=20)
    v3 = run_layout.fingerprint(tiny_config("model.backbone=inception_v3"), vocab, sizes)
    v4 = run_layout.fingerprint(tiny_config("model.backbone=inception_v4"), vocab, sizes)
    (tmp_path / run_layout.FINGERPRINT).write_text(json.dumps(v3))
    with pytest.raises(run_layout.ArchitectureMismatch, match="differs in backbone"):
        run_layout.check_compatible(str(tmp_path), v4)
    run_layout.check_compatible(str(tmp_path), v3)
