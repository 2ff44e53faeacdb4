"""Training: XLA stays on, the run dir, steps from the manifest, resume, the fingerprint guard,
perplexity and the learning-rate schedules."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from caption_app import config as config_lib
from caption_app.training import distribute
from caption_app.evaluation import metrics as metrics_lib
from caption_app.runs import checkpoints as checkpoints_lib
from caption_app.runs import layout as run_layout
from caption_app.runs import loader as run_loader
from caption_app.__main__ import main as cli_main
from caption_app.training.budget import resolve_budget
from caption_app.data import manifest as manifest_lib
from caption_app.data.pipeline import resolve_tensor_sizes
from caption_app.data.vocabulary import Vocabulary
from caption_app.model.loss import DatasetNLL, MaskedCrossEntropy
from caption_app.model.show_and_tell import build_model
from caption_app.training.callbacks import PerplexityCallback
from caption_app.training.optimizers import learning_rate_schedule, make_optimizer
from caption_app.training.train import train
from tests.conftest import convert_tiny_shapes, restore_checkpoint, set_args, tiny_config


def _snapshot(root: str) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- compile / XLA

def test_compile_keeps_jit_compile():
    """The project's compile path (distribute.compile_for_fit, what `train` fits) keeps XLA on."""
    config = tiny_config()
    model = build_model(config, 12)
    fit_model = distribute.compile_for_fit(model, make_optimizer(config, 0.01), config, tf.distribute.get_strategy())
    assert fit_model.jit_compile is True
    assert distribute.xla_description(fit_model) == "on"
    assert fit_model.inner is model and not model.compiled  # the model itself owns no optimizer


def test_compile_refuses_to_run_without_xla_when_keras_drops_it(monkeypatch):
    """Keras turns jit_compile off, with a warning only, for models it deems unfit (an LSTM that may
    use cuDNN); the project's compile path stops instead of training slowly."""
    import keras.src.trainers.trainer as keras_trainer

    monkeypatch.setattr(keras_trainer, "model_supports_jit", lambda model: False)
    config = tiny_config()
    with pytest.raises(RuntimeError, match="Keras turned XLA off.*model.use_cudnn=false"), \
            pytest.warns(UserWarning, match="doesn't support `jit_compile=True`"):  # Keras only warns
        distribute.compile_for_fit(build_model(config, 12), make_optimizer(config, 0.01), config,
                                   tf.distribute.get_strategy())
    off = tiny_config("train.jit_compile=false")  # asked for no XLA: no error
    fit_model = distribute.compile_for_fit(build_model(off, 12), make_optimizer(off, 0.01), off,
                                           tf.distribute.get_strategy())
    assert distribute.xla_description(fit_model) == "off"


# ----------------------------------------------------------------------------- a trained run dir

def _saved_value(checkpoint: str, path: str) -> np.ndarray:
    """The value `checkpoint` holds for the variable at object path `path` (e.g.
    "model/_operations/3/_kernel/.ATTRIBUTES/VARIABLE_VALUE"), wherever the checkpoint's own key for
    it is (a trainable variable is keyed under the optimizer that also tracks it)."""
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    reader = tf.train.load_checkpoint(checkpoint)
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    node = graph.nodes[0]
    for name in path.split("/.ATTRIBUTES/")[0].split("/"):
        node = graph.nodes[next(c.node_id for c in node.children if c.local_name == name)]
    (attribute,) = [a for a in node.attributes if a.name == "VARIABLE_VALUE"]
    return reader.get_tensor(attribute.checkpoint_key)


