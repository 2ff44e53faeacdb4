"""A trained run dir -> a SavedModel that stock TensorFlow Serving loads as-is.

    OUT/<name>/<version>/saved_model.pb, variables/
    OUT/<name>/<version>/assets/vocab.txt        the run's vocabulary (`word count` lines; id = line + 4)
    OUT/<name>/<version>/assets/config.json      image size, beam settings, special ids, the run's config
    OUT/<name>/<version>/assets.extra/tf_serving_warmup_requests

Signatures (B images, K captions, N decoder rows, H LSTM units, V ids):

    serving_default  image_bytes string [B] (JPEG/PNG/GIF/BMP)
                     -> captions string [B, K], log_probs / scores float32 [B, K], valid bool [B]
    caption_images   images float32 [B, h, w, 3] (0-255, any size)
                     -> captions string [B, K], log_probs / scores float32 [B, K]
    encode_image     images float32 [B, h, w, 3] -> state_h, state_c float32 [B, H]
    decode_step      input_ids int32 [N], state_h, state_c [N, H]
                     -> log_probs float32 [N, V], state_h, state_c [N, H]
                     (a model with `image_every_step` or `image_logits` also has state_image [., E] in both)
    ids_to_text      ids int32 [N, T] -> text string [N]

Everything is the training code's own: `Captioner.encode` / `decode_step`,
`beam_search`, `image_bytes.decode_images` / `pipeline.resize_image` and
`Vocabulary.ids_to_text` (the tokens are a constant gathered in-graph). The
graphs hold core TensorFlow ops only: no tensorflow_text, no py_function, no
XLA-compiled functions (`jit_compile=False`), so the TF Serving GPU build
loads them.

One bad image does not fail its batch, and no bytes cost more memory than the
pixel limit allows (caption_app/data/image_bytes.py): each image's declared
size is read from its header before decoding, and bytes that are not
JPEG/PNG/GIF/BMP or declare more than `max_image_pixels` are not decoded; GIFs
are cut to their first frame; the rest decode through `tf.data` with
`ignore_errors()`. The images that decode are captioned, the others get
`valid=false`, an empty caption and -inf scores. The price is a dataset built
per call, ~10 ms on CPU whatever the batch size (bench/); `caption_images`
skips it for clients that decode themselves.

Keras' `ExportArchive` is not used: it has no way to attach asset files; a
`tf.Module` holding the model's variables does the same job here.
"""

from __future__ import annotations

import dataclasses
import os
import re

import tensorflow as tf

from caption_app import io_utils
from caption_app.runs import layout as run_layout
from caption_app.runs import loader as run_loader
from caption_app.config import Config
from caption_app.io_utils import write_json_atomic as write_json
from caption_app.data.image_bytes import DEFAULT_MAX_IMAGE_PIXELS, decode_images
from caption_app.data.pipeline import TensorSizes, resize_image
from caption_app.inference.settings import DecodeSettings, DecodeSettingsError
from caption_app.data.vocabulary import END_ID, PAD_ID, SPECIAL_TOKENS, START_ID, UNK_ID, VOCAB_FILE, Vocabulary
from caption_app.model.show_and_tell import Captioner
from caption_app.errors import CaptionAppError

VOCAB_ASSET = VOCAB_FILE
CONFIG_ASSET = "config.json"
SIGNATURES = ("serving_default", "caption_images", "encode_image", "decode_step", "ids_to_text")
FORMAT_VERSION = 1

_VERSION_DIR = re.compile(r"^\d+$")
_NEG_INF = float("-inf")


class ExportError(CaptionAppError, ValueError):
    """Bad export arguments or an output location that would overwrite a version."""


