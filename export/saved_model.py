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
                     (a model with `image_every_step` also has state_image [., E] in both)
    ids_to_text      ids int32 [N, T] -> text string [N]

Everything is the training code's own: `Captioner.encode` / `decode_step`,
`beam_search`, `pipeline.decode_image` / `resize_image` and
`Vocabulary.ids_to_text` (the tokens are a constant gathered in-graph). The
graphs hold core TensorFlow ops only: no tensorflow_text, no py_function, no
XLA-compiled functions (`jit_compile=False`), so the TF Serving GPU build
loads them.

One bad image does not fail its batch. A decode op that fails aborts the
whole `session.run`, and header checks cannot prove that a JPEG decodes (a
truncated or corrupt one passes them), so `serving_default` decodes through
`tf.data` with `ignore_errors()`: the images that decode are captioned, the
others get `valid=false`, an empty caption and -inf scores. The price is a
dataset built per call, ~10 ms on CPU whatever the batch size (bench/);
`caption_images` skips it for clients that decode themselves.

Keras' `ExportArchive` is not used: it has no way to attach asset files; a
`tf.Module` holding the model's variables does the same job here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile

import tensorflow as tf

from caption_app import run_dir as run_dir_lib
from caption_app.config import Config
from caption_app.data.pipeline import Shapes, decode_image, resize_image
from caption_app.data.vocabulary import END_ID, PAD_ID, SPECIAL_TOKENS, START_ID, UNK_ID, Vocabulary
from caption_app.model.show_and_tell import Captioner

VOCAB_ASSET = "vocab.txt"
CONFIG_ASSET = "config.json"
SIGNATURES = ("serving_default", "caption_images", "encode_image", "decode_step", "ids_to_text")
FORMAT_VERSION = 1

_VERSION_DIR = re.compile(r"^\d+$")
_NEG_INF = float("-inf")


