"""Inception-v4 (Szegedy et al. 2016, arXiv:1602.07261) as a Keras functional model.

Keras has no Inception-v4 (not in keras.applications, keras-cv or keras-hub).
This one has the layer structure of TF-slim's model-zoo network
(`nets/inception_v4.py`), so its official checkpoint imports one to one
(caption_app.model.slim_import):

    [B, 299, 299, 3] in [-1, 1]
      stem: Conv2d_1a_3x3 .. Conv2d_2b_3x3, Mixed_3a, Mixed_4a, Mixed_5a  -> [B, 35, 35, 384]
      4 x Inception-A  Mixed_5b..Mixed_5e                                   -> [B, 35, 35, 384]
      Reduction-A      Mixed_6a                                             -> [B, 17, 17, 1024]
      7 x Inception-B  Mixed_6b..Mixed_6h                                   -> [B, 17, 17, 1024]
      Reduction-B      Mixed_7a                                             -> [B, 8, 8, 1536]
      3 x Inception-C  Mixed_7b..Mixed_7d                                   -> [B, 8, 8, 1536]
      global average pool                                                   -> [B, 1536]

Every convolution is Conv2D(use_bias=False) + BatchNormalization(scale=False,
epsilon=0.001) + ReLU, as in slim's `inception_arg_scope`. Layer names are the
slim scopes with "/" written as "." (Keras forbids "/" in names):

    slim  InceptionV4/Mixed_5b/Branch_1/Conv2d_0b_3x3/weights
    keras layer "Mixed_5b.Branch_1.Conv2d_0b_3x3", weight "kernel"
    slim  InceptionV4/Mixed_5b/Branch_1/Conv2d_0b_3x3/BatchNorm/beta
    keras layer "Mixed_5b.Branch_1.Conv2d_0b_3x3.BatchNorm", weight "beta"

and each block's output layer carries the slim endpoint's name ("Mixed_5e",
"Mixed_6h", "Mixed_7d"), so `model.get_layer("Mixed_6h").output` is that endpoint.
Padding is slim's: SAME unless a layer says VALID; 3x3 SAME average pools
exclude the padding from the average (TF's and Keras' avg_pool do).
"""

from __future__ import annotations

import keras

SLIM_SCOPE = "InceptionV4"
FEATURE_SIZE = 1536
MIN_IMAGE_SIZE = 75  # the smallest input that leaves Mixed_7a (3x3 stride-2 VALID) at least 1x1
NUM_CONVOLUTIONS = 149  # in the base network (slim: 151 with the 2 of the aux head)


def _conv(x, filters: int, kernel: tuple[int, int], scope: str, strides: int = 1, padding: str = "same"):
    """slim.conv2d under inception_arg_scope: conv (no bias) -> BN (no gamma, eps 1e-3) -> ReLU."""
    name = scope.replace("/", ".")
    x = keras.layers.Conv2D(filters, kernel, strides=strides, padding=padding, use_bias=False, name=name)(x)
    x = keras.layers.BatchNormalization(scale=False, epsilon=0.001, momentum=0.9997, name=f"{name}.BatchNorm")(x)
    return keras.layers.ReLU(name=f"{name}.Relu")(x)


def _max_pool(x, scope: str):
    return keras.layers.MaxPooling2D(3, strides=2, padding="valid", name=scope.replace("/", "."))(x)


def _avg_pool(x, scope: str):
    return keras.layers.AveragePooling2D(3, strides=1, padding="same", name=scope.replace("/", "."))(x)


def _concat(branches, name: str):
    return keras.layers.Concatenate(axis=-1, name=name.replace("/", "."))(branches)


def _inception_a(x, block: str):
    """[B, 35, 35, 384] -> [B, 35, 35, 96 + 96 + 96 + 96]."""
    b0 = _conv(x, 96, (1, 1), f"{block}/Branch_0/Conv2d_0a_1x1")
    b1 = _conv(x, 64, (1, 1), f"{block}/Branch_1/Conv2d_0a_1x1")
    b1 = _conv(b1, 96, (3, 3), f"{block}/Branch_1/Conv2d_0b_3x3")
    b2 = _conv(x, 64, (1, 1), f"{block}/Branch_2/Conv2d_0a_1x1")
    b2 = _conv(b2, 96, (3, 3), f"{block}/Branch_2/Conv2d_0b_3x3")
    b2 = _conv(b2, 96, (3, 3), f"{block}/Branch_2/Conv2d_0c_3x3")
    b3 = _avg_pool(x, f"{block}/Branch_3/AvgPool_0a_3x3")
    b3 = _conv(b3, 96, (1, 1), f"{block}/Branch_3/Conv2d_0b_1x1")
    return _concat([b0, b1, b2, b3], block)


