"""BACKBONES: the registry of image encoders, by name.

Each entry knows its default and minimum image size, its preprocessing and how
to build a Keras model `[batch, size, size, 3] float32 (0-255) -> [batch, features]`.
The config names a backbone; the pipeline and the model ask the entry for sizes
and preprocessing instead of hard-coding them.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from typing import Callable

import keras

NONE = "none"
IMAGENET = "imagenet"


class BackboneError(ValueError):
    """An unknown backbone, an unusable weights setting or image size."""


@dataclasses.dataclass(frozen=True)
class Backbone:
    name: str
    build: Callable[[int, str | None], keras.Model]  # (image_size, keras `weights`) -> model without preprocessing
    image_size: int  # default input size
    min_image_size: int
    preprocessing: str  # "inception": x / 127.5 - 1;  "unit": x / 255
    imagenet_file: str | None = None  # keras' cached file name of the ImageNet weights
    imagenet_url: str | None = None

    def preprocess_layer(self) -> keras.layers.Layer:
        if self.preprocessing == "inception":
            return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")
        if self.preprocessing == "unit":
            return keras.layers.Rescaling(1.0 / 255.0, name="preprocess")
        raise BackboneError(f"unknown preprocessing {self.preprocessing!r}")


def _keras_app(app: Callable) -> Callable[[int, str | None], keras.Model]:
    def build(image_size: int, weights: str | None) -> keras.Model:
        return app(include_top=False, weights=weights, input_shape=(image_size, image_size, 3),
                   pooling="avg")
    return build


def _small_cnn(image_size: int, weights: str | None) -> keras.Model:
    """A from-scratch CNN for tiny images (tests, the shapes demo).

    Conv-BN-ReLU blocks halve the resolution down to about 4x4. The features
    are the global average (what is in the image, wherever it is) next to the
    per-column averages (what is where, left to right), which simple-scene
    captions ("a red circle and a blue square") follow. A plain flatten would
    have to learn every object at every one of the 16 cells.
    """
    del weights  # only random init; a file is loaded by build_backbone
    inputs = keras.Input((image_size, image_size, 3))
    x = inputs
    size = image_size
    for i, width in enumerate((32, 64, 128, 192, 256)):
        if size <= 4:
            break
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{i}a")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{i}a")(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False, name=f"conv{i}b")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{i}b")(x)
        x = keras.layers.ReLU()(x)
        size = (size + 1) // 2
    pooled = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)  # [B, C]
    columns = keras.layers.AveragePooling2D((size, 1), name="column_pool")(x)  # [B, 1, W', C]
    columns = keras.layers.Flatten(name="columns")(columns)  # [B, W' * C]
    features = keras.layers.Concatenate(name="features")([pooled, columns])
    return keras.Model(inputs, features, name="small_cnn")


_KERAS_WEIGHTS = "https://storage.googleapis.com/tensorflow/keras-applications/"


def _inception(name: str, app: Callable) -> Backbone:
    """A keras.applications Inception network: 299x299, [-1, 1] inputs, ImageNet weights file."""
    weights_file = f"{name}_weights_tf_dim_ordering_tf_kernels_notop.h5"
    return Backbone(name=name, build=_keras_app(app), image_size=299, min_image_size=75,
                    preprocessing="inception", imagenet_file=weights_file,
                    imagenet_url=f"{_KERAS_WEIGHTS}{name}/{weights_file}")


BACKBONES: dict[str, Backbone] = {
    "inception_v3": _inception("inception_v3", keras.applications.InceptionV3),
    "inception_resnet_v2": _inception("inception_resnet_v2", keras.applications.InceptionResNetV2),
    "small_cnn": Backbone(
        name="small_cnn", build=_small_cnn, image_size=64, min_image_size=16, preprocessing="unit"),
}


def get(name: str) -> Backbone:
    """The registry entry of `name`; an unknown name lists the choices."""
    if name not in BACKBONES:
        raise BackboneError(f"unknown backbone {name!r}; choose one of: {', '.join(sorted(BACKBONES))} "
                            "(set it with --set model.backbone=NAME)")
    return BACKBONES[name]


def resolve_image_size(name: str, image_size: int) -> int:
    """`image_size`, or the backbone's default when 0; refuses sizes below its minimum."""
    spec = get(name)
    size = image_size or spec.image_size
    if size < spec.min_image_size:
        raise BackboneError(f"image size {size} is below {name}'s minimum of {spec.min_image_size} pixels")
    return size


def _network_reachable(url: str, timeout: float = 3.0) -> bool:
    host = url.split("/")[2]
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def build_backbone(name: str, weights: str, image_size: int) -> keras.Model:
    """Builds backbone `name` at `image_size` with `weights`.

    Args:
      weights: "imagenet" (downloaded by Keras once, then cached in
        ~/.keras/models), "none" (random init) or a path to a weights file
        (Keras' `.h5` ImageNet files or a `.weights.h5` saved by Keras).
    Returns:
      keras.Model, [batch, size, size, 3] preprocessed float32 -> [batch, features].
    """
    spec = get(name)
    weights = weights.strip()
    if weights.lower() == NONE:
        return spec.build(image_size, None)
    if weights.lower() == IMAGENET:
        if spec.imagenet_url is None:
            raise BackboneError(f"backbone {name} has no ImageNet weights; use model.backbone_weights=none "
                                "or a weights file")
        cached = os.path.join(os.path.expanduser(os.environ.get("KERAS_HOME", "~/.keras")), "models",
                              spec.imagenet_file)
        if not os.path.exists(cached) and not _network_reachable(spec.imagenet_url):
            raise BackboneError(
                f"ImageNet weights for {name} are not cached and {spec.imagenet_url.split('/')[2]} is "
                f"unreachable. Download {spec.imagenet_url} on a machine with internet, then either pass "
                f"--set model.backbone_weights=/path/to/{spec.imagenet_file} or copy it to {cached}.")
        return spec.build(image_size, IMAGENET)
    if not os.path.exists(weights):
        raise BackboneError(f"backbone weights file {weights} does not exist "
                            "(model.backbone_weights takes imagenet, none or a file path)")
    model = spec.build(image_size, None)
    try:
        model.load_weights(weights)
    except Exception as e:  # Keras raises several types for mismatched files
        raise BackboneError(f"cannot load {weights} into backbone {name}: {e}") from e
    return model
