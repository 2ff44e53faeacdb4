"""The Show-and-Tell model: shapes, parameter counts, the inference path, backbones and their weights."""

from __future__ import annotations

import os
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from caption_app.data.vocabulary import END_ID, START_ID
from caption_app.inference.settings import DecodeSettings
from caption_app.model import backbones
from caption_app.model.loss import MaskedCrossEntropy
from caption_app.inference.captioner import TrainedCaptioner
from caption_app.model.lstm_decoder import LSTMDecoder, PhiloxDropout
from caption_app.model.show_and_tell import build_model
from tests.conftest import tiny_config

V, E, H = 20, 8, 12  # vocabulary (ids), embedding and LSTM widths of the parameter-count tests


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(1)
    # Dropout on: the inference path and model(training=False) must both leave it out.
    config = tiny_config(f"model.embedding_size={E}", f"model.lstm_units={H}", "model.lstm_dropout=0.3")
    return build_model(config, V)


def _images(n, size=32, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype(np.float32)


@pytest.mark.parametrize("b,c,t", [(2, 1, 5), (3, 4, 7), (1, 2, 1)])
def test_output_shape(model, b, c, t):
    ids = np.random.default_rng(0).integers(0, V, (b, c, t)).astype(np.int32)
    logits = model({"image": _images(b), "input_ids": ids}, training=False)
    assert tuple(logits.shape) == (b, c, t, V)
    assert np.isfinite(keras.ops.convert_to_numpy(logits)).all()


def test_parameter_counts(model):
    decoder = model.decoder
    # embedding V*E + LSTM 4*((E + H) * H + H) + logits H*V + V
    #   = 20*8 + 4*((8 + 12) * 12 + 12) + 12*20 + 20 = 160 + 1008 + 260 = 1428
    assert decoder.count_params() == 1428
    assert decoder.word_embedding.count_params() == 160
    assert decoder.lstm.count_params() == 1008
    assert decoder.logits.count_params() == 260
    # image_embedding = F*E, no bias; F is the backbone's feature width.
    features = model.image_encoder.backbone.output.shape[-1]
    assert model.image_encoder.embedding.count_params() == features * E
    assert len(model.image_encoder.embedding.weights) == 1
    # Nothing else but the backbone (the preprocessing has no weights).
    assert model.count_params() == 1428 + features * E + model.image_encoder.backbone.count_params()


def test_encode_returns_the_lstm_state(model):
    captioner = TrainedCaptioner(model)
    assert captioner.image_size == 32
    state = captioner.encode(_images(3))
    assert len(state) == 2
    for s in state:
        assert tuple(s.shape) == (3, H)
    # Different images, different states.
    h = keras.ops.convert_to_numpy(state[0])
    assert not np.allclose(h[0], h[1])


def test_decode_step_returns_log_probabilities(model):
    captioner = TrainedCaptioner(model)
    state = captioner.encode(_images(4))
    log_probs, new_state = captioner.decode_step(tf.constant([START_ID, 4, 5, END_ID], tf.int32), state)
    log_probs = keras.ops.convert_to_numpy(log_probs)
    assert log_probs.shape == (4, V) and (log_probs <= 0).all()
    np.testing.assert_allclose(np.exp(log_probs).sum(-1), 1.0, rtol=1e-5)
    assert [tuple(s.shape) for s in new_state] == [(4, H), (4, H)]


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_step_by_step_decoding_equals_teacher_forced_logits(model):
    """The inference path feeds the image first, then <start>, then the words, with the trained weights."""
    captioner = TrainedCaptioner(model)
    images = _images(2, seed=3)
    caption = np.array([[START_ID, 7, 4, 11, 9, 2, 5], [START_ID, 19, 19, 3, 6, 8, 10]], np.int32)  # [B, T]
    full = keras.ops.convert_to_numpy(
        model({"image": images, "input_ids": caption[:, None, :]}, training=False))[:, 0]  # [B, T, V]
    state = captioner.encode(images)
    decoder = model.decoder
    for t in range(caption.shape[1]):
        logits, _ = decoder.step(tf.constant(caption[:, t]), state)
        log_probs, state = captioner.decode_step(tf.constant(caption[:, t]), state)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(logits), full[:, t], atol=1e-5)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(log_probs), _log_softmax(full[:, t]), atol=1e-5)
    # And the order matters: skipping the image step gives other logits.
    zeros = [tf.zeros((2, H)), tf.zeros((2, H))]
    wrong, _ = decoder.step(tf.constant(caption[:, 0]), zeros)
    assert not np.allclose(keras.ops.convert_to_numpy(wrong), full[:, 0], atol=1e-4)


def test_generate_runs_a_beam_search(model):
    result = TrainedCaptioner(model).generate(_images(2), DecodeSettings(beam_size=3, max_length=5))
    assert tuple(result.ids.shape) == (2, 3, 5)
    scores = result.scores.numpy()
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first


