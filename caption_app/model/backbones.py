"""BACKBONES: the registry of image encoders, by name.

Each entry knows its default and minimum image size, its feature size, its
preprocessing and how to build a Keras model `[batch, size, size, 3] float32
(preprocessed) -> [batch, features]`. The config names a backbone; the pipeline
and the model ask the entry for sizes and preprocessing instead of hard-coding them.

    name                 built by                          weights
    inception_v3         keras.applications.InceptionV3    imagenet (Keras file), TF-slim checkpoint, file
    inception_resnet_v2  keras.applications                imagenet (Keras file), file
    inception_v4         caption_app.model.inception_v4    TF-slim checkpoint, file
    efficientnetv2_b0    keras_cv EfficientNetV2Backbone   file (e.g. a keras-cv preset's model.weights.h5)
    resnet50_v2          keras_cv ResNetV2Backbone         file
    small_cnn            here                              file (from-scratch CNN for tests and demos)
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tempfile
from typing import Callable

import keras

from caption_app.model import inception_v4, slim_import
from caption_app.errors import CaptionAppError

NONE = "none"
IMAGENET = "imagenet"


class BackboneError(CaptionAppError, ValueError):
    """An unknown backbone, an unusable weights setting or image size."""


@dataclasses.dataclass(frozen=True)
class Backbone:
    name: str
    build: Callable[[int, str | None], keras.Model]  # (image_size, keras `weights`) -> model without preprocessing
    image_size: int  # default input size
    min_image_size: int
    feature_size: int  # width of the pooled output at image_size (small_cnn's grows with the size)
    preprocessing: str  # "inception": x / 127.5 - 1;  "unit": x / 255
    imagenet_file: str | None = None  # keras' cached file name of the ImageNet weights
    imagenet_url: str | None = None
    weights_hint: str = ""  # where pretrained weights for this backbone come from

    def preprocess_layer(self) -> keras.layers.Layer:
        if self.preprocessing == "inception":
            return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")
        if self.preprocessing == "unit":
            return keras.layers.Rescaling(1.0 / 255.0, name="preprocess")
        raise BackboneError(f"unknown preprocessing {self.preprocessing!r}")


# keras-cv backbones: (keras_cv.models class, its constructor arguments), the architectures of the
# keras-cv presets of the same name (parameter counts equal the presets' metadata).
KERAS_CV_ARGUMENTS: dict[str, tuple[str, dict]] = {
    # EfficientNetV2-B0 (Tan & Le 2021): 5,919,312 parameters.
    "efficientnetv2_b0": ("EfficientNetV2Backbone", dict(
        width_coefficient=1.0, depth_coefficient=1.0, stackwise_kernel_sizes=[3, 3, 3, 3, 3, 3],
        stackwise_num_repeats=[1, 2, 2, 3, 5, 8], stackwise_input_filters=[32, 16, 32, 48, 96, 112],
        stackwise_output_filters=[16, 32, 48, 96, 112, 192], stackwise_expansion_ratios=[1, 4, 4, 4, 6, 6],
        stackwise_squeeze_and_excite_ratios=[0, 0, 0, 0.25, 0.25, 0.25], stackwise_strides=[1, 2, 2, 2, 1, 2],
        stackwise_conv_types=["fused"] * 3 + ["unfused"] * 3)),
    # ResNet-50 v2 (He et al. 2016, pre-activation): 23,564,800 parameters.
    "resnet50_v2": ("ResNetV2Backbone", dict(
        stackwise_filters=[64, 128, 256, 512], stackwise_blocks=[3, 4, 6, 3], stackwise_strides=[1, 2, 2, 2],
        block_type="block")),
}


def _keras_cv(name: str) -> Callable[[int, str | None], keras.Model]:
    """A keras-cv backbone from explicit constructor arguments, average-pooled.

    keras-cv's preset shortcuts (`from_preset`) download their configs, so the
    arguments are spelled out; `include_rescaling=False` because the model's
    "unit" preprocessing layer already divides by 255 (what keras-cv's own
    rescaling does). The pooled model's layers are the keras-cv backbone's
    own, so a keras-cv `.weights.h5` of the same backbone loads into it.
    """
    def build(image_size: int, weights: str | None) -> keras.Model:
        del weights  # only random init; a file is loaded by build_backbone
        import keras_cv  # imported lazily: slow to import, and only these backbones need it

        constructor, arguments = KERAS_CV_ARGUMENTS[name]
        backbone = getattr(keras_cv.models, constructor)(
            include_rescaling=False, input_shape=(image_size, image_size, 3), **arguments)
        features = keras.layers.GlobalAveragePooling2D(name="avg_pool")(backbone.output)  # [B, F]
        return keras.Model(backbone.input, features, name=backbone.name)
    return build


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


def with_spatial_map(backbone: keras.Model, name: str) -> keras.Model:
    """The same layers (and variables), giving the pooled features and the spatial map
    [B, h, w, C] that the backbone's last global average pooling reads (for attention)."""
    pools = [layer for layer in backbone.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D)]
    if not pools:
        raise BackboneError(f"backbone {name} has no global average pooling, so it gives no spatial map "
                            "for model.attention_size; set model.attention_size=0")
    return keras.Model(backbone.inputs, [backbone.outputs[0], pools[-1].input], name=backbone.name)


