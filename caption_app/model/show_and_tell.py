"""The Show-and-Tell model (Vinyals et al. 2015), functional Keras 3.

    image [B, S, S, 3] (0-255) -> preprocess -> backbone -> [B, F]
      -> image_embedding (linear) -> [B, E], fed as the first LSTM input
    input_ids [B, C, T] (C captions per image) -> word embedding -> LSTM -> logits [B, C, T, V]

With `model.image_every_step` the image embedding is also fed next to every
word (the LSTM reads [word; image]), so a word's prediction can look at the
image directly instead of through the LSTM's memory of its first step. With
`model.image_logits` ("deep output") the image embedding also reaches the
logits through a linear map of its own: logits = W_h h + W_v v + b, so the
image's evidence for a word adds to the LSTM's language prior instead of
passing through it. With `model.attention_size` A > 0 the image encoder also
gives the backbone's spatial map, projected to A per cell (plus a learned
position per cell), and the decoder attends over those cells with each word's
LSTM output (Luong et al. 2015, without input feeding, so the LSTM still runs
as one layer): the attended context c_t reaches the logits through a linear
map of its own, logits += W_c c_t. The encoder's output is then [embedding;
cells] (E + L*A wide), which the decoding state carries whole.

The backbone runs once per image; its embedding is repeated for the image's C
captions. The model's two parts are attributes: `model.image_encoder` (an
`ImageEncoder`: image -> embedding, and its pieces: the backbone's feature
extractor and the features -> embedding step the feature cache's head uses)
and `model.decoder` (a `CaptionDecoder`). Inference uses them through
`Captioner.encode` (image -> initial LSTM state) and `decode_step` (previous
word + state -> next-word logits).

Checkpoints hold the model's variables under the functional graph's paths
(`model/_operations/<i>/...`), as before the parts became attributes: the
attributes are not checkpoint dependencies of their own (see `_Parts`), so
checkpoints written before and after read the same.
"""

from __future__ import annotations

import contextlib
import dataclasses

import keras
import tensorflow as tf
from keras import ops

from caption_app.inference.beam_search import BeamSearchResult, beam_search
from caption_app.config import Config
from caption_app.data.vocabulary import END_ID, START_ID, UNK_ID
from caption_app.inference.settings import DecodeSettings
from caption_app.model import backbones

BACKBONE_LAYER = "backbone"


def philox_seed(seed_generator: keras.random.SeedGenerator) -> tf.Tensor:
    """The generator's next seed as int32 [2] for TF's stateless ops with alg "philox" (see
    PhiloxDropout: under XLA on CPU, Keras' "auto_select" redoes the key derivation per element);
    folded into int32 as Keras' TensorFlow backend does."""
    return tf.cast(tf.math.floormod(seed_generator.next(), tf.int32.max - 1), tf.int32)


@keras.saving.register_keras_serializable(package="caption_app")
class PhiloxDropout(keras.layers.Dropout):
    """`keras.layers.Dropout` whose keep-mask is drawn with TensorFlow's Philox generator named explicitly.

    The same dropout (an independent Bernoulli keep-mask per element, kept values scaled by
    1 / (1 - rate), identity outside training), arguments and variables (the seed generator's
    state, which checkpoints do not hold) as Keras' layer. Keras draws with alg "auto_select",
    and XLA on CPU fuses that algorithm's seed -> key/counter derivation
    (StatelessRandomGetKeyCounter, ~120 scalar ops) into the per-element loop, so every element
    recomputes it: about 14x the time of a [4960, 512] forward+backward step without dropout
    (bench/dropout_rng.py). Named "philox" (what auto_select picks on CPU and GPU), the key is
    derived once per call: 1.15x.
    """

    def call(self, inputs, training=False):
        if not training or self.rate == 0:
            return inputs
        seed = philox_seed(self.seed_generator)
        noise_shape = None
        if self.noise_shape is not None:
            shape = tf.shape(inputs)
            noise_shape = [shape[i] if n is None else n for i, n in enumerate(self.noise_shape)]
        return tf.nn.experimental.stateless_dropout(inputs, self.rate, seed=seed, rng_alg="philox",
                                                    noise_shape=noise_shape)