def _reduction_a(x, block: str):
    """[B, 35, 35, 384] -> [B, 17, 17, 384 + 256 + 384]."""
    b0 = _conv(x, 384, (3, 3), f"{block}/Branch_0/Conv2d_1a_3x3", strides=2, padding="valid")
    b1 = _conv(x, 192, (1, 1), f"{block}/Branch_1/Conv2d_0a_1x1")
    b1 = _conv(b1, 224, (3, 3), f"{block}/Branch_1/Conv2d_0b_3x3")
    b1 = _conv(b1, 256, (3, 3), f"{block}/Branch_1/Conv2d_1a_3x3", strides=2, padding="valid")
    b2 = _max_pool(x, f"{block}/Branch_2/MaxPool_1a_3x3")
    return _concat([b0, b1, b2], block)


def _inception_b(x, block: str):
    """[B, 17, 17, 1024] -> [B, 17, 17, 384 + 256 + 256 + 128]."""
    b0 = _conv(x, 384, (1, 1), f"{block}/Branch_0/Conv2d_0a_1x1")
    b1 = _conv(x, 192, (1, 1), f"{block}/Branch_1/Conv2d_0a_1x1")
    b1 = _conv(b1, 224, (1, 7), f"{block}/Branch_1/Conv2d_0b_1x7")
    b1 = _conv(b1, 256, (7, 1), f"{block}/Branch_1/Conv2d_0c_7x1")
    b2 = _conv(x, 192, (1, 1), f"{block}/Branch_2/Conv2d_0a_1x1")
    b2 = _conv(b2, 192, (7, 1), f"{block}/Branch_2/Conv2d_0b_7x1")
    b2 = _conv(b2, 224, (1, 7), f"{block}/Branch_2/Conv2d_0c_1x7")
    b2 = _conv(b2, 224, (7, 1), f"{block}/Branch_2/Conv2d_0d_7x1")
    b2 = _conv(b2, 256, (1, 7), f"{block}/Branch_2/Conv2d_0e_1x7")
    b3 = _avg_pool(x, f"{block}/Branch_3/AvgPool_0a_3x3")
    b3 = _conv(b3, 128, (1, 1), f"{block}/Branch_3/Conv2d_0b_1x1")
    return _concat([b0, b1, b2, b3], block)


def _reduction_b(x, block: str):
    """[B, 17, 17, 1024] -> [B, 8, 8, 192 + 320 + 1024]."""
    b0 = _conv(x, 192, (1, 1), f"{block}/Branch_0/Conv2d_0a_1x1")
    b0 = _conv(b0, 192, (3, 3), f"{block}/Branch_0/Conv2d_1a_3x3", strides=2, padding="valid")
    b1 = _conv(x, 256, (1, 1), f"{block}/Branch_1/Conv2d_0a_1x1")
    b1 = _conv(b1, 256, (1, 7), f"{block}/Branch_1/Conv2d_0b_1x7")
    b1 = _conv(b1, 320, (7, 1), f"{block}/Branch_1/Conv2d_0c_7x1")
    b1 = _conv(b1, 320, (3, 3), f"{block}/Branch_1/Conv2d_1a_3x3", strides=2, padding="valid")
    b2 = _max_pool(x, f"{block}/Branch_2/MaxPool_1a_3x3")
    return _concat([b0, b1, b2], block)


def _inception_c(x, block: str):
    """[B, 8, 8, 1536] -> [B, 8, 8, 256 + 512 + 512 + 256]."""
    b0 = _conv(x, 256, (1, 1), f"{block}/Branch_0/Conv2d_0a_1x1")
    b1 = _conv(x, 384, (1, 1), f"{block}/Branch_1/Conv2d_0a_1x1")
    b1 = _concat([_conv(b1, 256, (1, 3), f"{block}/Branch_1/Conv2d_0b_1x3"),
                  _conv(b1, 256, (3, 1), f"{block}/Branch_1/Conv2d_0c_3x1")], f"{block}/Branch_1/concat")
    b2 = _conv(x, 384, (1, 1), f"{block}/Branch_2/Conv2d_0a_1x1")
    b2 = _conv(b2, 448, (3, 1), f"{block}/Branch_2/Conv2d_0b_3x1")
    b2 = _conv(b2, 512, (1, 3), f"{block}/Branch_2/Conv2d_0c_1x3")
    b2 = _concat([_conv(b2, 256, (1, 3), f"{block}/Branch_2/Conv2d_0d_1x3"),
                  _conv(b2, 256, (3, 1), f"{block}/Branch_2/Conv2d_0e_3x1")], f"{block}/Branch_2/concat")
    b3 = _avg_pool(x, f"{block}/Branch_3/AvgPool_0a_3x3")
    b3 = _conv(b3, 256, (1, 1), f"{block}/Branch_3/Conv2d_0b_1x1")
    return _concat([b0, b1, b2, b3], block)


