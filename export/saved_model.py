"""A trained run dir -> a SavedModel that stock TensorFlow Serving loads as-is.

    OUT/<name>/<version>/saved_model.pb, variables/
    OUT/<name>/<version>/assets/vocab.txt        the run's vocabulary (`word count` lines; id = line + 4)
    OUT/<name>/<version>/assets/config.json      image size, beam settings, special ids, the run's config
    OUT/<name>/<version>/assets.extra/tf_serving_warmup_requests

Signatures (B images, K captions, N decoder rows, V ids; the state tensors are the decoder's,
named and sized as it declares them: docs/serving.md lists them for each decoder and option set):

    serving_default  image_bytes string [B] (JPEG/PNG/GIF/BMP)
                     -> captions string [B, K], log_probs / scores float32 [B, K], valid bool [B]
    caption_images   images float32 [B, h, w, 3] (0-255, any size)
                     -> captions string [B, K], log_probs / scores float32 [B, K]
    sample_captions  image_bytes string [B], seed int64 [B]
                     -> captions string [B, K'], log_probs / scores float32 [B, K'], valid bool [B]
                     (K' sampled captions per image; the same seed gives the same captions)
    encode_image     images float32 [B, h, w, 3] -> the state tensors, float32 [B, width] each
                     (the LSTM: state_h, state_c [B, H], and state_image [B, W] when a step reads the image)
    decode_step      input_ids int32 [N], the state tensors [N, width]
                     -> log_probs float32 [N, V] and the new state tensors
    ids_to_text      ids int32 [N, T] -> text string [N]

The functions are the loaded captioner's own (caption_app/inference/captioner.py:
`TrainedCaptioner.functions`), which the Python API and `caption` call too; this
module only wraps them with their variables and assets. The graphs hold core
TensorFlow ops only: no tensorflow_text, no py_function, no XLA-compiled
functions (`jit_compile=False`), so the TF Serving GPU build loads them.

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
from caption_app.data.image_bytes import DEFAULT_MAX_IMAGE_PIXELS, check_pixel_limit
from caption_app.data.vocabulary import END_ID, PAD_ID, SPECIAL_TOKENS, START_ID, UNK_ID, VOCAB_FILE
from caption_app.errors import CaptionAppError
from caption_app.inference.captioner import SIGNATURES, CaptionFunctions, TrainedCaptioner, sampling_settings
from caption_app.inference.settings import DecodeSettings, DecodeSettingsError
from caption_app.io_utils import write_json_atomic as write_json

VOCAB_ASSET = VOCAB_FILE
CONFIG_ASSET = "config.json"
FORMAT_VERSION = 1

_VERSION_DIR = re.compile(r"^\d+$")


class ExportError(CaptionAppError, ValueError):
    """Bad export arguments or an output location that would overwrite a version."""


class CaptionModule(tf.Module):
    """The exported object: the model's variables, the assets and the signature functions.

    The functions are the loaded captioner's (caption_app/inference/captioner.py,
    `TrainedCaptioner.functions`): this module only holds them, with the
    variables they capture and the asset files, for `tf.saved_model.save`.

    Args:
      functions: a TrainedCaptioner's functions for the export's decode settings.
      vocab_file, config_file: files that become `assets/` of the SavedModel.
    """

    def __init__(self, functions: CaptionFunctions, vocab_file: str, config_file: str):
        super().__init__(name="caption")
        self.vocab_file = tf.saved_model.Asset(vocab_file)
        self.config_file = tf.saved_model.Asset(config_file)
        for name, function in functions.signatures().items():
            setattr(self, name, function)
        # Save the tf.Variables the functions capture (as Keras' ExportArchive does), not the Keras
        # Variable wrappers: TF Serving loads into a Session, which restores variables by their graph
        # names and would leave the functions' captures uninitialized ("Could not find variable").
        self.model_variables = functions.variables()
        self._signatures = functions.signatures()

    def signatures(self) -> dict:
        return dict(self._signatures)


def existing_versions(model_dir: str) -> list[int]:
    """The integer-named version dirs under `model_dir` (what TF Serving would load), ascending."""
    if not io_utils.isdir(model_dir):
        return []
    return sorted(int(d) for d in io_utils.listdir(model_dir)
                  if _VERSION_DIR.match(d) and io_utils.isdir(os.path.join(model_dir, d)))


def export_config(captioner: TrainedCaptioner, settings: DecodeSettings, *, run_dir: str) -> dict:
    """What `assets/config.json` says about the export (for clients and people)."""
    config = captioner.config
    decoder = captioner.decoder
    return {
        "format_version": FORMAT_VERSION,
        "image_size": captioner.image_size,
        # The decoder type and its state, as `encode_image` / `decode_step` carry it (docs/serving.md).
        "decoder": decoder.decoder_name,
        **type(decoder).fingerprint(config.model),  # the LSTM: lstm_units (and its options)
        "state": captioner.state_sizes(),
        "vocab_size": captioner.vocab.size,
        "special_ids": {"pad": PAD_ID, "start": START_ID, "end": END_ID, "unk": UNK_ID},
        "special_tokens": list(SPECIAL_TOKENS),
        "vocab_file": f"assets/{VOCAB_ASSET}: `word count` per line; the word on line i (from 0) has id i + "
                      f"{len(SPECIAL_TOKENS)}",
        "decode": dataclasses.asdict(settings),
        "sampling": dataclasses.asdict(sampling_settings(settings)),
        "max_image_pixels": captioner.max_image_pixels,
        "signatures": list(SIGNATURES),
        "run_dir": io_utils.abspath(run_dir),
        "checkpoint": io_utils.abspath(captioner.checkpoint),
        "tensorflow_version": tf.__version__,
        "config": config.to_dict(),
    }


def export(run_dir: str, out_dir: str, *, name: str = "caption", version: int | None = None,
           checkpoint: str | None = None, warmup: bool = True, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
           **decode) -> str:
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
      checkpoint: a checkpoint path (default the run's latest).
      warmup: write `assets.extra/tf_serving_warmup_requests`.
      max_image_pixels: `serving_default` answers valid=false, without decoding, for
        an image whose header declares more pixels (width x height).
      **decode: decode settings for `serving_default` and `caption_images` (strategy, beam_size,
        max_length, length_normalization, num_captions, temperature, top_k, top_p, seed,
        no_repeat_ngram: caption_app/inference/settings.py; None or 0: the run's `decode` config).
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
    check_pixel_limit(max_image_pixels)  # ImageLimitError, the one error of the pixel limit
    try:  # check the arguments before the slow model load
        settings = run_loader.load_config(run_dir).decode.resolve(**decode)
    except DecodeSettingsError as err:
        raise ExportError(str(err)) from None
    model_dir = os.path.join(out_dir, name)
    version = check_version(model_dir, version)

    captioner = TrainedCaptioner.from_run_dir(run_dir, checkpoint, max_image_pixels=max_image_pixels)
    io_utils.makedirs(model_dir)
    staging = io_utils.mkdtemp(prefix=f".export-{version}-", dir=model_dir)  # not an integer: TF Serving skips it
    try:
        files = os.path.join(staging, "files")
        io_utils.makedirs(files, exist_ok=False)
        vocab_file = os.path.join(files, VOCAB_ASSET)
        io_utils.copyfile(os.path.join(run_dir, run_layout.VOCAB), vocab_file)
        config_file = os.path.join(files, CONFIG_ASSET)
        write_json(config_file, export_config(captioner, settings, run_dir=run_dir), sort_keys=True)

        module = CaptionModule(captioner.functions(settings), vocab_file, config_file)
        saved = os.path.join(staging, "saved_model")
        tf.saved_model.save(module, saved, signatures=module.signatures())
        if warmup:
            warmup_lib.write(saved, warmup_lib.requests(name, captioner.state_sizes()))
        make_readable(saved)
        final = os.path.join(model_dir, str(version))
        check_version(model_dir, version)  # another export may have taken it meanwhile
        # Locally one rename; on an object store file by file, saved_model.pb last.
        io_utils.replace(saved, final, last=(tf.saved_model.SAVED_MODEL_FILENAME_PB,))
    finally:
        io_utils.rmtree(staging)
    return final


def check_version(model_dir: str, version: int | None) -> int:
    existing = existing_versions(model_dir)
    if version is None:
        return max(existing, default=0) + 1
    if version in existing or io_utils.exists(os.path.join(model_dir, str(version))):
        raise ExportError(f"{os.path.join(model_dir, str(version))} already exists; an export never overwrites "
                          f"a version (existing: {', '.join(map(str, existing))}). Leave out --version to get "
                          f"the next free one ({max(existing, default=0) + 1}), or pick another --out/--name.")
    return version


def make_readable(path: str) -> None:
    """mkdtemp makes 0700 dirs; TF Serving often runs as another user (e.g. in Docker)."""
    if io_utils.is_remote(path):  # an object store's permissions are the bucket's
        return
    for root, dirs, names in os.walk(path):
        os.chmod(root, 0o755)
        for n in names:
            os.chmod(os.path.join(root, n), 0o644)