@keras.saving.register_keras_serializable(package="caption_app")
class CaptionDecoder(keras.layers.Layer):
    """Word embedding + LSTM + logits, with the image embedding as the first input.

    Args:
      vocab_size: ids, special tokens included.
      embedding_size: word (and image) embedding width E.
      lstm_units: H.
      dropout: on the LSTM's inputs and outputs (im2txt: keep 0.7 -> 0.3).
      init_scale: uniform initializer range.
      use_cudnn: passed to keras.layers.LSTM (False keeps XLA on GPU).
      image_every_step: also feed the image embedding with every word (the
        LSTM's input is [word; image], E wide each); the decoding state then
        carries the image: [h, c, image].
      image_logits: add a linear map of the image embedding to the logits
        (deep output: W_h h + W_v v + b); the state carries the image as above.
      word_dropout: in training, each input word (not <start> or padding) is
        replaced by <unk> with this probability, so that a word's prediction
        cannot always lean on the words before it (the targets are kept).
      attention_size: A > 0: the image input is [embedding (E); L cells x A]
        and each step's LSTM output attends over the cells; the attended
        context adds W_c c to the logits. The state carries the image as above.
      image_first: False: the LSTM's first input is zeros instead of the image
        embedding, so the image reaches the words only through `attention_size`
        (or `image_every_step` / `image_logits`): the LSTM's state cannot tie
        one attribute of an object to another through a pooled image vector.
    """

    def __init__(self, vocab_size: int, embedding_size: int, lstm_units: int, dropout: float = 0.0,
                 init_scale: float = 0.08, use_cudnn: bool = False, image_every_step: bool = False, image_logits: bool = False,
                 attention_size: int = 0, word_dropout: float = 0.0, image_first: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.embedding_size = embedding_size
        self.lstm_units = lstm_units
        self.dropout = dropout
        self.init_scale = init_scale
        self.use_cudnn = use_cudnn
        self.image_every_step = image_every_step
        self.image_logits = image_logits
        self.attention_size = attention_size
        self.word_dropout = word_dropout
        self.image_first = image_first
        self.seed_generator = keras.random.SeedGenerator(0) if word_dropout else None
        init = keras.initializers.RandomUniform(-init_scale, init_scale)
        self.word_embedding = keras.layers.Embedding(vocab_size, embedding_size, embeddings_initializer=init,
                                                     name="word_embedding")
        self.lstm = keras.layers.LSTM(lstm_units, return_sequences=True, kernel_initializer=init,
                                      recurrent_initializer=init, use_cudnn=use_cudnn, name="lstm")
        # PhiloxDropout: keras.layers.Dropout's meaning, without its cost under XLA on CPU.
        self.input_dropout = PhiloxDropout(dropout, name="input_dropout")
        self.output_dropout = PhiloxDropout(dropout, name="output_dropout")
        # float32 logits under mixed precision: the softmax over the vocabulary needs the range.
        self.logits = keras.layers.Dense(vocab_size, kernel_initializer=init, name="logits", dtype="float32")
        self.image_to_logits = None
        if image_logits:
            self.image_to_logits = keras.layers.Dense(vocab_size, use_bias=False, kernel_initializer=init,
                                                      name="image_logits", dtype="float32")
        self.attention_query = self.context_to_logits = None
        if attention_size:
            self.attention_query = keras.layers.Dense(attention_size, use_bias=False, kernel_initializer=init,
                                                      name="attention_query")
            self.context_to_logits = keras.layers.Dense(vocab_size, use_bias=False, kernel_initializer=init,
                                                        name="context_logits", dtype="float32")

    @property
    def carries_image(self) -> bool:
        """Whether the decoding state carries the image input ([h, c, image])."""
        return self.image_every_step or self.image_logits or bool(self.attention_size)

    def drop_words(self, ids):
        """ids [...] int -> the same with each word (not padding or <start>) -> <unk> at `word_dropout`."""
        uniform = tf.random.stateless_uniform(tf.shape(ids), philox_seed(self.seed_generator), alg="philox")
        drop = uniform < self.word_dropout
        return ops.where(ops.logical_and(drop, ids > START_ID), UNK_ID, ids)

    def _split_image(self, image_input):
        """The encoder's output [N, E (+ L*A)] -> (embedding [N, E], cells [N, L, A] or None)."""
        if not self.attention_size:
            return image_input, None
        cells = image_input[:, self.embedding_size:]
        return image_input[:, :self.embedding_size], ops.reshape(cells, (ops.shape(cells)[0], -1, self.attention_size))

    def _attend(self, outputs, cells):
        """outputs [N, T, H], cells [N, L, A] -> the logits' context term [N, T, V]."""
        query = self.attention_query(outputs)  # [N, T, A]
        scores = ops.einsum("nta,nla->ntl", query, ops.cast(cells, query.dtype)) / float(self.attention_size) ** 0.5
        weights = ops.softmax(scores, axis=-1)
        context = ops.einsum("ntl,nla->nta", weights, ops.cast(cells, weights.dtype))  # [N, T, A]
        return self.context_to_logits(context)

    def build(self, image_embedding_shape, input_ids_shape=None):
        self.image_width = int(image_embedding_shape[-1])  # E, or E + L*A with attention
        cells_width = self.image_width - self.embedding_size
        if (cells_width != 0) if not self.attention_size else (cells_width <= 0 or cells_width % self.attention_size):
            raise ValueError(f"image input width {self.image_width} does not fit embedding_size "
                             f"{self.embedding_size} and attention_size {self.attention_size}")
        self.word_embedding.build((None, None))
        self.lstm.build((None, None, self.embedding_size * (2 if self.image_every_step else 1)))
        self.logits.build((None, None, self.lstm_units))
        if self.image_to_logits is not None:
            self.image_to_logits.build((None, self.embedding_size))
        if self.attention_size:
            self.attention_query.build((None, None, self.lstm_units))
            self.context_to_logits.build((None, None, self.attention_size))

    def call(self, image_embedding, input_ids, training=None):
        """image_embedding [B, E] (with attention [B, E + L*A]), input_ids [B, C, T] int
        -> logits [B, C, T, V]."""
        batch, num_captions, length = ops.shape(input_ids)
        image_embedding, cells = self._split_image(image_embedding)
        image = ops.broadcast_to(image_embedding[:, None, :], (batch, num_captions, self.embedding_size))
        image = ops.reshape(image, (-1, 1, self.embedding_size))  # [B*C, 1, E]
        ids = ops.reshape(input_ids, (-1, length))
        if training and self.word_dropout:
            ids = self.drop_words(ids)
        words = self.word_embedding(ids)  # [B*C, T, E]
        first = image if self.image_first else ops.zeros_like(image)
        sequence = ops.concatenate([first, words], axis=1)  # [B*C, T+1, E]
        if self.image_every_step:
            sequence = ops.concatenate([sequence, ops.broadcast_to(image, ops.shape(sequence))], axis=-1)  # 2E
        sequence = self.input_dropout(sequence, training=training)
        outputs = self.lstm(sequence, training=training)[:, 1:]  # the image step predicts nothing
        outputs = self.output_dropout(outputs, training=training)
        logits = self.logits(outputs)  # [B*C, T, V]
        if self.image_to_logits is not None:
            logits = logits + self.image_to_logits(image)  # [B*C, 1, V], the same for every step
        if cells is not None:  # an image's C captions attend over its cells, not over C copies of them
            per_image = ops.reshape(outputs, (batch, num_captions * length, self.lstm_units))
            logits = logits + ops.reshape(self._attend(per_image, cells), (-1, length, self.vocab_size))
        return ops.reshape(logits, (batch, num_captions, length, self.vocab_size))

    def initial_state(self, image_input):
        """image_input [N, E] (with attention [N, E + L*A]) -> the state after the image step:
        LSTM [h, c], each [N, H] (and the image input with `image_every_step`, `image_logits`
        or attention)."""
        image_embedding, _ = self._split_image(image_input)
        zeros = ops.zeros((ops.shape(image_embedding)[0], self.lstm_units), dtype=image_embedding.dtype)
        first = image_embedding if self.image_first else ops.zeros_like(image_embedding)
        if self.image_every_step:
            first = ops.concatenate([first, image_embedding], axis=-1)
        _, state = self.lstm.cell(first, [zeros, zeros], training=False)
        return list(state) + ([image_input] if self.carries_image else [])

    def state_sizes(self) -> dict[str, int]:
        """The decoding state's tensors, by the names the export gives them, and their widths."""
        sizes = {"state_h": self.lstm_units, "state_c": self.lstm_units}
        if self.carries_image:
            sizes["state_image"] = self.image_width
        return sizes

    def step(self, ids, state):
        """ids [N] int, state (see `initial_state`) -> (logits [N, V], new state)."""
        words = self.word_embedding(ids)  # [N, E]
        image_embedding, cells = (None, None) if not self.carries_image else self._split_image(state[2])
        if self.image_every_step:
            words = ops.concatenate([words, image_embedding], axis=-1)
        output, new_state = self.lstm.cell(words, list(state[:2]), training=False)
        logits = self.logits(output)
        if self.image_to_logits is not None:
            logits = logits + self.image_to_logits(image_embedding)
        if cells is not None:
            logits = logits + self._attend(output[:, None], cells)[:, 0]
        return logits, list(new_state) + list(state[2:])

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "embedding_size": self.embedding_size,
                "lstm_units": self.lstm_units, "dropout": self.dropout, "init_scale": self.init_scale,
                "use_cudnn": self.use_cudnn, "image_every_step": self.image_every_step,
                "image_logits": self.image_logits, "attention_size": self.attention_size,
                "word_dropout": self.word_dropout, "image_first": self.image_first}