def inception_v4(image_size: int = 299, pooling: str | None = "avg", name: str = "inception_v4") -> keras.Model:
    """Inception-v4 up to Mixed_7d, randomly initialized.

    Args:
      image_size: S, at least MIN_IMAGE_SIZE (299 is the trained size).
      pooling: "avg" for the global average pool (slim's PreLogitsFlatten),
        None for the Mixed_7d feature map.
    Returns:
      keras.Model [B, S, S, 3] float in [-1, 1] -> [B, 1536] ("avg") or
      [B, S', S', 1536] (None; S' = 8 at 299).
    """
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"Inception-v4 needs images of at least {MIN_IMAGE_SIZE} pixels, got {image_size}")
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = _conv(inputs, 32, (3, 3), "Conv2d_1a_3x3", strides=2, padding="valid")  # [B, 149, 149, 32]
    x = _conv(x, 32, (3, 3), "Conv2d_2a_3x3", padding="valid")  # [B, 147, 147, 32]
    x = _conv(x, 64, (3, 3), "Conv2d_2b_3x3")  # [B, 147, 147, 64]
    x = _concat([_max_pool(x, "Mixed_3a/Branch_0/MaxPool_0a_3x3"),
                 _conv(x, 96, (3, 3), "Mixed_3a/Branch_1/Conv2d_0a_3x3", strides=2, padding="valid")],
                "Mixed_3a")  # [B, 73, 73, 160]
    b0 = _conv(x, 64, (1, 1), "Mixed_4a/Branch_0/Conv2d_0a_1x1")
    b0 = _conv(b0, 96, (3, 3), "Mixed_4a/Branch_0/Conv2d_1a_3x3", padding="valid")
    b1 = _conv(x, 64, (1, 1), "Mixed_4a/Branch_1/Conv2d_0a_1x1")
    b1 = _conv(b1, 64, (1, 7), "Mixed_4a/Branch_1/Conv2d_0b_1x7")
    b1 = _conv(b1, 64, (7, 1), "Mixed_4a/Branch_1/Conv2d_0c_7x1")
    b1 = _conv(b1, 96, (3, 3), "Mixed_4a/Branch_1/Conv2d_1a_3x3", padding="valid")
    x = _concat([b0, b1], "Mixed_4a")  # [B, 71, 71, 192]
    x = _concat([_conv(x, 192, (3, 3), "Mixed_5a/Branch_0/Conv2d_1a_3x3", strides=2, padding="valid"),
                 _max_pool(x, "Mixed_5a/Branch_1/MaxPool_1a_3x3")], "Mixed_5a")  # [B, 35, 35, 384]
    for block in "bcde":
        x = _inception_a(x, f"Mixed_5{block}")  # [B, 35, 35, 384]
    x = _reduction_a(x, "Mixed_6a")  # [B, 17, 17, 1024]
    for block in "bcdefgh":
        x = _inception_b(x, f"Mixed_6{block}")  # [B, 17, 17, 1024]
    x = _reduction_b(x, "Mixed_7a")  # [B, 8, 8, 1536]
    for block in "bcd":
        x = _inception_c(x, f"Mixed_7{block}")  # [B, 8, 8, 1536]
    if pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)  # [B, 1536]
    elif pooling is not None:
        raise ValueError(f"pooling must be 'avg' or None, got {pooling!r}")
    return keras.Model(inputs, x, name=name)


def slim_variable_name(layer_name: str, weight_name: str) -> str:
    """The slim checkpoint name of one weight of this model.

    "Mixed_5b.Branch_1.Conv2d_0b_3x3", "kernel" -> "InceptionV4/Mixed_5b/Branch_1/Conv2d_0b_3x3/weights";
    "Mixed_5b.Branch_1.Conv2d_0b_3x3.BatchNorm", "beta" -> ".../Conv2d_0b_3x3/BatchNorm/beta".
    """
    leaf = {"kernel": "weights", "beta": "beta", "moving_mean": "moving_mean",
            "moving_variance": "moving_variance"}.get(weight_name)
    if leaf is None:
        raise ValueError(f"{layer_name}/{weight_name} has no TF-slim counterpart (slim's BatchNorm has no "
                         "gamma and its convolutions no bias)")
    return f"{SLIM_SCOPE}/{layer_name.replace('.', '/')}/{leaf}"