_KERAS_WEIGHTS = "https://storage.googleapis.com/tensorflow/keras-applications/"


def _inception(name: str, app: Callable, feature_size: int) -> Backbone:
    """A keras.applications Inception network: 299x299, [-1, 1] inputs, ImageNet weights file."""
    weights_file = f"{name}_weights_tf_dim_ordering_tf_kernels_notop.h5"
    return Backbone(name=name, build=_keras_app(app), image_size=299, min_image_size=75,
                    feature_size=feature_size, preprocessing="inception", imagenet_file=weights_file,
                    imagenet_url=f"{_KERAS_WEIGHTS}{name}/{weights_file}")


def _slim_hint(name: str) -> str:
    network = slim_import.SLIM_NETWORKS[name]
    return (f"the TF-slim checkpoint {network.archive_url}: extract it (tar xzf) and pass "
            f"--set model.backbone_weights=/path/to/{network.checkpoint_file}")


_KERAS_CV_HINT = ("a keras-cv preset's model.weights.h5 (download the preset {preset!r} from Kaggle on a machine "
                  "with internet) or a .weights.h5 saved from this backbone")

BACKBONES: dict[str, Backbone] = {
    "inception_v3": dataclasses.replace(_inception("inception_v3", keras.applications.InceptionV3, 2048),
                                        weights_hint=_slim_hint("inception_v3")),
    "inception_resnet_v2": _inception("inception_resnet_v2", keras.applications.InceptionResNetV2, 1536),
    "inception_v4": Backbone(
        name="inception_v4", build=lambda size, weights: inception_v4.inception_v4(size),
        image_size=299, min_image_size=inception_v4.MIN_IMAGE_SIZE, feature_size=inception_v4.FEATURE_SIZE,
        preprocessing="inception", weights_hint=_slim_hint("inception_v4")),
    "efficientnetv2_b0": Backbone(
        name="efficientnetv2_b0", build=_keras_cv("efficientnetv2_b0"), image_size=224, min_image_size=32,
        feature_size=1280, preprocessing="unit",
        weights_hint=_KERAS_CV_HINT.format(preset="efficientnetv2_b0_imagenet")),
    "resnet50_v2": Backbone(
        name="resnet50_v2", build=_keras_cv("resnet50_v2"), image_size=224, min_image_size=32,
        feature_size=2048, preprocessing="unit", weights_hint=_KERAS_CV_HINT.format(preset="resnet50_v2_imagenet")),
    "small_cnn": Backbone(
        name="small_cnn", build=_small_cnn, image_size=64, min_image_size=16, feature_size=192 + 4 * 192,
        preprocessing="unit"),
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


def imagenet_cache_path(name: str) -> str:
    """Where Keras keeps backbone `name`'s ImageNet weights file once downloaded."""
    return os.path.join(os.path.expanduser(os.environ.get("KERAS_HOME", "~/.keras")), "models",
                        get(name).imagenet_file)


def imagenet_weights_available(name: str) -> bool:
    """Whether `model.backbone_weights=imagenet` can load for backbone `name` here: Keras has an
    ImageNet file for it and that file is cached or its host is reachable."""
    spec = get(name)
    if spec.imagenet_url is None:
        return False
    return os.path.exists(imagenet_cache_path(name)) or _network_reachable(spec.imagenet_url)


def _network_reachable(url: str, timeout: float = 3.0) -> bool:
    host = url.split("/")[2]
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _no_imagenet_message(spec: Backbone) -> str:
    where = spec.weights_hint or "a weights file"
    return (f"Keras has no ImageNet weights file for backbone {spec.name}; use {where}, or "
            "model.backbone_weights=none (random init)")


def build_backbone(name: str, weights: str, image_size: int) -> keras.Model:
    """Builds backbone `name` at `image_size` with `weights`.

    Args:
      weights: "imagenet" (Keras' ImageNet file, downloaded by Keras once, then
        cached in ~/.keras/models), "none" (random init), a TF-slim checkpoint
        prefix (inception_v3, inception_v4: e.g. /data/inception_v4.ckpt) or a
        Keras weights file (Keras' `.h5` ImageNet files or a `.weights.h5`
        saved by Keras).
    Returns:
      keras.Model, [batch, size, size, 3] preprocessed float32 -> [batch, features].
    Raises:
      BackboneError: unknown name, unusable weights (the message says why and
        what to pass instead).
    """
    spec = get(name)
    weights = weights.strip()
    if weights.lower() == NONE:
        return spec.build(image_size, None)
    if weights.lower() == IMAGENET:
        if spec.imagenet_url is None:
            raise BackboneError(_no_imagenet_message(spec))
        cached = imagenet_cache_path(name)
        if not imagenet_weights_available(name):
            slim = f" Or start from {spec.weights_hint}." if spec.weights_hint else ""
            raise BackboneError(
                f"ImageNet weights for {name} are not cached and {spec.imagenet_url.split('/')[2]} is "
                f"unreachable. Download {spec.imagenet_url} on a machine with internet, then either pass "
                f"--set model.backbone_weights=/path/to/{spec.imagenet_file} or copy it to {cached}.{slim}")
        return spec.build(image_size, IMAGENET)
    if slim_import.is_tf_checkpoint(weights):
        model = spec.build(image_size, None)
        try:
            slim_import.import_slim_checkpoint(model, name, weights)
        except slim_import.SlimImportError as e:
            raise BackboneError(str(e)) from e
        return model
    if not os.path.exists(weights):
        raise BackboneError(f"backbone weights file {weights} does not exist "
                            "(model.backbone_weights takes imagenet, none, a TF-slim checkpoint prefix or a "
                            "Keras weights file)")
    model = spec.build(image_size, None)
    if weights.endswith(".weights.h5"):
        mismatches = weights_file_mismatches(model, weights)
        if mismatches:
            raise BackboneError(f"cannot load {weights} into backbone {name}: it holds the weights of another "
                                f"architecture; "
                                f"{len(mismatches)} variables differ, the first ones:\n  "
                                + "\n  ".join(mismatches[:5]))
    try:
        model.load_weights(weights)
    except Exception as e:  # Keras raises several types for mismatched files
        raise BackboneError(f"cannot load {weights} into backbone {name}: {e}") from e
    return model


def weights_file_mismatches(model: keras.Model, path: str) -> list[str]:
    """The differences between a `.weights.h5` file and `model`'s own layout (h5 paths and shapes).

    Keras loads a file holding more layers than the model without a word, so
    the layouts are compared first. The model's layout is what Keras itself
    writes for it (saved to a temporary file), compared entry by entry;
    an empty list means the file fits.
    """
    import h5py  # a Keras dependency

    def layout(file: str) -> dict[str, tuple]:
        entries = {}
        with h5py.File(file, "r") as f:
            f.visititems(lambda key, obj: entries.__setitem__(key, obj.shape)
                         if isinstance(obj, h5py.Dataset) else None)
        return entries

    with tempfile.TemporaryDirectory() as tmp:
        own_file = os.path.join(tmp, "own.weights.h5")
        model.save_weights(own_file)
        own = layout(own_file)
    try:
        theirs = layout(path)
    except OSError as e:
        return [f"{path} is not an HDF5 weights file ({e})"]
    # Shape differences first (the most telling), then what is missing, then what is extra.
    out = [f"{key}: {_shape(theirs[key])} in the file, {_shape(own[key])} in the model"
           for key in own if key in theirs and theirs[key] != own[key]]
    out += [f"{key}: missing in the file, {_shape(own[key])} in the model" for key in own if key not in theirs]
    out += [f"{key}: {_shape(theirs[key])} in the file, not in the model" for key in theirs if key not in own]
    return out


def _shape(shape: tuple) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"
