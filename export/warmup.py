"""TF Serving warmup: `assets.extra/tf_serving_warmup_requests`.

TF Serving replays these PredictionLog records (tensorflow-serving-api's
protos, in a TFRecord file) when it loads a version, before it reports the
version as available, so the first real request does not pay for lazy
initialization (kernel selection, memory pools; on GPU, cuDNN autotuning for
each batch size).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from caption_app import io_utils
from caption_app.data.vocabulary import END_ID, START_ID

WARMUP_FILE = "tf_serving_warmup_requests"
# serving_default batch sizes to warm up: deploy/batching_parameters.txt's allowed_batch_sizes.
BATCH_SIZES = (1, 8, 32)
IMAGE_SIZE = 64  # pixels of the generated warmup image; the model resizes it


def warmup_image(size: int = IMAGE_SIZE) -> np.ndarray:
    """A deterministic colour gradient, [size, size, 3] uint8."""
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    r, g = np.meshgrid(ramp, ramp)
    return np.stack([r, g, 255 - r], axis=-1).astype(np.uint8)


def _request(model_name: str, signature: str, inputs: dict) -> prediction_log_pb2.PredictionLog:
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))


def requests(model_name: str, state_sizes: dict[str, int],
             batch_sizes: tuple[int, ...] = BATCH_SIZES) -> list[prediction_log_pb2.PredictionLog]:
    """One request per signature, `serving_default` at each of `batch_sizes`.

    Args:
      model_name: the served model's name (TF Serving checks it).
      state_sizes: decode_step's state inputs and their widths, as the decoder declares them
        (`TrainedCaptioner.state_sizes`).
    """
    pixels = warmup_image()
    jpeg = tf.io.encode_jpeg(pixels).numpy()
    images = pixels[None].astype(np.float32)  # [1, h, w, 3]
    state = {name: np.zeros([1, width], np.float32) for name, width in state_sizes.items()}
    logs = [_request(model_name, "serving_default", {"image_bytes": np.array([jpeg] * b, dtype=object)})
            for b in batch_sizes]
    logs += [
        _request(model_name, "caption_images", {"images": images}),
        _request(model_name, "sample_captions", {"image_bytes": np.array([jpeg], dtype=object),
                                                 "seed": np.array([0], np.int64)}),
        _request(model_name, "encode_image", {"images": images}),
        _request(model_name, "decode_step", {"input_ids": np.array([START_ID], np.int32), **state}),
        _request(model_name, "ids_to_text", {"ids": np.array([[START_ID, END_ID]], np.int32)}),
    ]
    return logs


def write(saved_model_dir: str, logs: list[prediction_log_pb2.PredictionLog]) -> str:
    """Writes `saved_model_dir/assets.extra/tf_serving_warmup_requests`; returns its path."""
    extra = os.path.join(saved_model_dir, "assets.extra")
    io_utils.makedirs(extra)
    path = os.path.join(extra, WARMUP_FILE)
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return path


def read(saved_model_dir: str) -> list[prediction_log_pb2.PredictionLog]:
    """The warmup records of an export, parsed."""
    path = os.path.join(saved_model_dir, "assets.extra", WARMUP_FILE)
    return [prediction_log_pb2.PredictionLog.FromString(record.numpy())
            for record in tf.data.TFRecordDataset(path)]
