"""The decoder options that carry the image embedding in the decoding state ([h, c, image]):
model.image_every_step (the LSTM reads it with every word), model.image_logits (deep output:
a linear map of it is added to the logits) and model.attention_size (the decoder attends over
the backbone's spatial cells, which the image input then also carries), alone and together,
and attention alone without the image as the first LSTM input (model.image_first=false)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from caption_app.data.vocabulary import START_ID
from caption_app.inference.settings import DecodeSettings
from caption_app.inference.captioner import TrainedCaptioner
from caption_app.model.lstm_decoder import LSTMDecoder
from caption_app.model.show_and_tell import build_model
from tests.conftest import tiny_config

V, E, H, A = 20, 8, 12, 4
SETTINGS = DecodeSettings(beam_size=3, max_length=6)


# Each option alone where it changes the state's meaning, and all three together (attention with the others).
OPTIONS = {"every_step": ["model.image_every_step=true"], "logits": ["model.image_logits=true"],
           "all": ["model.image_every_step=true", "model.image_logits=true", f"model.attention_size={A}"],
           "attention_only": [f"model.attention_size={A}", "model.image_first=false"]}


@pytest.fixture(scope="module", params=sorted(OPTIONS))
def model(request):
    keras.utils.set_random_seed(2)
    config = tiny_config(f"model.embedding_size={E}", f"model.lstm_units={H}", "model.embedding_norm=true",
                         *OPTIONS[request.param])
    return build_model(config, V)


def _images(n, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, 32, 32, 3)).astype(np.float32)


def test_parameter_counts(model):
    decoder = model.decoder
    # LSTM input [word; image], 2E wide: 4*((2E + H) * H + H) = 4*((16 + 12) * 12 + 12) = 1392;
    # [word] alone, E wide: 4*((8 + 12) * 12 + 12) = 1008
    assert decoder.lstm.count_params() == (1392 if decoder.image_every_step else 1008)
    # embedding V*E + LSTM + logits H*V + V (+ image logits E*V, no bias; + attention query H*A and
    # context logits A*V, no biases)
    image_logits = E * V if decoder.image_logits else 0
    attention = H * A + A * V if decoder.attention_size else 0
    assert decoder.count_params() == 160 + decoder.lstm.count_params() + 260 + image_logits + attention


def _cells(model):
    """The number of spatial cells the image input carries (small_cnn at 32 px: a 4x4 map)."""
    return 16 if model.decoder.attention_size else 0


def test_state_carries_the_image_embedding(model):
    captioner = TrainedCaptioner(model)
    images = _images(3)
    state = captioner.encode(images)
    assert [tuple(s.shape) for s in state] == [(3, H), (3, H), (3, E + _cells(model) * A)]
    assert model.decoder.state_sizes()["state_image"] == E + _cells(model) * A
    np.testing.assert_allclose(keras.ops.convert_to_numpy(state[2]),
                               keras.ops.convert_to_numpy(model.image_encoder(images, training=False)), atol=1e-5)
    _, new_state = captioner.decode_step(tf.constant([START_ID] * 3, tf.int32), state)
    assert len(new_state) == 3
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(new_state[2]), keras.ops.convert_to_numpy(state[2]))


def test_step_by_step_decoding_equals_teacher_forced_logits(model):
    captioner = TrainedCaptioner(model)
    images = _images(2, seed=3)
    caption = np.array([[START_ID, 7, 4, 11, 9, 2], [START_ID, 19, 19, 3, 6, 8]], np.int32)
    full = keras.ops.convert_to_numpy(
        model({"image": images, "input_ids": caption[:, None, :]}, training=False))[:, 0]  # [B, T, V]
    state = captioner.encode(images)
    for t in range(caption.shape[1]):
        logits, state = model.decoder.step(tf.constant(caption[:, t]), state)
        # The logits of an untrained tiny decoder are ~1e-4: compare them relatively.
        np.testing.assert_allclose(keras.ops.convert_to_numpy(logits), full[:, t], rtol=1e-3, atol=1e-8)
    # The image read at each step matters: another image's embedding gives other logits from step 2 on.
    state = captioner.encode(images)
    other = captioner.encode(_images(2, seed=9))
    _, after_start = model.decoder.step(tf.constant(caption[:, 0]), state)
    swapped = after_start[:2] + [other[2]]
    logits, _ = model.decoder.step(tf.constant(caption[:, 1]), swapped)
    assert np.abs(keras.ops.convert_to_numpy(logits) - full[:, 1]).max() > 1e-2 * np.abs(full[:, 1]).max()
    if model.decoder.image_logits and not model.decoder.image_every_step:
        # Deep output alone: the image's part of the logits is additive, W_v (v' - v).
        kernel = keras.ops.convert_to_numpy(model.decoder.image_to_logits.kernel)
        difference = (keras.ops.convert_to_numpy(other[2]) - keras.ops.convert_to_numpy(state[2])) @ kernel
        np.testing.assert_allclose(keras.ops.convert_to_numpy(logits) - full[:, 1], difference, rtol=1e-3,
                                   atol=1e-7)


def test_beam_search_in_graph(model):
    captioner = TrainedCaptioner(model)

    @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32)])
    def generate(images):
        return captioner.generate(images, SETTINGS).ids

    in_graph = generate(tf.constant(_images(2))).numpy()
    eager = captioner.generate(_images(2), SETTINGS).ids.numpy()
    assert in_graph.shape == (2, 3, 6)
    np.testing.assert_array_equal(in_graph, eager)


def test_attention_reads_the_cells(model):
    """With attention, the cells' part of the image input changes the logits; without, it is absent."""
    if not model.decoder.attention_size:
        assert model.decoder.image_width == E
        return
    captioner = TrainedCaptioner(model)
    state = captioner.encode(_images(2, seed=4))
    image = keras.ops.convert_to_numpy(state[2])
    assert image.shape == (2, E + 16 * A) and np.abs(image[:, E:]).max() > 0
    ids = tf.constant([START_ID, START_ID], tf.int32)
    logits, _ = model.decoder.step(ids, state)
    other_cells = np.concatenate([image[:, :E], image[::-1, E:]], axis=1)  # the other image's cells
    swapped, _ = model.decoder.step(ids, state[:2] + [tf.constant(other_cells)])
    assert np.abs(keras.ops.convert_to_numpy(swapped) - keras.ops.convert_to_numpy(logits)).max() > 0
    # Attention weights are a softmax over the cells: identical cells give the cell's own context,
    # whatever the query, so the context term is W_c cell.
    cell = image[:1, E:E + A]
    kernel = keras.ops.convert_to_numpy(model.decoder.context_to_logits.kernel)
    term = keras.ops.convert_to_numpy(model.decoder._attend(tf.random.normal((1, 3, H)), tf.constant(
        np.repeat(cell[:, None, :], 16, axis=1))))
    np.testing.assert_allclose(term, np.repeat((cell @ kernel)[:, None, :], 3, axis=1), rtol=1e-4, atol=1e-7)


