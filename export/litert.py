"""A trained run dir -> a LiteRT package that captions on its own (numpy, Pillow, ai-edge-litert; no TensorFlow).

    OUT/<name>/<version>/litert.json                  formats, files (with sizes), state contract, decode settings
    OUT/<name>/<version>/vocab.txt                    the run's vocabulary (`word count` lines; id = line + 4)
    OUT/<name>/<version>/caption.py                   the reference runner (export/litert_runner.py), with
    OUT/<name>/<version>/pil_images.py, vocab_file.py copies of the caption_app modules it shares (to_rgb, parse)
    OUT/<name>/<version>/jpeg_fast.py                 JPEG decoding as TensorFlow's (export/jpeg_fast.py)
    OUT/<name>/<version>/<variant>/encoder.tflite     images float32 [1, S, S, 3] (0-255) -> the state tensors [1, w]
    OUT/<name>/<version>/<variant>/decode_step.tflite input_ids int32 [N], the state tensors [N, w]
                                                      -> log_probs float32 [N, V] and the new state tensors
    OUT/<name>/<version>/<variant>/search.tflite      images [1, S, S, 3] -> ids int32 [1, K, T], scores,
                                                      log_probs float32 [1, K], lengths int32 [1, K]

Variants: float32; float16 (weights stored as float16, computed in float32);
int8 (dynamic-range: int8 weights, activations quantized on the fly by the
hybrid kernels). Every model holds builtin LiteRT ops only (the converter is
told `TFLITE_BUILTINS` and fails otherwise: no Flex/select TensorFlow ops).

The models are the loaded captioner's own pieces (caption_app/inference/captioner.py):
`encode`, `decode_step` and `generate` with the export's decode settings
(beam search or greedy), traced with a fixed batch of one image and frozen
(the variables become constants, so the weights can be quantized). The whole
search converts because its loop is a `tf.while_loop` over core ops (WHILE,
TOPK_V2, GATHER, SELECT_V2 in LiteRT); when it does not convert (a strategy or
setting with an op LiteRT lacks), the package has no search.tflite and
`litert.json` says why under "search_note": the runner's numpy search over
decode_step (export/litert_runner.py) does the same work.

The encoder takes pixels already S x S: the resize runs outside the model
(the runner resizes with Pillow as `caption_images` does with TensorFlow), so
an app resizes with its platform's image library.

The package is written into a hidden temporary dir beside the version dirs
and renamed into place last (on an object store file by file, litert.json
last), as the SavedModel export does; the runner refuses a dir without a
valid litert.json.
"""

from __future__ import annotations

import dataclasses
import os
import re

import tensorflow as tf
# Freezing (variables -> constants) is what lets the converter quantize the weights: converted with the
# variables captured, the models read them through VAR_HANDLE / READ_VARIABLE and keep them float32.
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from caption_app import io_utils
from caption_app.data import pil_images, vocab_file
from caption_app.data.image_bytes import DEFAULT_MAX_IMAGE_PIXELS, check_pixel_limit
from caption_app.data.vocabulary import END_ID, PAD_ID, SPECIAL_TOKENS, START_ID, UNK_ID
from caption_app.inference.captioner import TrainedCaptioner
from caption_app.inference.settings import DecodeSettings, DecodeSettingsError
from caption_app.runs import layout as run_layout
from caption_app.runs import loader as run_loader
from export import jpeg_fast, litert_runner
from export.saved_model import ExportError, check_version, make_readable

VARIANTS = litert_runner.VARIANTS
PACKAGE_FILE = litert_runner.PACKAGE_FILE
RUNNER_FILE = "caption.py"
VOCAB_FILE = "vocab.txt"
DEFAULT_NAME = "caption_litert"