@keras.saving.register_keras_serializable(package="caption_app")
class SpatialCells(keras.layers.Layer):
    """The backbone's spatial map [B, h, w, C] -> cells for attention, flattened [B, h*w*A]:
    each cell's features projected to A, plus a learned embedding of the cell's position
    (convolution features say little about where they are)."""

    def __init__(self, attention_size: int, init_scale: float = 0.08, **kwargs):
        super().__init__(**kwargs)
        self.attention_size = attention_size
        self.init_scale = init_scale
        self.project = keras.layers.Dense(attention_size, name="project",
                                          kernel_initializer=keras.initializers.RandomUniform(-init_scale, init_scale))

    def build(self, input_shape):
        _, height, width, channels = input_shape
        if height is None or width is None:
            raise ValueError("attention needs a spatial map of static size")
        self.project.build((None, channels))
        self.position = self.add_weight(name="position", shape=(height * width, self.attention_size),
                                        initializer=keras.initializers.RandomUniform(-self.init_scale, self.init_scale))

    def call(self, spatial):
        _, height, width, channels = spatial.shape
        cells = self.project(ops.reshape(spatial, (-1, height * width, channels))) + self.position
        return ops.reshape(cells, (-1, height * width * self.attention_size))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1] * input_shape[2] * self.attention_size)

    def get_config(self):
        return {**super().get_config(), "attention_size": self.attention_size, "init_scale": self.init_scale}