def test_attention_only_ignores_the_pooled_embedding(model):
    """model.image_first=false: the LSTM starts from zeros; the pooled embedding part of the image
    input changes nothing, the cells do (the logits come from them alone)."""
    if model.decoder.image_first:
        return
    captioner = TrainedCaptioner(model)
    state = captioner.encode(_images(2, seed=6))
    image = keras.ops.convert_to_numpy(state[2])
    ids = tf.constant([START_ID, START_ID], tf.int32)
    logits, _ = model.decoder.step(ids, state)
    other = np.concatenate([image[::-1, :E], image[:, E:]], axis=1)  # the other image's embedding
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.decoder.initial_state(tf.constant(other))[0]),
                                  keras.ops.convert_to_numpy(state[0]))  # the same LSTM state for both images
    same, _ = model.decoder.step(ids, state[:2] + [tf.constant(other)])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(same), keras.ops.convert_to_numpy(logits), atol=1e-6)
    assert np.abs(keras.ops.convert_to_numpy(state[0][0] - state[0][1])).max() == 0  # no image in h
    assert LSTMDecoder.from_config(model.decoder.get_config()).image_first is False


def test_attention_settings_are_checked():
    from caption_app.config import ConfigError
    from caption_app.model import backbones

    with pytest.raises(ConfigError, match="model.attention_size must be >= 0"):
        tiny_config("model.attention_size=-1").validate()
    with pytest.raises(ConfigError, match="train.feature_cache.*spatial map"):
        tiny_config("model.attention_size=4", "train.feature_cache=true").validate()
    inputs = keras.Input((8, 8, 3))
    flat = keras.Model(inputs, keras.layers.Flatten()(inputs))
    with pytest.raises(backbones.BackboneError, match="no global average pooling"):
        backbones.with_spatial_map(flat, "flat")
    with pytest.raises(ValueError, match="does not fit"):
        LSTMDecoder(V, E, H, attention_size=A).build((None, E + 3))
    with pytest.raises(ConfigError, match="model.image_first=false leaves the decoder no way to see the image"):
        tiny_config("model.image_first=false").validate()


