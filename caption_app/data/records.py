"""The one TFRecord schema: one `tf.train.Example` per image.

Each record holds the encoded image bytes once and every raw caption of that
image (im2txt wrote each image once per caption, five times over for COCO).
`tfrecords_tools` writes records with `make_example`; the input pipeline reads
them with `parse_example`. The feature cache (caption_app/training/feature_cache.py) stores
the same record with the backbone's feature vector in place of the image
(`make_feature_example` / `parse_feature_example`). Nothing else knows the
feature names.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

IMAGE_ID = "image/id"  # bytes: the image's file name (or dataset id)
IMAGE_ENCODED = "image/encoded"  # bytes: JPEG/PNG/GIF/BMP as published
CAPTIONS = "image/captions"  # bytes list: raw UTF-8 captions, untokenized
FEATURE_VECTOR = "features"  # float list: a frozen backbone's output (feature cache records)

SPLITS = ("train", "val", "test")

FEATURES = {
    IMAGE_ID: tf.io.FixedLenFeature([], tf.string),
    IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string),
    CAPTIONS: tf.io.VarLenFeature(tf.string),
}


def make_example(image_id: str, encoded: bytes, captions: Sequence[str]) -> tf.train.Example:
    """Builds the record of one image.

    Args:
      image_id: the image's file name or dataset id.
      encoded: the encoded image bytes, unchanged.
      captions: the image's raw captions (at least one).
    """
    def _bytes(values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))

    return tf.train.Example(features=tf.train.Features(feature={
        IMAGE_ID: _bytes([image_id.encode("utf-8")]),
        IMAGE_ENCODED: _bytes([encoded]),
        CAPTIONS: _bytes([c.encode("utf-8") for c in captions]),
    }))


def parse_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parses one serialized record.

    Returns:
      {"image_id": [] string, "encoded": [] string, "captions": [num_captions] string}
    """
    parsed = tf.io.parse_single_example(serialized, FEATURES)
    return {
        "image_id": parsed[IMAGE_ID],
        "encoded": parsed[IMAGE_ENCODED],
        "captions": tf.sparse.to_dense(parsed[CAPTIONS], default_value=""),
    }


def make_feature_example(image_id: bytes, features: Sequence[float], captions: Sequence[bytes]) -> tf.train.Example:
    """The feature cache's record of one image: its backbone features [F] instead of its bytes."""
    return tf.train.Example(features=tf.train.Features(feature={
        IMAGE_ID: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_id])),
        FEATURE_VECTOR: tf.train.Feature(float_list=tf.train.FloatList(value=features)),
        CAPTIONS: tf.train.Feature(bytes_list=tf.train.BytesList(value=list(captions))),
    }))


def parse_feature_example(serialized: tf.Tensor, feature_size: int) -> dict[str, tf.Tensor]:
    """Parses one feature cache record: {"features": [F] float32, "captions": [num_captions] string}."""
    parsed = tf.io.parse_single_example(serialized, {
        FEATURE_VECTOR: tf.io.FixedLenFeature([feature_size], tf.float32),
        CAPTIONS: tf.io.VarLenFeature(tf.string)})
    return {"features": parsed[FEATURE_VECTOR],
            "captions": tf.sparse.to_dense(parsed[CAPTIONS], default_value="")}


def shard_pattern(split: str) -> str:
    """The file-name glob of one split's shards inside a data dir."""
    return f"{split}-?????-of-?????.tfrecord"


def shard_name(split: str, index: int, num_shards: int) -> str:
    """`train-00000-of-00004.tfrecord`."""
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"