def test_train_writes_the_run_dir(trained_run, tmp_path):
    run, config = trained_run.run_dir, trained_run.config
    manifest = manifest_lib.load(trained_run.data_dir)
    vocab = Vocabulary.load(manifest.vocab_path)
    sizes = resolve_tensor_sizes(config, manifest)
    for name in ("config.json", "fingerprint.json", "vocab.txt", "tensor_sizes.json", "state.json", "manifest.json"):
        assert os.path.isfile(os.path.join(run, name)), name
    assert config_lib.load(os.path.join(run, "config.json")) == config
    assert json.load(open(os.path.join(run, "fingerprint.json"))) == run_layout.fingerprint(config, vocab, sizes)
    assert open(os.path.join(run, "vocab.txt"), "rb").read() == open(manifest.vocab_path, "rb").read()
    assert run_loader.load_tensor_sizes(run) == sizes
    assert json.load(open(os.path.join(run, "manifest.json")))["data_dir"] == os.path.abspath(trained_run.data_dir)
    assert run_layout.read_state(run) == {"epochs_done": 2, "total_epochs": 2, "finished": True}
    for n in (1, 2):
        assert os.path.isfile(os.path.join(run, "checkpoints", f"ckpt-{n}.index"))
    assert checkpoints_lib.latest_checkpoint(run).endswith("ckpt-2")
    assert os.listdir(os.path.join(run, "logs", "validation"))  # TensorBoard
    history = trained_run.history
    assert history["epochs_done"] == 2
    assert math.isfinite(history["val_perplexity"]) and 1 < history["val_perplexity"] < vocab.size
    # The restored model is the trained one: every weight equals the last epoch's checkpoint
    # (what training ended with), and differs from a freshly initialized model's.
    model, loaded_config, _, _, checkpoint = run_loader.load_model(run)
    assert loaded_config == config and checkpoint.endswith("ckpt-2")
    restored = tf.train.load_checkpoint(tf.train.Checkpoint(model=model).write(str(tmp_path / "restored")))
    names = [n for n in restored.get_variable_to_shape_map() if n.startswith("model/")]
    assert len(names) == len(model.weights)
    for name in names:
        np.testing.assert_array_equal(restored.get_tensor(name), _saved_value(checkpoint, name), err_msg=name)
    fresh = build_model(config, vocab.size)
    assert any(not np.array_equal(a, b) for a, b in zip(model.get_weights(), fresh.get_weights()))


def test_steps_per_epoch_come_from_the_manifest(trained_run):
    manifest = manifest_lib.load(trained_run.data_dir)
    batch = trained_run.config.train.batch_size
    expected = manifest.split("train").num_images // batch
    assert manifest.split("train").num_images % batch  # a remainder, dropped
    assert trained_run.history["steps_per_epoch"] == expected
    assert _steps_per_epoch(41, 6) == 6 and _steps_per_epoch(42, 6) == 7
    with pytest.raises(ValueError, match="train.batch_size=6"):
        _steps_per_epoch(5, 6)


def _steps_per_epoch(num_images: int, batch_size: int) -> int:
    """The budget's steps per epoch for one caption per image."""
    config = tiny_config(f"train.batch_size={batch_size}")
    return resolve_budget(config, num_images=num_images, num_captions=num_images,
                          max_captions_per_image=1).steps_per_epoch


@pytest.mark.slow
def test_resume_continues_epochs_and_optimizer(tmp_path, capsys):
    # Another dataset size than the shared fixture: steps must follow the manifest.
    data = convert_tiny_shapes(tmp_path / "data", num_train=30, num_val=4, num_test=4)
    num_train = manifest_lib.load(data).split("train").num_images
    assert num_train == 30
    steps = num_train // 4
    run = str(tmp_path / "run")

    first = train(tiny_config("train.batch_size=4", "train.epochs=1"), data, run, verbose=0)
    assert first["steps_per_epoch"] == steps
    assert run_layout.read_state(run) == {"epochs_done": 1, "total_epochs": 1, "finished": True}
    capsys.readouterr()

    config = tiny_config("train.batch_size=4", "train.epochs=2")
    second = train(config, data, run, verbose=0)
    assert "resuming" in capsys.readouterr().out
    assert second["epochs_done"] == 2 and second["steps_per_epoch"] == steps
    assert run_layout.read_state(run) == {"epochs_done": 2, "total_epochs": 2, "finished": True}
    checkpoints = os.path.join(run, "checkpoints")
    assert os.path.isfile(os.path.join(checkpoints, "ckpt-2.index"))

    def restore(number):
        model, optimizer, epoch = restore_checkpoint(run, os.path.join(checkpoints, f"ckpt-{number}"), config)
        return epoch, int(optimizer.iterations.numpy()), model.get_weights()

    epoch1, iterations1, weights1 = restore(1)
    epoch2, iterations2, weights2 = restore(2)
    assert (epoch1, iterations1) == (1, steps)
    assert (epoch2, iterations2) == (2, 2 * steps)  # the optimizer went on, not restarted
    assert any(not np.array_equal(a, b) for a, b in zip(weights1, weights2))

    # A finished run asked for the same epochs trains nothing more.
    third = train(config, data, run, verbose=0)
    assert third["epochs_done"] == 2
    assert not os.path.exists(os.path.join(checkpoints, "ckpt-3.index"))