def test_word_dropout_replaces_words_in_training_only():
    from caption_app.data.vocabulary import PAD_ID, UNK_ID

    decoder = LSTMDecoder(V, E, H, word_dropout=0.4)
    ids = np.random.default_rng(0).integers(4, V, (50, 2, 40)).astype(np.int32)
    ids[..., 0] = START_ID
    ids[..., 30:] = PAD_ID
    dropped = keras.ops.convert_to_numpy(decoder.drop_words(ids))
    changed = dropped != ids
    assert (dropped[changed] == UNK_ID).all()
    assert not changed[..., 0].any() and not changed[..., 30:].any()  # <start> and padding stay
    assert 0.36 < changed[..., 1:30].mean() < 0.44
    again = keras.ops.convert_to_numpy(decoder.drop_words(ids))
    assert (again != dropped).any()  # a new draw each call
    image = np.zeros((50, E), np.float32)
    inference = [keras.ops.convert_to_numpy(decoder(image, ids, training=False)) for _ in range(2)]
    np.testing.assert_array_equal(inference[0], inference[1])
    assert np.abs(keras.ops.convert_to_numpy(decoder(image, ids, training=True)) - inference[0]).max() > 0
    assert LSTMDecoder.from_config(decoder.get_config()).word_dropout == 0.4
    with pytest.raises(Exception, match="model.word_dropout must be in"):
        tiny_config("model.word_dropout=1").validate()


def test_config_round_trip():
    layer = LSTMDecoder(V, E, H, image_every_step=True, image_logits=True, attention_size=A, name="decoder")
    config = layer.get_config()
    assert config["image_every_step"] is True and config["image_logits"] is True and config["attention_size"] == A
    assert LSTMDecoder.from_config(config).get_config() == config
    assert LSTMDecoder(V, E, H).get_config()["image_every_step"] is False
    assert LSTMDecoder(V, E, H).get_config()["image_logits"] is False
    plain, deep = LSTMDecoder(V, E, H), LSTMDecoder(V, E, H, image_logits=True)
    plain.build((None, E))
    deep.build((None, E))
    assert plain.state_sizes() == {"state_h": H, "state_c": H}
    assert deep.state_sizes() == {"state_h": H, "state_c": H, "state_image": E}


@pytest.mark.slow
def test_export_serves_the_image_state(shapes_data, tmp_path):
    """With all three options (attention included) encode_image / decode_step carry state_image; captions and
    warmup requests work as for Show and Tell."""
    from caption_app.runs import loader as run_loader
    from caption_app.training.train import train
    from export import saved_model
    from tests import saved_model_ops

    run = str(tmp_path / "run")
    train(tiny_config("train.epochs=1", "train.learning_rate=0.02", *OPTIONS["all"]), shapes_data, run, verbose=0)
    path = saved_model.export(run, str(tmp_path / "models"))
    signatures = tf.saved_model.load(path).signatures
    model, config, vocab, _, _ = run_loader.load_model(run)
    captioner = TrainedCaptioner(model)
    images = tf.constant(_images(2, seed=5))

    state = signatures["encode_image"](images=images)
    names = ["state_h", "state_c", "state_image"]
    assert sorted(state) == sorted(names)
    py_state = captioner.encode(images)
    for name, expected in zip(names, py_state):
        np.testing.assert_allclose(state[name].numpy(), keras.ops.convert_to_numpy(expected), atol=1e-5)
    ids = tf.constant([START_ID, START_ID], tf.int32)
    step = signatures["decode_step"](input_ids=ids, **state)
    py_log_probs, py_new_state = captioner.decode_step(ids, py_state)
    np.testing.assert_allclose(step["log_probs"].numpy(), keras.ops.convert_to_numpy(py_log_probs), atol=1e-5)
    np.testing.assert_allclose(step["state_image"].numpy(), state["state_image"].numpy())

    result = captioner.generate(images, config.decode.resolve())
    out = signatures["caption_images"](images=images)
    assert out["captions"].numpy().tolist() == vocab.ids_to_text(result.ids).numpy().tolist()
    # The warmup requests (decode_step with all three state inputs) run in a TF1 Session, as in TF Serving.
    requests = saved_model_ops.warmup_requests(path)
    decode = [inputs for name, inputs in requests if name == "decode_step"]
    assert len(decode) == 1 and sorted(decode[0]) == sorted(["input_ids"] + names)
    outputs = saved_model_ops.run_in_session(path, requests)
    assert all(np.isfinite(o["log_probs"]).all() for o, (name, _) in zip(outputs, requests) if name == "decode_step")
    # docs/serving.md's row for attention (with the other two options) is what the export carries.
    m = config.model
    cells = (py_state[2].shape[-1] - m.embedding_size) // m.attention_size
    saved_model_ops.check_state_against_docs(path, "lstm+attention", H=m.lstm_units, E=m.embedding_size,
                                             L=cells, A=m.attention_size)