@pytest.mark.parametrize("jit", [False, True])
def test_decoder_dropout_drops_at_its_rate_in_training_only(jit):
    """PhiloxDropout (the decoder's dropout, cheap under XLA) keeps Dropout's meaning: an independent
    keep-mask per element at 1 - rate, kept values scaled by 1 / (1 - rate), a new mask per call,
    identity outside training; eagerly and compiled with XLA."""
    layer = PhiloxDropout(0.3, seed=3)
    train = tf.function(lambda x: layer(x, training=True), jit_compile=True) if jit else (
        lambda x: layer(x, training=True))
    x = tf.ones([400, 500])
    first, second = train(x).numpy(), train(x).numpy()
    for y in (first, second):
        kept = y != 0
        assert kept.mean() == pytest.approx(0.7, abs=0.005)  # 200,000 draws: standard deviation 0.001
        np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-6)
        # Independent per position and unit: rows (and columns) are not copies of one mask.
        assert (kept[0] != kept[1:]).any(axis=1).all() and (kept[:, 0:1] != kept[:, 1:]).any(axis=0).all()
    assert (first != second).mean() == pytest.approx(2 * 0.3 * 0.7, abs=0.01)  # a fresh mask per call
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x.numpy())
    np.testing.assert_array_equal(layer(x).numpy(), x.numpy())
    assert isinstance(build_model(tiny_config("model.lstm_dropout=0.3"), V).decoder.input_dropout, PhiloxDropout)


def test_a_train_step_with_decoder_dropout_under_xla_is_finite(model):
    images = _images(2, seed=5)
    ids = np.random.default_rng(1).integers(1, V, (2, 3, 6)).astype(np.int32)
    inputs, targets = {"image": images, "input_ids": ids[..., :-1]}, ids[..., 1:]
    weights = model.decoder.trainable_variables

    @tf.function(jit_compile=True)
    def step():
        with tf.GradientTape() as tape:
            loss = MaskedCrossEntropy()(targets, model(inputs, training=True))
        return loss, tape.gradient(loss, weights)

    (loss_a, grads), (loss_b, _) = step(), step()
    assert np.isfinite(float(loss_a)) and all(np.isfinite(tf.convert_to_tensor(g).numpy()).all() for g in grads)
    assert float(loss_a) != float(loss_b)  # dropout is on in training: another mask, another loss
    evaluation = MaskedCrossEntropy()(targets, model(inputs, training=False))
    assert float(evaluation) == float(MaskedCrossEntropy()(targets, model(inputs, training=False)))


def test_caption_decoder_config_round_trip():
    layer = LSTMDecoder(V, E, H, dropout=0.25, init_scale=0.05, use_cudnn=False, name="decoder")
    config = layer.get_config()
    for key, value in dict(vocab_size=V, embedding_size=E, lstm_units=H, dropout=0.25, init_scale=0.05,
                           use_cudnn=False, name="decoder").items():
        assert config[key] == value
    clone = LSTMDecoder.from_config(config)
    assert clone.get_config() == config
    revived = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(revived, LSTMDecoder) and revived.get_config() == config


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(backbones.BackboneError) as err:
        build_model(tiny_config("model.backbone=resnet_9000"), V)
    message = str(err.value)
    assert "resnet_9000" in message
    for name in backbones.BACKBONES:
        assert name in message
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("backbone", sorted(backbones.BACKBONES))
def test_image_size_below_the_backbone_minimum_is_an_error(backbone):
    minimum = backbones.get(backbone).min_image_size
    with pytest.raises(backbones.BackboneError, match=f"minimum of {minimum}"):
        build_model(tiny_config(f"model.backbone={backbone}", f"data.image_size={minimum - 1}"), V)
    assert backbones.resolve_image_size(backbone, minimum) == minimum
    assert backbones.resolve_image_size(backbone, 0) == backbones.get(backbone).image_size


def test_imagenet_weights_without_network_fail_fast_naming_the_file():
    spec = backbones.get("inception_v3")
    if backbones.imagenet_weights_available("inception_v3"):
        pytest.skip(f"{backbones.imagenet_cache_path('inception_v3')} is cached or the network is reachable; "
                    "the no-network path cannot be exercised")
    config = tiny_config("model.backbone=inception_v3", "model.backbone_weights=imagenet", "data.image_size=75")
    began = time.monotonic()
    with pytest.raises(backbones.BackboneError) as err:
        build_model(config, V)
    assert time.monotonic() - began < 15
    message = str(err.value)
    assert spec.imagenet_file in message  # the file to provide
    assert "model.backbone_weights" in message


def test_missing_weights_file_is_a_clear_error(tmp_path):
    missing = str(tmp_path / "nowhere.weights.h5")
    with pytest.raises(backbones.BackboneError) as err:
        build_model(tiny_config(f"model.backbone_weights={missing}"), V)
    assert missing in str(err.value) and "does not exist" in str(err.value)