# ----------------------------------------------------------------------------- the fingerprint guard

@pytest.mark.parametrize("change,old,new", [
    (["model.lstm_units=24"], "lstm_units=16", "lstm_units=24"),
    (["model.backbone=inception_v3", "data.image_size=75"], "backbone=small_cnn", "backbone=inception_v3"),
    (["model.attention_size=8"], "attention_size=off", "attention_size=8"),
    (["model.attention_size=8", "model.image_first=false"], "image_first=True", "image_first=False"),
])
def test_another_architecture_is_refused_and_nothing_is_touched(trained_run, tmp_path, change, old, new):
    assert trained_run.config.model.lstm_units == 16 and trained_run.config.model.backbone == "small_cnn"
    run = str(tmp_path / "run")
    shutil.copytree(trained_run.run_dir, run)
    before = _snapshot(run)
    with pytest.raises(run_layout.ArchitectureMismatch) as err:
        train(tiny_config(*change), trained_run.data_dir, run, verbose=0)
    message = str(err.value)
    assert old in message and new in message
    assert run in message
    assert _snapshot(run) == before


def test_cli_refuses_another_architecture(trained_run, tmp_path, capsys):
    run = str(tmp_path / "run")
    shutil.copytree(trained_run.run_dir, run)
    before = _snapshot(run)
    sets = set_args("model.embedding_size=8")
    code = cli_main(["train", "--config", "tiny", "--data", trained_run.data_dir, "--run-dir", run, *sets])
    assert code == 2
    err = capsys.readouterr().err
    assert "embedding_size=16" in err and "embedding_size=8" in err
    assert _snapshot(run) == before


def test_checkpoints_without_a_fingerprint_are_refused(trained_run, tmp_path):
    run = str(tmp_path / "run")
    shutil.copytree(trained_run.run_dir, run)
    os.remove(os.path.join(run, "fingerprint.json"))
    before = _snapshot(run)
    with pytest.raises(run_layout.ArchitectureMismatch, match="fingerprint.json"):
        train(trained_run.config, trained_run.data_dir, run, verbose=0)
    assert _snapshot(run) == before


# ----------------------------------------------------------------------------- perplexity