class ExportError(ValueError):
    """Bad export arguments or an output location that would overwrite a version."""


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    """How `serving_default` and `caption_images` decode captions."""

    beam_size: int = 3
    max_length: int = 20  # words, <end> included
    length_normalization: float = 0.0  # score = log_prob / length ** alpha
    num_captions: int = 3  # K, captions returned per image (<= beam_size)

    def check(self) -> None:
        for name in ("beam_size", "max_length", "num_captions"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ExportError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.num_captions > self.beam_size:
            raise ExportError(f"--num-captions {self.num_captions} exceeds --beam-size {self.beam_size}: beam "
                              "search keeps beam_size finished captions; raise --beam-size or lower --num-captions")
        if not self.length_normalization >= 0:
            raise ExportError(f"--length-normalization must be >= 0, got {self.length_normalization!r}")


def decode_images(image_bytes: tf.Tensor, image_size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Decodes what decodes and reports which did.

    Args:
      image_bytes: [B] string, encoded JPEG/PNG/GIF/BMP.
    Returns:
      (images [M, S, S, 3] float32 0-255, index [M] int32): the M images that
      decoded, with their positions in `image_bytes`, ascending.
    """
    n = tf.shape(image_bytes)[0]
    ds = tf.data.Dataset.from_tensor_slices((tf.range(n), image_bytes))
    ds = ds.map(lambda i, data: (i, decode_image(data, image_size)), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    ds = ds.ignore_errors()
    # The dataset is built anew for every request: skip the graph rewrites and the autotuner,
    # which cost ~5 ms per request and tune nothing in a one-batch pipeline.
    options = tf.data.Options()
    options.autotune.enabled = False
    options.experimental_optimization.apply_default_optimizations = False
    ds = ds.with_options(options)
    ds = ds.batch(tf.cast(tf.maximum(n, 1), tf.int64))  # one batch, or none when nothing decoded
    initial = (tf.zeros([0], tf.int32), tf.zeros([0, image_size, image_size, 3], tf.float32))
    index, images = ds.reduce(initial, lambda _, batch: batch)
    return images, index


class CaptionModule(tf.Module):
    """The exported object: the model's variables, the assets and the signature functions.

    Args:
      captioner: the trained model's inference views.
      vocab: its vocabulary.
      image_size: S, the model's input size.
      settings: beam search settings baked into the captioning signatures.
      vocab_file, config_file: files that become `assets/` of the SavedModel.
    """

    def __init__(self, captioner: Captioner, vocab: Vocabulary, image_size: int, settings: DecodeSettings,
                 vocab_file: str, config_file: str):
        super().__init__(name="caption")
        self._captioner = captioner  # not trackable: only its variables below are saved
        self._vocab = vocab
        self._image_size = image_size
        self._settings = settings
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
        s = self._settings
        n = tf.shape(images)[0]
        result = self._captioner.generate(_never_empty(images), beam_size=s.beam_size, max_length=s.max_length,
                                          length_normalization=s.length_normalization,
                                          num_results=s.num_captions)
        return self._vocab.ids_to_text(result.ids[:n]), result.log_probs[:n], result.scores[:n]

    def _caption_bytes(self, image_bytes):
        n = tf.shape(image_bytes)[0]
        images, index = decode_images(image_bytes, self._image_size)  # [M, S, S, 3], [M]
        captions, log_probs, scores = self._generate(images)  # each [M, K]
        k = self._settings.num_captions
        where = index[:, None]  # [M, 1]

        def scatter(values, fill):  # [M, K] -> [B, K], `fill` for images that did not decode
            return tf.tensor_scatter_nd_update(tf.fill([n, k], tf.constant(fill, values.dtype)), where, values)

        valid = tf.tensor_scatter_nd_update(tf.zeros([n], tf.bool), where, tf.ones_like(index, tf.bool))
        return {"captions": scatter(captions, ""), "log_probs": scatter(log_probs, _NEG_INF),
                "scores": scatter(scores, _NEG_INF), "valid": valid}

    def _caption_images(self, images):
        captions, log_probs, scores = self._generate(resize_image(images, self._image_size))
        return {"captions": captions, "log_probs": log_probs, "scores": scores}

    def _encode_image(self, images):
        n = tf.shape(images)[0]
        state = self._captioner.encode(_never_empty(resize_image(images, self._image_size)))
        return {name: s[:n] for name, s in zip(self._state_names, state)}

    def _decode_step(self, input_ids, *state):
        log_probs, new_state = self._captioner.decode_step(input_ids, list(state))
        return {"log_probs": log_probs, **dict(zip(self._state_names, new_state))}

    def _ids_to_text(self, ids):
        return {"text": self._vocab.ids_to_text(ids)}


def _never_empty(images):
    """[B, S, S, 3] -> the same, or one black image when B = 0 (the caller keeps the first B rows).

    The backbone's batch normalization fails on an empty batch on CPU (TF 2.21:
    "Incompatible shapes: [32] vs. [0,32,32,3]"), and a batch where no image
    decoded is empty.
    """
    return tf.cond(tf.shape(images)[0] > 0, lambda: images, lambda: tf.zeros(tf.concat([[1], tf.shape(images)[1:]], 0), images.dtype))


def existing_versions(model_dir: str) -> list[int]:
    """The integer-named version dirs under `model_dir` (what TF Serving would load), ascending."""
    if not os.path.isdir(model_dir):
        return []
    return sorted(int(d) for d in os.listdir(model_dir)
                  if _VERSION_DIR.match(d) and os.path.isdir(os.path.join(model_dir, d)))


def export_config(config: Config, shapes: Shapes, vocab: Vocabulary, settings: DecodeSettings, *,
                  run_dir: str, checkpoint: str, units: int) -> dict:
    """What `assets/config.json` says about the export (for clients and people)."""
    return {
        "format_version": FORMAT_VERSION,
        "image_size": shapes.image_size,
        "lstm_units": units,
        "vocab_size": vocab.size,
        "special_ids": {"pad": PAD_ID, "start": START_ID, "end": END_ID, "unk": UNK_ID},
        "special_tokens": list(SPECIAL_TOKENS),
        "vocab_file": f"assets/{VOCAB_ASSET}: `word count` per line; the word on line i (from 0) has id i + "
                      f"{len(SPECIAL_TOKENS)}",
        "decode": dataclasses.asdict(settings),
        "signatures": list(SIGNATURES),
        "run_dir": os.path.abspath(run_dir),
        "checkpoint": os.path.abspath(checkpoint),
        "tensorflow_version": tf.__version__,
        "config": config.to_dict(),
    }


def export(run_dir: str, out_dir: str, *, name: str = "caption", version: int | None = None,
           beam_size: int | None = None, max_length: int | None = None, num_captions: int | None = None,
           length_normalization: float | None = None, checkpoint: str | None = None,
           warmup: bool = True) -> str:
    """Exports a trained run dir as `out_dir/name/version/`, never overwriting a version.

    The SavedModel is written into a hidden temporary dir beside the version
    dirs and renamed into place last, so TF Serving (which loads any
    integer-named dir) never sees a half-written version.

    Args:
      run_dir: a trained run dir.
      out_dir: the model base path's parent (TF Serving's `--model_base_path`
        is `out_dir/name`).
      name: the model name.
      version: the version number; default the highest existing one + 1
        (1 for the first export).
      beam_size, max_length, length_normalization: beam search settings
        (default: the run's `eval` config).
      num_captions: captions per image K (default beam_size).
      checkpoint: a checkpoint path (default the run's latest).
      warmup: write `assets.extra/tf_serving_warmup_requests`.
    Returns:
      The version dir's path.
    Raises:
      ExportError: on bad arguments or an existing version.
    """
    from export import warmup as warmup_lib  # tensorflow-serving-api is only needed here

    if not name or os.sep in name or name.startswith("."):
        raise ExportError(f"--name must be a plain directory name, got {name!r}")
    if version is not None and (not isinstance(version, int) or version < 1):
        raise ExportError(f"--version must be a positive integer (TF Serving version dirs), got {version!r}")
    e = run_dir_lib.load_config(run_dir).eval  # check the arguments before the slow model load
    beam_size = e.beam_size if beam_size is None else beam_size
    settings = DecodeSettings(
        beam_size=beam_size, max_length=e.max_length if max_length is None else max_length,
        length_normalization=e.length_normalization if length_normalization is None else length_normalization,
        num_captions=beam_size if num_captions is None else num_captions)
    settings.check()
    model_dir = os.path.join(out_dir, name)
    version = _check_version(model_dir, version)

    model, config, vocab, shapes, checkpoint = run_dir_lib.load_model(run_dir, checkpoint)
    os.makedirs(model_dir, exist_ok=True)
    captioner = Captioner(model)
    units = captioner.decoder.lstm_units
    staging = tempfile.mkdtemp(prefix=f".export-{version}-", dir=model_dir)  # not an integer: TF Serving skips it
    try:
        files = os.path.join(staging, "files")
        os.makedirs(files)
        vocab_file = os.path.join(files, VOCAB_ASSET)
        shutil.copyfile(os.path.join(run_dir, run_dir_lib.VOCAB), vocab_file)
        config_file = os.path.join(files, CONFIG_ASSET)
        with open(config_file, "w") as f:
            json.dump(export_config(config, shapes, vocab, settings, run_dir=run_dir, checkpoint=checkpoint,
                                    units=units), f, indent=2, sort_keys=True)
            f.write("\n")

        module = CaptionModule(captioner, vocab, shapes.image_size, settings, vocab_file, config_file)
        saved = os.path.join(staging, "saved_model")
        tf.saved_model.save(module, saved, signatures=module.signatures())
        if warmup:
            warmup_lib.write(saved, warmup_lib.requests(name, units, captioner.decoder.state_sizes()))
        _make_readable(saved)
        final = os.path.join(model_dir, str(version))
        _check_version(model_dir, version)  # another export may have taken it meanwhile
        os.rename(saved, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _check_version(model_dir: str, version: int | None) -> int:
    existing = existing_versions(model_dir)
    if version is None:
        return max(existing, default=0) + 1
    if version in existing or os.path.exists(os.path.join(model_dir, str(version))):
        raise ExportError(f"{os.path.join(model_dir, str(version))} already exists; an export never overwrites "
                          f"a version (existing: {', '.join(map(str, existing))}). Leave out --version to get "
                          f"the next free one ({max(existing, default=0) + 1}), or pick another --out/--name.")
    return version


def _make_readable(path: str) -> None:
    """mkdtemp makes 0700 dirs; TF Serving often runs as another user (e.g. in Docker)."""
    for root, dirs, names in os.walk(path):
        os.chmod(root, 0o755)
        for n in names:
            os.chmod(os.path.join(root, n), 0o644)