def test_backbone_weights_from_a_file(tmp_path):
    keras.utils.set_random_seed(5)
    donor = backbones.build_backbone("small_cnn", "none", 32)
    path = str(tmp_path / "small_cnn.weights.h5")
    donor.save_weights(path)
    model = build_model(tiny_config(f"model.backbone_weights={path}"), V)
    loaded = model.image_encoder.backbone.get_weights()
    expected = donor.get_weights()
    assert len(loaded) == len(expected) > 0
    for a, b in zip(loaded, expected):
        np.testing.assert_array_equal(a, b)
    # A fresh random backbone differs, so the equality above is the file's doing.
    fresh = build_model(tiny_config(), V).image_encoder.backbone.get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(fresh, expected))


@pytest.mark.filterwarnings("ignore::UserWarning")  # Keras warns about each group it cannot match
def test_a_weights_file_of_another_network_is_a_clear_error(tmp_path):
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    path = str(tmp_path / "other.weights.h5")
    other.save_weights(path)
    with pytest.raises(backbones.BackboneError, match="cannot load"):
        build_model(tiny_config(f"model.backbone_weights={path}"), V)


def test_embedding_norm_is_on_the_inference_path_too():
    """With model.embedding_norm the batch-normalized embedding (moving statistics at inference)
    starts both the teacher-forced model and the step-by-step decoder."""
    keras.utils.set_random_seed(2)
    model = build_model(tiny_config(f"model.embedding_size={E}", f"model.lstm_units={H}",
                                    "model.embedding_norm=true"), V)
    norm = model.image_encoder.norm
    # Move the moving statistics away from (0, 1) so leaving the layer out would show.
    norm.moving_mean.assign(np.full((E,), 0.5, np.float32))
    norm.moving_variance.assign(np.full((E,), 4.0, np.float32))
    # batch norm on E features: gamma, beta, moving mean and variance = 4 * E parameters
    assert norm.count_params() == 4 * E
    images = _images(2, seed=5)
    caption = np.array([[START_ID, 7, 4], [START_ID, 5, 6]], np.int32)
    full = keras.ops.convert_to_numpy(model({"image": images, "input_ids": caption[:, None, :]},
                                            training=False))[:, 0]
    captioner = TrainedCaptioner(model)
    state = captioner.encode(images)
    for t in range(caption.shape[1]):
        log_probs, state = captioner.decode_step(tf.constant(caption[:, t]), state)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(log_probs), _log_softmax(full[:, t]), atol=1e-5)


def test_the_image_encoder_is_the_models_own():
    """model.image_encoder is a view over the model's own layers: same variables, same output."""
    model = build_model(tiny_config(f"model.embedding_size={E}", f"model.lstm_units={H}"), V)
    encoder = model.image_encoder
    assert encoder.norm is None  # decided once, when the model is built
    assert {id(v) for v in encoder.weights} < {id(v) for v in model.weights}
    assert encoder.embedding in model.layers and encoder.backbone in model.layers
    images = _images(2, seed=3)
    features = encoder.feature_extractor(images)  # [B, F]
    assert tuple(features.shape) == (2, encoder.feature_size)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(encoder.embed(features)),
                               keras.ops.convert_to_numpy(encoder(images)), atol=1e-6)
    assert len(model.trainable_variables) == len({id(v) for v in model.trainable_variables})  # no doubles
    with_norm = build_model(tiny_config("model.embedding_norm=true"), V).image_encoder
    assert with_norm.norm is not None and with_norm.norm.name == "image_embedding_norm"


def test_checkpoint_paths_did_not_move(tmp_path):
    """The variables' checkpoint paths are those of checkpoints written before the model's parts
    became attributes (the functional graph's `_operations` indices), so old run dirs restore."""
    # Dropout on: its layers (and their seed generators) add no checkpoint variable.
    model = build_model(tiny_config("model.embedding_norm=true", "model.lstm_dropout=0.3"), V)
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    names = {n.removesuffix("/.ATTRIBUTES/VARIABLE_VALUE") for n, _ in tf.train.list_variables(path)}
    names -= {"_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter"}
    backbone = {n for n in names if n.startswith("model/_operations/2/_operations/")}
    assert len(backbone) == len(model.image_encoder.backbone.weights)
    assert sorted(names - backbone) == [
        "model/_operations/3/_kernel",  # image_embedding
        "model/_operations/4/beta", "model/_operations/4/gamma",  # image_embedding_norm
        "model/_operations/4/moving_mean", "model/_operations/4/moving_variance",
        "model/_operations/6/logits/_kernel", "model/_operations/6/logits/bias",  # decoder
        "model/_operations/6/lstm/cell/bias", "model/_operations/6/lstm/cell/kernel",
        "model/_operations/6/lstm/cell/recurrent_kernel", "model/_operations/6/word_embedding/_embeddings",
    ]
    # And a checkpoint restores every object of a freshly built model (nothing extra, nothing missing).
    tf.train.Checkpoint(model=build_model(tiny_config("model.embedding_norm=true"), V)).restore(path).assert_consumed()