def _nll_fixture():
    keras.utils.set_random_seed(2)
    vocab_size = 12
    model = build_model(tiny_config(), vocab_size)
    rng = np.random.default_rng(4)
    images = rng.uniform(0, 255, (5, 32, 32, 3)).astype(np.float32)
    ids = rng.integers(4, vocab_size, (5, 2, 7)).astype(np.int32)
    ids[:, :, 0] = 1
    ids[0, 0, 4:] = [2, 0, 0]  # a short caption, then padding
    ids[1, 1, 2:] = [2, 0, 0, 0, 0]
    ids[2, 1, :] = 0  # a missing caption: all padding
    ids[3, 0, -1] = 2
    inputs, targets = {"image": images, "input_ids": ids[..., :-1]}, ids[..., 1:]
    dataset = tf.data.Dataset.from_tensor_slices((inputs, targets)).batch(2)  # batches of 2, 2, 1
    # By hand: log-softmax of the model's logits, the targets' negative log-probabilities, padding masked.
    logits = keras.ops.convert_to_numpy(model(inputs, training=False)).astype(np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    mask = targets != 0
    return model, dataset, float(nll[mask].sum()), int(mask.sum())


def test_dataset_nll_equals_a_hand_computation():
    model, dataset, expected_nll, expected_tokens = _nll_fixture()
    total_nll, tokens = DatasetNLL(model)(dataset)
    assert tokens == expected_tokens == 5 * 2 * 6 - 2 - 4 - 6
    assert total_nll == pytest.approx(expected_nll, rel=1e-5)
    expected_perplexity = math.exp(expected_nll / expected_tokens)
    assert metrics_lib.perplexity(total_nll, tokens) == pytest.approx(expected_perplexity, rel=1e-5)
    # The training loss is the same masked mean, per batch.
    inputs, targets = next(iter(dataset.unbatch().batch(5)))
    loss = float(MaskedCrossEntropy()(targets, model(inputs, training=False)))
    assert loss == pytest.approx(expected_nll / expected_tokens, rel=1e-5)


def test_perplexity_callback_logs_val_loss_and_perplexity():
    model, dataset, expected_nll, expected_tokens = _nll_fixture()
    callback = PerplexityCallback(dataset)
    callback.set_model(model)
    logs: dict = {}
    callback.on_epoch_end(0, logs)
    assert logs["val_loss"] == pytest.approx(expected_nll / expected_tokens, rel=1e-5)
    assert logs["val_perplexity"] == pytest.approx(math.exp(expected_nll / expected_tokens), rel=1e-5)


@pytest.mark.parametrize("verbose", [0, 2])
def test_the_validation_perplexity_is_printed_once_an_epoch(shapes_data, tmp_path, capsys, verbose):
    """verbose=2: Keras' epoch line carries val_perplexity, and the callback adds no line of its own;
    verbose=0 (Keras prints nothing): the callback's line is the only one."""
    train(tiny_config("train.epochs=2", "train.jit_compile=false"), shapes_data, str(tmp_path / "run"),
          verbose=verbose)
    lines = [line for line in capsys.readouterr().out.splitlines() if "val_perplexity" in line]
    assert len(lines) == 2, lines
    own = [line for line in lines if line.startswith("epoch ")]
    assert len(own) == (2 if verbose == 0 else 0), lines


# ----------------------------------------------------------------------------- learning-rate schedules

def _phase(config, learning_rate: float, steps: int, epochs: float):
    """Phase 1 of `config` at this rate, `epochs` passes of `steps` steps (one caption per image)."""
    config = config_lib.override(config, [f"train.learning_rate={learning_rate}", f"train.epochs={epochs}",
                                          "data.captions_per_image=0"])
    batch = config.train.batch_size
    return config, resolve_budget(config, num_images=steps * batch, num_captions=steps * batch,
                                  max_captions_per_image=1).phases[0]


def test_staircase_schedule_halves_every_lr_decay_epochs():
    config = config_lib.get_preset("im2txt")  # 2.0, halved every 8 passes
    schedule = learning_rate_schedule(*_phase(config, config.train.learning_rate, 10, config.train.epochs))
    values = {step: float(schedule(step)) for step in (0, 1, 79, 80, 159, 160, 240)}
    assert values == pytest.approx({0: 2.0, 1: 2.0, 79: 2.0, 80: 1.0, 159: 1.0, 160: 0.5, 240: 0.25})
    # Fractional passes: every 2.5 passes of 4 steps = 10 steps.
    config = config_lib.override(config, ["train.lr_decay_epochs=2.5", "train.lr_decay_factor=0.1"])
    schedule = learning_rate_schedule(*_phase(config, 1.0, 4, 5))
    assert [float(schedule(s)) for s in (9, 10, 20)] == pytest.approx([1.0, 0.1, 0.01])


def test_cosine_schedule_warms_up_then_decays():
    config = tiny_config("train.lr_schedule=cosine", "train.warmup_epochs=1")
    steps, epochs, lr = 10, 4, 0.5
    schedule = learning_rate_schedule(*_phase(config, lr, steps, epochs))
    assert float(schedule(0)) == pytest.approx(0.0, abs=1e-7)
    assert float(schedule(5)) == pytest.approx(lr / 2)  # linear warmup over one pass
    assert float(schedule(10)) == pytest.approx(lr)
    later = [float(schedule(s)) for s in range(10, 41, 5)]
    assert all(a > b for a, b in zip(later, later[1:]))  # then decreasing
    assert float(schedule(40)) == pytest.approx(0.01 * lr, rel=1e-3)  # down to alpha * lr
    assert float(schedule(25)) == pytest.approx(lr * (0.01 + 0.99 * 0.5), rel=1e-3)  # half way
    # Without warmup it starts at the peak.
    no_warmup = learning_rate_schedule(*_phase(tiny_config("train.lr_schedule=cosine"), lr, steps, epochs))
    assert float(no_warmup(0)) == pytest.approx(lr)


def test_constant_and_unknown_schedules():
    assert learning_rate_schedule(*_phase(tiny_config("train.lr_schedule=constant"), 0.3, 10, 2)) == 0.3
    with pytest.raises(ValueError, match="train.lr_schedule"):
        learning_rate_schedule(*_phase(tiny_config("train.lr_schedule=linear"), 0.3, 10, 2))


def test_make_optimizer():
    sgd = make_optimizer(config_lib.get_preset("im2txt"), 2.0)
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.global_clipnorm == 5.0
    adam = make_optimizer(tiny_config("train.clip_gradient_norm=0"), 0.01)
    assert isinstance(adam, keras.optimizers.Adam) and adam.global_clipnorm is None
    adamw = make_optimizer(tiny_config("train.weight_decay=0.1"), 0.01)
    assert isinstance(adamw, keras.optimizers.AdamW) and adamw.weight_decay == pytest.approx(0.1)
    scaled = make_optimizer(tiny_config("train.precision=mixed_float16"), 0.01)
    assert isinstance(scaled, keras.optimizers.LossScaleOptimizer)
    assert isinstance(scaled.inner_optimizer, keras.optimizers.Adam)
    with pytest.raises(ValueError, match="train.optimizer"):
        make_optimizer(tiny_config("train.optimizer=rmsprop"), 0.01)


def test_label_smoothing_is_in_the_training_loss_only(tmp_path):
    """(1 - e) * nll + e * mean over the vocabulary of -log p, padding masked; perplexity stays the
    plain cross-entropy, and TensorBoard gets no train/perplexity from a smoothed loss."""
    from caption_app.training.callbacks import EpochSummaries

    rng = np.random.default_rng(7)
    logits = rng.normal(0, 3, (3, 2, 6, 11))  # far from uniform, so the two terms differ
    targets = rng.integers(1, 11, (3, 2, 6))
    targets[0, 1, 3:] = 0
    targets[2, 0, :] = 0
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    mask = targets != 0
    nll = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    uniform = -log_probs.mean(-1)
    plain = float(MaskedCrossEntropy()(targets, logits.astype(np.float32)))
    assert plain == pytest.approx(nll[mask].sum() / mask.sum(), rel=1e-5)
    for e in (0.1, 0.5):
        expected = (((1 - e) * nll + e * uniform)[mask]).sum() / mask.sum()
        loss = float(MaskedCrossEntropy(label_smoothing=e)(targets, logits.astype(np.float32)))
        assert loss == pytest.approx(expected, rel=1e-5)
        assert abs(loss - plain) > 0.01
    assert MaskedCrossEntropy.from_config(MaskedCrossEntropy(0.1).get_config()).label_smoothing == 0.1
    from caption_app import caption_loss  # the Python API's loss, for a model.fit of one's own

    assert caption_loss().label_smoothing == 0.0 and caption_loss(0.1).label_smoothing == 0.1
    # Validation (PerplexityCallback, DatasetNLL) always reads token_nll, the plain cross-entropy
    # (test_perplexity_callback_logs_val_loss_and_perplexity); TensorBoard's train/perplexity is
    # exp(train loss), so it is left out for a smoothed loss.

    def tags(loss_is_nll: bool) -> set[str]:
        summaries = EpochSummaries(str(tmp_path / str(loss_is_nll)), loss_is_nll=loss_is_nll)
        summaries.on_epoch_end(0, {"loss": 1.5, "val_loss": 1.2, "val_perplexity": 3.3})
        summaries.on_train_end()
        found = set()
        for path in (tmp_path / str(loss_is_nll)).rglob("events.out.tfevents.*"):
            for event in tf.compat.v1.train.summary_iterator(str(path)):
                found |= {f"{path.parent.name}/{v.tag}" for v in event.summary.value}
        return found

    assert tags(True) == {"train/loss", "train/perplexity", "validation/loss", "validation/perplexity"}
    assert tags(False) == {"train/loss", "validation/loss", "validation/perplexity"}
    for bad in ("1", "-0.1", "nan"):
        with pytest.raises(config_lib.ConfigError, match="train.label_smoothing must be in"):
            tiny_config(f"train.label_smoothing={bad}").validate()