class CaptionModule(tf.Module):
    """The exported object: the model's variables, the assets and the signature functions.

    Args:
      captioner: the trained model's inference views (its image size S and
        LSTM units H shape the signatures).
      vocab: its vocabulary.
      settings: beam search settings baked into the captioning signatures (resolved).
      vocab_file, config_file: files that become `assets/` of the SavedModel.
      max_image_pixels: `serving_default` decodes no image whose header declares more pixels.
      preprocess: the run's `data.preprocess` (how every signature resizes images).
    """

    def __init__(self, captioner: Captioner, vocab: Vocabulary, settings: DecodeSettings, vocab_file: str,
                 config_file: str, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, preprocess: str = "default"):
        super().__init__(name="caption")
        self._captioner = captioner  # not trackable: only its variables below are saved
        self._vocab = vocab
        self._image_size = captioner.image_size
        self._settings = settings
        self._max_image_pixels = max_image_pixels
        self._preprocess = preprocess
        self.vocab_file = tf.saved_model.Asset(vocab_file)
        self.config_file = tf.saved_model.Asset(config_file)
        self._state_names = list(captioner.decoder.state_sizes())
        images = tf.TensorSpec([None, None, None, 3], tf.float32, name="images")
        state = [tf.TensorSpec([None, width], tf.float32, name=name)
                 for name, width in captioner.decoder.state_sizes().items()]

        def function(fn, *specs):
            return tf.function(fn, input_signature=list(specs), autograph=False, jit_compile=False)

        self.serving_default = function(self._caption_bytes, tf.TensorSpec([None], tf.string, name="image_bytes"))
        self.caption_images = function(self._caption_images, images)
        self.encode_image = function(self._encode_image, images)
        self.decode_step = function(self._decode_step, tf.TensorSpec([None], tf.int32, name="input_ids"), *state)
        self.ids_to_text = function(self._ids_to_text, tf.TensorSpec([None, None], tf.int32, name="ids"))
        # Save the tf.Variables the functions capture (as Keras' ExportArchive does), not the Keras
        # Variable wrappers: TF Serving loads into a Session, which restores variables by their graph
        # names and would leave the functions' captures uninitialized ("Could not find variable").
        captured = {}
        for name in SIGNATURES:
            for variable in getattr(self, name).get_concrete_function().variables:
                captured[id(variable)] = variable
        self.model_variables = list(captured.values())

    def signatures(self) -> dict:
        return {name: getattr(self, name) for name in SIGNATURES}

    def _generate(self, images):
        """images [B, S, S, 3] -> captions [B, K], log_probs [B, K], scores [B, K]."""

        def generate(batch):
            result = self._captioner.generate(batch, self._settings)
            return self._vocab.ids_to_text(result.ids), result.log_probs, result.scores

        return _on_nonempty_batch(generate, images)

    def _caption_bytes(self, image_bytes):
        n = tf.shape(image_bytes)[0]
        # [M, S, S, 3], [M]: the images that decoded within the pixel limit, and their rows
        images, index = decode_images(image_bytes, self._image_size, self._max_image_pixels,
                                      self._preprocess)
        captions, log_probs, scores = self._generate(images)  # each [M, K]
        k = self._settings.num_captions
        where = index[:, None]  # [M, 1]

        def scatter(values, fill):  # [M, K] -> [B, K], `fill` for images that did not decode
            return tf.tensor_scatter_nd_update(tf.fill([n, k], tf.constant(fill, values.dtype)), where, values)

        valid = tf.tensor_scatter_nd_update(tf.zeros([n], tf.bool), where, tf.ones_like(index, tf.bool))
        return {"captions": scatter(captions, ""), "log_probs": scatter(log_probs, _NEG_INF),
                "scores": scatter(scores, _NEG_INF), "valid": valid}

    def _caption_images(self, images):
        captions, log_probs, scores = self._generate(resize_image(images, self._image_size, self._preprocess))
        return {"captions": captions, "log_probs": log_probs, "scores": scores}

    def _encode_image(self, images):
        state = _on_nonempty_batch(self._captioner.encode, resize_image(images, self._image_size, self._preprocess))
        return dict(zip(self._state_names, state))

    def _decode_step(self, input_ids, *state):
        log_probs, new_state = self._captioner.decode_step(input_ids, list(state))
        return {"log_probs": log_probs, **dict(zip(self._state_names, new_state))}

    def _ids_to_text(self, ids):
        return {"text": self._vocab.ids_to_text(ids)}


