"""The captioning model, functional Keras 3: the image encoder (backbone -> embedding [-> cells]) and a registered decoder.

Show and Tell (Vinyals et al. 2015) with the LSTM decoder:

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
and `model.decoder` (a `Decoder`, caption_app/model/decoders.py; the LSTM's is
caption_app/model/lstm_decoder.py). Inference uses them through
`TrainedCaptioner.encode` (image -> initial decoding state) and `decode_step`
(previous word + state -> next-word log-probabilities), in
caption_app/inference/captioner.py.

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

from caption_app.config import Config
from caption_app.model import backbones, decoders

BACKBONE_LAYER = "backbone"


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
        self.grid = (int(height), int(width))  # cell l is row l // width, column l % width
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
    def cell_grid(self) -> tuple[int, int] | None:
        """(h, w): the backbone's map the cells come from (cell l is row l // w, column l % w), None
        without `model.attention_size`."""
        cells = self._parts.items.get("cells")
        return None if cells is None else cells.grid

    @property
    def feature_size(self) -> int:
        return int(self.feature_extractor.output.shape[-1])

    def backbone_outputs(self, images, training=None):
        """images [B, S, S, 3] 0-255 -> what the backbone gives: features [B, F] (with attention:
        (features, spatial map [B, h, w, C]))."""
        return self.backbone(self.preprocess(images), training=training)

    def from_backbone_outputs(self, outputs, training=None):
        """`backbone_outputs`' result -> the encoder's output (the layers after the backbone, so a
        frozen backbone runs once while these train: self-critical training)."""
        features, spatial = outputs if self._parts.items.get("cells") is not None else (outputs, None)
        return _after_backbone(self._parts.items, features, spatial, training=training)

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
    parts = {"preprocess": preprocess, "backbone": backbone,
             "embedding": keras.layers.Dense(m.embedding_size, use_bias=False, kernel_initializer=init,
                                             name="image_embedding"),
             "norm": keras.layers.BatchNormalization(momentum=0.9, name="image_embedding_norm")
             if m.embedding_norm else None,
             "cells": SpatialCells(m.attention_size, m.init_scale, name="image_cells") if spatial is not None else None}
    if spatial is not None:
        parts["concat"] = keras.layers.Concatenate(name="image_and_cells")
    embedding = _after_backbone(parts, features, spatial)
    encoder = ImageEncoder(image, embedding, features=features, name="image_encoder", parts=parts)
    return encoder, embedding


def _after_backbone(parts: dict, features, spatial, training=None):
    """The image encoder after the backbone: features [B, F] (and the spatial map) -> its output.

    The one definition, used to build the functional graph (on symbolic tensors) and by
    `ImageEncoder.from_backbone_outputs` (on values)."""
    embedding = parts["embedding"](features)  # [B, E]
    if parts["norm"] is not None:
        embedding = parts["norm"](embedding, training=training)
    if parts["cells"] is not None:
        embedding = parts["concat"]([embedding, parts["cells"](spatial)])
    return embedding


class ShowAndTell(keras.Model):
    """The functional captioning model, with its parts as attributes:
    `image_encoder` (ImageEncoder) and `decoder` (a decoders.Decoder)."""

    def __init__(self, inputs, outputs, *, parts: dict | None = None, **kwargs):
        super().__init__(inputs, outputs, **kwargs)
        self._parts = _Parts(dict(parts or {}))

    @property
    def image_encoder(self) -> ImageEncoder:
        return self._parts.items["image_encoder"]

    @property
    def decoder(self) -> decoders.Decoder:
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
    decoder = decoders.build(m, vocab_size, name="decoder")
    logits = decoder(image_embedding, input_ids)
    return ShowAndTell({"image": image, "input_ids": input_ids}, logits, name="show_and_tell",
                       parts={"image_encoder": image_encoder, "decoder": decoder})


def set_backbone_trainable(model: ShowAndTell, trainable: bool) -> None:
    model.image_encoder.backbone.trainable = trainable