def convert(function, variant: str = "float32") -> bytes:
    """A `tf.function` with a fixed input signature -> a .tflite model of builtin ops, `variant` weights.

    The function is frozen first; its dict outputs keep their names in the model's signature
    ("serving_default"), its inputs the names of their TensorSpecs.

    Raises:
      tf.lite ConverterError: an op without a builtin LiteRT kernel (no Flex ops are allowed).
    """
    concrete = function.get_concrete_function()
    frozen = convert_variables_to_constants_v2(concrete)
    names = sorted(concrete.structured_outputs)  # a dict's outputs flatten in key order

    def named(*inputs):  # the frozen function's outputs are a flat list: name them again
        return dict(zip(names, tf.nest.flatten(frozen(*inputs))))

    signature = tf.function(named, input_signature=list(concrete.structured_input_signature[0]), autograph=False)
    if variant not in VARIANTS:
        raise ExportError(f"unknown LiteRT variant {variant!r}; choose from {', '.join(VARIANTS)}")
    converter = tf.lite.TFLiteConverter.from_concrete_functions([signature.get_concrete_function()], tf.Module())
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if variant in ("float16", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # alone: dynamic-range int8 weights
    if variant == "float16":
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def model_functions(captioner: TrainedCaptioner, settings: DecodeSettings) -> dict:
    """The package's models as `tf.function`s (batch of one image; the step takes any number of rows)."""
    size = captioner.image_size
    names = list(captioner.state_sizes())
    images = tf.TensorSpec([1, size, size, 3], tf.float32, name="images")
    state = [tf.TensorSpec([None, width], tf.float32, name=name) for name, width in captioner.state_sizes().items()]

    def encoder(images):
        return dict(zip(names, captioner.encode(images)))

    def decode_step(input_ids, *state):
        log_probs, new_state = captioner.decode_step(input_ids, list(state))
        return {"log_probs": log_probs, **dict(zip(names, new_state))}

    def search(images):
        return captioner.generate(images, settings)._asdict()  # ids, scores, log_probs, lengths

    def function(fn, *specs):
        return tf.function(fn, input_signature=list(specs), autograph=False, jit_compile=False)

    return {"encoder": function(encoder, images),
            "decode_step": function(decode_step, tf.TensorSpec([None], tf.int32, name="input_ids"), *state),
            "search": function(search, images)}


def describe(captioner: TrainedCaptioner, settings: DecodeSettings, variants: dict, *, run_dir: str,
             search_note: str | None) -> dict:
    """litert.json: what the runner and an app need to drive the models (docs/serving.md, "On-device")."""
    size = captioner.image_size
    state = [{"name": n, "width": w} for n, w in captioner.state_sizes().items()]
    k, t = settings.num_captions, settings.max_length

    def state_of(rows):
        return {n: _tensor("float32", rows, w) for n, w in captioner.state_sizes().items()}

    described = {
        "format": litert_runner.FORMAT,
        "format_version": litert_runner.FORMAT_VERSION,
        "image_size": size,
        "preprocess": captioner.preprocess,
        "max_image_pixels": captioner.max_image_pixels,
        "decoder": captioner.decoder.decoder_name,
        "state": state,
        "vocab_file": VOCAB_FILE,
        "vocab_size": captioner.vocab.size,
        "special_ids": {"pad": PAD_ID, "start": START_ID, "end": END_ID, "unk": UNK_ID},
        "special_tokens": list(SPECIAL_TOKENS),
        "decode": dataclasses.asdict(settings),
        "signature": litert_runner.SIGNATURE,
        "models": {
            "encoder": {"inputs": {"images": _tensor("float32", 1, size, size, 3)}, "outputs": state_of(1)},
            "decode_step": {"inputs": {"input_ids": _tensor("int32", "N"), **state_of("N")},
                            "outputs": {"log_probs": _tensor("float32", "N", captioner.vocab.size), **state_of("N")}},
            "search": {"inputs": {"images": _tensor("float32", 1, size, size, 3)},
                       "outputs": {"ids": _tensor("int32", 1, k, t), "scores": _tensor("float32", 1, k),
                                   "log_probs": _tensor("float32", 1, k), "lengths": _tensor("int32", 1, k)}},
        },
        "variants": variants,
        "run_dir": io_utils.abspath(run_dir),
        "checkpoint": io_utils.abspath(captioner.checkpoint),
        "tensorflow_version": tf.__version__,
    }
    if search_note:
        described["search_note"] = search_note
    return described


def export(run_dir: str, out_dir: str, *, name: str = DEFAULT_NAME, version: int | None = None,
           checkpoint: str | None = None, variants: tuple[str, ...] = VARIANTS,
           max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, **decode) -> str:
    """Exports a trained run dir as the LiteRT package `out_dir/name/version/`, never overwriting a version.

    Args:
      run_dir: a trained run dir.
      out_dir, name, version, checkpoint, max_image_pixels: as `export.saved_model.export`.
      variants: which weights to convert: float32, float16, int8 (each its own folder).
      **decode: decode settings (strategy beam or greedy; caption_app/inference/settings.py;
        None or 0: the run's `decode` config).
    Returns:
      The package's path.
    Raises:
      ExportError: bad arguments, a sampling strategy, or an existing version.
    """
    variants = tuple(dict.fromkeys(variants))
    if not variants or set(variants) - set(VARIANTS):
        raise ExportError(f"--variant must be among {', '.join(VARIANTS)}, got {', '.join(variants) or 'none'}")
    if not name or os.sep in name or name.startswith("."):
        raise ExportError(f"--name must be a plain directory name, got {name!r}")
    if version is not None and (not isinstance(version, int) or version < 1):
        raise ExportError(f"--version must be a positive integer, got {version!r}")
    check_pixel_limit(max_image_pixels)
    try:
        settings = run_loader.load_config(run_dir).decode.resolve(**decode)
    except DecodeSettingsError as err:
        raise ExportError(str(err)) from None
    if settings.strategy not in litert_runner.STRATEGIES:
        raise ExportError(f"a LiteRT package decodes with {' or '.join(litert_runner.STRATEGIES)} (its runner's "
                          f"searches), not {settings.strategy!r}: pass --strategy beam or --strategy greedy")
    model_dir = os.path.join(out_dir, name)
    version = check_version(model_dir, version)

    captioner = TrainedCaptioner.from_run_dir(run_dir, checkpoint, max_image_pixels=max_image_pixels)
    functions = model_functions(captioner, settings)
    io_utils.makedirs(model_dir)
    staging = io_utils.mkdtemp(prefix=f".export-{version}-", dir=model_dir)
    try:
        package = os.path.join(staging, "package")
        io_utils.makedirs(package, exist_ok=False)
        listed, search_note = {}, None
        for variant in variants:
            io_utils.makedirs(os.path.join(package, variant))
            listed[variant] = {}
            for role, function in functions.items():
                if role == "search" and search_note:
                    continue
                try:
                    model = convert(function, variant)
                except Exception as err:  # noqa: BLE001 (tf.lite's ConverterError and friends)
                    if role != "search":
                        raise ExportError(f"the {role} did not convert to builtin LiteRT ops ({variant}): "
                                          f"{_why(err)}") from err
                    search_note = (f"the {settings.strategy} search did not convert to builtin LiteRT ops "
                                   f"({_why(err)}); the runner's numpy search drives decode_step instead")
                    continue
                relative = f"{variant}/{role}.tflite"
                with io_utils.open(os.path.join(package, relative), "wb") as f:
                    f.write(model)
                listed[variant][role] = {"file": relative, "bytes": len(model)}
        if search_note:  # every variant or none
            for models in listed.values():
                models.pop("search", None)
        io_utils.copyfile(os.path.join(run_dir, run_layout.VOCAB), os.path.join(package, VOCAB_FILE))
        io_utils.copyfile(litert_runner.__file__, os.path.join(package, RUNNER_FILE))
        for module in (pil_images, vocab_file, jpeg_fast):  # the runner's own imports (no caption_app there)
            io_utils.copyfile(module.__file__, os.path.join(package, os.path.basename(module.__file__)))
        io_utils.write_json_atomic(os.path.join(package, PACKAGE_FILE),
                                   describe(captioner, settings, listed, run_dir=run_dir, search_note=search_note))
        make_readable(package)
        final = os.path.join(model_dir, str(version))
        check_version(model_dir, version)  # another export may have taken it meanwhile
        io_utils.replace(package, final, last=(PACKAGE_FILE,))
    finally:
        io_utils.rmtree(staging)
    return final



def _tensor(dtype: str, *shape) -> dict:
    """A tensor's description in litert.json ("N": any number of rows)."""
    return {"dtype": dtype, "shape": list(shape)}


def search_note(package: str) -> str | None:
    """Why the package at `package` has no search model (None when it has one)."""
    return io_utils.read_json(os.path.join(package, PACKAGE_FILE)).get("search_note")


def _why(err: Exception) -> str:
    """The converter's reason in one line: the TensorFlow ops without a builtin kernel, with their types."""
    text = str(err)
    select = re.search(r"TF Select ops: ([^\n]+)", text)
    if not select:
        return text.strip().splitlines()[0][:300] if text.strip() else type(err).__name__
    details = sorted(set(re.findall(r"^\s*(tf\.\w+\([^\n]*?\))\s*->", text, re.M)))
    return f"needs TensorFlow ops LiteRT has no builtin kernel for: {select.group(1).strip()}" + \
        (f" ({'; '.join(details)})" if details else "")