def _on_nonempty_batch(fn, images):
    """fn(images) for images [B, S, S, 3], each output [B, ...], also when B = 0.

    The backbone's batch normalization fails on an empty batch on CPU (TF 2.21:
    "Incompatible shapes: [32] vs. [0,32,32,3]"), and a batch where no image
    decoded is empty: `fn` then gets one black image and its outputs' first
    B (= 0) rows are returned.
    """
    n = tf.shape(images)[0]
    padded = tf.cond(n > 0, lambda: images,
                     lambda: tf.zeros(tf.concat([[1], tf.shape(images)[1:]], 0), images.dtype))
    return tf.nest.map_structure(lambda t: t[:n], fn(padded))


def existing_versions(model_dir: str) -> list[int]:
    """The integer-named version dirs under `model_dir` (what TF Serving would load), ascending."""
    if not io_utils.isdir(model_dir):
        return []
    return sorted(int(d) for d in io_utils.listdir(model_dir)
                  if _VERSION_DIR.match(d) and io_utils.isdir(os.path.join(model_dir, d)))


def export_config(config: Config, sizes: TensorSizes, vocab: Vocabulary, settings: DecodeSettings, *,
                  run_dir: str, checkpoint: str, units: int,
                  max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> dict:
    """What `assets/config.json` says about the export (for clients and people)."""
    return {
        "format_version": FORMAT_VERSION,
        "image_size": sizes.image_size,
        "lstm_units": units,
        "vocab_size": vocab.size,
        "special_ids": {"pad": PAD_ID, "start": START_ID, "end": END_ID, "unk": UNK_ID},
        "special_tokens": list(SPECIAL_TOKENS),
        "vocab_file": f"assets/{VOCAB_ASSET}: `word count` per line; the word on line i (from 0) has id i + "
                      f"{len(SPECIAL_TOKENS)}",
        "decode": dataclasses.asdict(settings),
        "max_image_pixels": max_image_pixels,
        "signatures": list(SIGNATURES),
        "run_dir": io_utils.abspath(run_dir),
        "checkpoint": io_utils.abspath(checkpoint),
        "tensorflow_version": tf.__version__,
        "config": config.to_dict(),
    }


def export(run_dir: str, out_dir: str, *, name: str = "caption", version: int | None = None,
           beam_size: int | None = None, max_length: int | None = None, num_captions: int | None = None,
           length_normalization: float | None = None, checkpoint: str | None = None,
           warmup: bool = True, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> str:
    """Exports a trained run dir as `out_dir/name/version/`, never overwriting a version.

    The SavedModel is written into a hidden temporary dir beside the version
    dirs and renamed into place last, so TF Serving (which loads any
    integer-named dir) never sees a half-written version. On an object store
    (`gs://`, `s3://`: caption_app/io_utils.py) a rename is per file, so the
    version dir fills up file by file with `saved_model.pb` last.

    Args:
      run_dir: a trained run dir.
      out_dir: the model base path's parent (TF Serving's `--model_base_path`
        is `out_dir/name`).
      name: the model name.
      version: the version number; default the highest existing one + 1
        (1 for the first export).
      beam_size, max_length, length_normalization, num_captions: beam search
        settings (caption_app/inference/settings.py; None or 0: the run's `decode`
        config; K = num_captions defaults to the beam size).
      checkpoint: a checkpoint path (default the run's latest).
      warmup: write `assets.extra/tf_serving_warmup_requests`.
      max_image_pixels: `serving_default` answers valid=false, without decoding, for
        an image whose header declares more pixels (width x height).
    Returns:
      The version dir's path.
    Raises:
      ExportError: on bad arguments or an existing version.
    """
    try:
        from export import warmup as warmup_lib  # tensorflow-serving-api (the [serving] extra) is only needed here
    except ImportError as err:
        if warmup:
            raise ExportError(f"the warmup records need tensorflow-serving-api ({err}): pip install "
                              "'show-and-tell-keras[serving]', or pass --no-warmup") from None

    if not name or os.sep in name or name.startswith("."):
        raise ExportError(f"--name must be a plain directory name, got {name!r}")
    if version is not None and (not isinstance(version, int) or version < 1):
        raise ExportError(f"--version must be a positive integer (TF Serving version dirs), got {version!r}")
    if isinstance(max_image_pixels, bool) or not isinstance(max_image_pixels, int) or max_image_pixels < 1:
        raise ExportError(f"--max-image-pixels must be a positive integer, got {max_image_pixels!r}")
    try:  # check the arguments before the slow model load
        settings = run_loader.load_config(run_dir).decode.resolve(
            beam_size=beam_size, max_length=max_length, length_normalization=length_normalization,
            num_captions=num_captions)
    except DecodeSettingsError as err:
        raise ExportError(str(err)) from None
    model_dir = os.path.join(out_dir, name)
    version = _check_version(model_dir, version)

    model, config, vocab, sizes, checkpoint = run_loader.load_model(run_dir, checkpoint)
    io_utils.makedirs(model_dir)
    captioner = Captioner(model)
    units = captioner.decoder.lstm_units
    staging = io_utils.mkdtemp(prefix=f".export-{version}-", dir=model_dir)  # not an integer: TF Serving skips it
    try:
        files = os.path.join(staging, "files")
        io_utils.makedirs(files, exist_ok=False)
        vocab_file = os.path.join(files, VOCAB_ASSET)
        io_utils.copyfile(os.path.join(run_dir, run_layout.VOCAB), vocab_file)
        config_file = os.path.join(files, CONFIG_ASSET)
        write_json(config_file, export_config(config, sizes, vocab, settings, run_dir=run_dir, checkpoint=checkpoint,
                                              units=units, max_image_pixels=max_image_pixels), sort_keys=True)

        module = CaptionModule(captioner, vocab, settings, vocab_file, config_file, max_image_pixels,
                               config.data.preprocess)
        saved = os.path.join(staging, "saved_model")
        tf.saved_model.save(module, saved, signatures=module.signatures())
        if warmup:
            warmup_lib.write(saved, warmup_lib.requests(name, units, captioner.decoder.state_sizes()))
        _make_readable(saved)
        final = os.path.join(model_dir, str(version))
        _check_version(model_dir, version)  # another export may have taken it meanwhile
        # Locally one rename; on an object store file by file, saved_model.pb last.
        io_utils.replace(saved, final, last=(tf.saved_model.SAVED_MODEL_FILENAME_PB,))
    finally:
        io_utils.rmtree(staging)
    return final


def _check_version(model_dir: str, version: int | None) -> int:
    existing = existing_versions(model_dir)
    if version is None:
        return max(existing, default=0) + 1
    if version in existing or io_utils.exists(os.path.join(model_dir, str(version))):
        raise ExportError(f"{os.path.join(model_dir, str(version))} already exists; an export never overwrites "
                          f"a version (existing: {', '.join(map(str, existing))}). Leave out --version to get "
                          f"the next free one ({max(existing, default=0) + 1}), or pick another --out/--name.")
    return version


def _make_readable(path: str) -> None:
    """mkdtemp makes 0700 dirs; TF Serving often runs as another user (e.g. in Docker)."""
    if io_utils.is_remote(path):  # an object store's permissions are the bucket's
        return
    for root, dirs, names in os.walk(path):
        os.chmod(root, 0o755)
        for n in names:
            os.chmod(os.path.join(root, n), 0o644)