@contextlib.contextmanager
def dtype_policy(name: str):
    """Builds layers under Keras dtype policy `name` (float32, mixed_float16, mixed_bfloat16).

    Keras' policy is global (per thread) state and keras.applications models
    take no dtype argument, so it is set here around model building, and
    restored after, in this one place.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


@dataclasses.dataclass(frozen=True)
class _Parts:
    """Plain references to layers of a functional model's graph.

    Not a Keras layer nor a tf.train trackable, so holding it adds no
    checkpoint path: every variable keeps the one path the graph gives it.
    """

    items: dict


class ImageEncoder(keras.Model):
    """image [B, S, S, 3] float32 0-255 -> preprocess -> backbone -> features [B, F]
    -> image_embedding (linear, no bias) [-> image_embedding_norm] -> embedding [B, E]
    (with `model.attention_size` A: [embedding; SpatialCells of the backbone's map], E + L*A).

    The one place the image path is put together (`build_image_encoder`); the
    captioning model calls these very layers, the feature cache's head uses
    `embed` on cached features and `feature_extractor` to compute them, and
    inference uses the encoder itself.
    """

    def __init__(self, inputs, outputs, *, features=None, parts: dict | None = None, **kwargs):
        super().__init__(inputs, outputs, **kwargs)
        parts = dict(parts or {})
        if features is not None:
            parts["feature_extractor"] = keras.Model(inputs, features, name="backbone_features")
        self._parts = _Parts(parts)

    @property
    def image_size(self) -> int:
        return int(self.inputs[0].shape[1])

    @property
    def preprocess(self) -> keras.layers.Layer:
        return self._parts.items["preprocess"]

    @property
    def backbone(self) -> keras.Model:
        return self._parts.items["backbone"]

    @property
    def embedding(self) -> keras.layers.Dense:
        return self._parts.items["embedding"]

    @property
    def norm(self) -> keras.layers.BatchNormalization | None:
        """The image embedding's batch normalization, None without `model.embedding_norm`."""
        return self._parts.items["norm"]

    @property
    def feature_extractor(self) -> keras.Model:
        """image [B, S, S, 3] 0-255 -> backbone features [B, F] (what the feature cache stores)."""
        return self._parts.items["feature_extractor"]

    @property
    def feature_size(self) -> int:
        return int(self.feature_extractor.output.shape[-1])

    def embed(self, features, training=None):
        """Backbone features [B, F] -> image embedding [B, E] (the encoder after the backbone;
        not for attention models, whose encoder also needs the spatial map)."""
        if self._parts.items.get("cells") is not None:
            raise ValueError("an attention model's image encoder needs the backbone's spatial map, "
                             "not only its pooled features (train.feature_cache is off for model.attention_size)")
        embedding = self.embedding(features)
        if self.norm is not None:
            embedding = self.norm(embedding, training=training)
        return embedding


def build_image_encoder(config: Config, image, backbone_weights: str | None = None):
    """The image path on the Input `image`: (ImageEncoder, its output tensor [B, E]).

    The caller builds the rest of its graph on the returned tensor; the
    encoder is a view over the same layers (and variables).
    """
    m = config.model
    spec = backbones.get(m.backbone)
    size = int(image.shape[1])
    weights = m.backbone_weights if backbone_weights is None else backbone_weights
    backbone = backbones.build_backbone(m.backbone, weights, size)
    spatial = None
    if m.attention_size:  # the same layers, also giving the map the pooled features come from
        backbone = backbones.with_spatial_map(backbone, m.backbone)
    backbone.name = BACKBONE_LAYER  # one stable name for summaries and the slim import
    preprocess = spec.preprocess_layer()
    features = backbone(preprocess(image))  # [B, F] (with attention: [B, F] and [B, h, w, C])
    if m.attention_size:
        features, spatial = features
    init = keras.initializers.RandomUniform(-m.init_scale, m.init_scale)
    embedding_layer = keras.layers.Dense(m.embedding_size, use_bias=False, kernel_initializer=init,
                                         name="image_embedding")
    embedding = embedding_layer(features)  # [B, E]
    norm = None
    if m.embedding_norm:
        norm = keras.layers.BatchNormalization(momentum=0.9, name="image_embedding_norm")
        embedding = norm(embedding)
    cells_layer = None
    if spatial is not None:
        cells_layer = SpatialCells(m.attention_size, m.init_scale, name="image_cells")
        embedding = keras.layers.Concatenate(name="image_and_cells")([embedding, cells_layer(spatial)])
    encoder = ImageEncoder(image, embedding, features=features, name="image_encoder",
                           parts={"preprocess": preprocess, "backbone": backbone, "embedding": embedding_layer,
                                  "norm": norm, "cells": cells_layer})
    return encoder, embedding


class ShowAndTell(keras.Model):
    """The functional captioning model, with its parts as attributes:
    `image_encoder` (ImageEncoder) and `decoder` (CaptionDecoder)."""

    def __init__(self, inputs, outputs, *, parts: dict | None = None, **kwargs):
        super().__init__(inputs, outputs, **kwargs)
        self._parts = _Parts(dict(parts or {}))

    @property
    def image_encoder(self) -> ImageEncoder:
        return self._parts.items["image_encoder"]

    @property
    def decoder(self) -> CaptionDecoder:
        return self._parts.items["decoder"]


def build_model(config: Config, vocab_size: int, backbone_weights: str | None = None,
                precision: str | None = None) -> ShowAndTell:
    """The trainable Show-and-Tell model.

    Args:
      config: model and data settings.
      vocab_size: from the manifest.
      backbone_weights: overrides config.model.backbone_weights (e.g. "none"
        when a checkpoint is about to be restored anyway).
      precision: Keras dtype policy (default config.train.precision). Under
        mixed_* the variables stay float32 (checkpoints are the same either
        way), layers compute in float16/bfloat16, and the logits (and the
        loss, see loss.py) are float32.
    Returns:
      ShowAndTell {"image": [B, S, S, 3] float32 0-255, "input_ids": [B, C, T] int32}
      -> logits [B, C, T, V] float32. C (captions per image) and T (tokens) are free;
      under XLA each distinct (B, C, T) compiles once.
    """
    with dtype_policy(precision or config.train.precision):
        return _build_model(config, vocab_size, backbone_weights)


def _build_model(config: Config, vocab_size: int, backbone_weights: str | None) -> ShowAndTell:
    m = config.model
    size = backbones.resolve_image_size(m.backbone, config.data.image_size)
    # The layer order (image, preprocess, backbone, image_embedding[, norm], input_ids, decoder)
    # decides the checkpoint paths: keep it.
    image = keras.Input((size, size, 3), name="image")
    image_encoder, image_embedding = build_image_encoder(config, image, backbone_weights)
    input_ids = keras.Input((None, None), dtype="int32", name="input_ids")
    decoder = CaptionDecoder(vocab_size, m.embedding_size, m.lstm_units, m.lstm_dropout, m.init_scale,
                             m.use_cudnn, image_every_step=m.image_every_step, image_logits=m.image_logits,
                             attention_size=m.attention_size, word_dropout=m.word_dropout,
                             image_first=m.image_first, name="decoder")
    logits = decoder(image_embedding, input_ids)
    return ShowAndTell({"image": image, "input_ids": input_ids}, logits, name="show_and_tell",
                       parts={"image_encoder": image_encoder, "decoder": decoder})


def set_backbone_trainable(model: ShowAndTell, trainable: bool) -> None:
    model.image_encoder.backbone.trainable = trainable


class Captioner:
    """Inference views of a trained model: encode an image, take one decoder step.

    Both are plain functions of core TF ops, shared by evaluation, the caption
    CLI and the SavedModel export.
    """

    def __init__(self, model: ShowAndTell):
        self.model = model
        self.image_encoder: ImageEncoder = model.image_encoder
        self.decoder: CaptionDecoder = model.decoder
        self.image_size = self.image_encoder.image_size

    def encode(self, images):
        """images [B, S, S, 3] float32 0-255 -> initial state [h, c], each [B, H] (+ image [B, E])."""
        return self.decoder.initial_state(self.image_encoder(images, training=False))

    def decode_step(self, ids, state):
        """ids [N] int32, state (see `encode`) -> (log_probs [N, V], new state)."""
        logits, new_state = self.decoder.step(ids, state)
        return ops.log_softmax(ops.cast(logits, "float32"), axis=-1), new_state

    def generate(self, images, settings: DecodeSettings) -> BeamSearchResult:
        """images [B, S, S, 3] float32 0-255 -> the best captions by beam search
        (ids [B, K, max_length], scores and log_probs [B, K]; K = settings.num_captions,
        or the beam size when that is 0)."""
        return beam_search(self.decode_step, self.encode(images), start_id=START_ID, end_id=END_ID,
                           beam_size=settings.beam_size, max_length=settings.max_length,
                           length_normalization=settings.length_normalization,
                           num_results=settings.num_captions or settings.beam_size,
                           words_per_beam=settings.words_per_beam)
