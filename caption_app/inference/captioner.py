"""The loaded captioner: a trained model with everything needed to turn images into captions, built once.

    TrainedCaptioner.from_run_dir(RUN)       a run dir's newest good checkpoint (caption_app/runs/loader.py)
    TrainedCaptioner(model, vocab, ...)      a model in memory (training's sample captions, evaluation)
    ExportedCaptioner(VERSION_DIR)           an export: the same functions, serialized (export/saved_model.py)
    load(path)                               either, by what `path` holds

A `TrainedCaptioner` holds the model's two parts (image encoder, decoder), the
vocabulary, the image size and preprocessing, the run's decode settings and
the pixel limit, and offers, in-graph with core TensorFlow ops only:

    encode(images [B, S, S, 3])             -> the decoder's state (names and widths: `state_sizes`)
    decode_step(ids [N], state)             -> (log_probs [N, V], state)
    generate(images [B, S, S, 3], settings) -> SearchResult (ids [B, K, T], scores, log_probs, lengths)
    caption_images(images [B, h, w, 3])     -> captions [B, K], log_probs, scores (any size: resized the run's way)
    caption_bytes(image_bytes [B])          -> the same and valid [B] (bounded decoding: data/image_bytes.py)

Each also takes `attention=True` (a model with `model.attention_size` only,
else an `AttentionError`): the search then also carries each step's attention
weights over the backbone's h x w cells and keeps them per hypothesis as it
keeps the words (`TracedSearchResult.traces`), so every caption comes with one map
per word from the search that chose it: `generate` fills `traces` [B, K, T,
h*w], the caption functions add "attention" [B, K, T, h, w], "words" [B, K, T]
and "pixels" [B, S, S, 3] (the image as the model saw it). Without it the
graphs are the ones they always were.

and `functions(settings)`: these as `tf.function`s with fixed input
signatures, traced once per decode setting. They are the export's
signatures (`serving_default`, `caption_images`, `sample_captions`,
`encode_image`, `decode_step`, `ids_to_text`): export/saved_model.py only
wraps them in a `tf.Module` and writes assets; the Python API and the
`caption` command call the very same functions (or, for an export, their
saved form through `ExportedCaptioner`, which answers the same calls).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow as tf

from caption_app import io_utils
from caption_app.config import Config
from caption_app.data.image_bytes import DEFAULT_MAX_IMAGE_PIXELS, check_pixel_limit, decode_images
from caption_app.data.pipeline import resize_image
from caption_app.data.vocabulary import END_ID, START_ID, Vocabulary
from caption_app.errors import CaptionAppError
from caption_app.inference.settings import DecodeSettings, DecodeSettingsError
from caption_app.inference.settings import DEFAULT_NUM_SAMPLES
from caption_app.inference.strategies import SearchResult

SIGNATURES = ("serving_default", "caption_images", "sample_captions", "encode_image", "decode_step", "ids_to_text")
SAVED_MODEL_FILE = "saved_model.pb"
_NEG_INF = float("-inf")


class AttentionError(CaptionAppError, ValueError):
    """Attention maps asked of a model (or an export) that has none to give."""


def sampling_settings(settings: DecodeSettings) -> DecodeSettings:
    """The settings `sample_captions` decodes with: `settings` when they sample, else the same
    temperature / top-k / top-p / n-gram block with strategy sample and its default K."""
    if settings.strategy == "sample":
        return settings
    return dataclasses.replace(settings, strategy="sample", num_captions=DEFAULT_NUM_SAMPLES).check()


class TrainedCaptioner:
    """A trained captioning model and everything that turns images into its captions.

    Args:
      model: the captioning model (`show_and_tell.build_model`): its `image_encoder` and `decoder`.
      vocab: its vocabulary (None: ids only, no text; for tests of the model).
      decode: the decode settings used when none are given (resolved: `DecodeSettings.resolve`).
      preprocess: the run's `data.preprocess` (how any image becomes S x S pixels).
      max_image_pixels: encoded images whose header declares more pixels are not decoded.
      config, checkpoint, path: where it came from (for the export's description).
    """

    def __init__(self, model, vocab: Vocabulary | None = None, *, decode: DecodeSettings | None = None, preprocess: str = "default",
                 max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, config: Config | None = None,
                 checkpoint: str | None = None, path: str | None = None):
        self.model = model
        self.image_encoder = model.image_encoder
        self.decoder = model.decoder
        self.vocab = vocab
        self.image_size: int = self.image_encoder.image_size
        self.preprocess = preprocess
        self.decode = (decode or (config.decode if config is not None else DecodeSettings())).resolve()
        self.max_image_pixels = check_pixel_limit(max_image_pixels)
        self.config, self.checkpoint, self.path = config, checkpoint, path
        self._functions: dict[DecodeSettings, CaptionFunctions] = {}

    @classmethod
    def from_run_dir(cls, run_dir: str, checkpoint: str | None = None, *,
                     max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> "TrainedCaptioner":
        """The run's newest checkpoint that restores (damaged newer ones skipped with a note), or `checkpoint`."""
        from caption_app.runs import loader  # the run dir's one read-only loader

        check_pixel_limit(max_image_pixels)
        model, config, vocab, _, checkpoint = loader.load_model(run_dir, checkpoint)  # config checked (decode too)
        return cls(model, vocab, decode=config.decode, preprocess=config.data.preprocess,
                   max_image_pixels=max_image_pixels, config=config, checkpoint=checkpoint, path=run_dir)

    # -- in-graph pieces -------------------------------------------------------------------------

    def state_sizes(self) -> dict[str, int]:
        """The decoding state's tensors (names as in the export) and their widths, as the decoder declares them."""
        return self.decoder.state_sizes()

    def encode(self, images):
        """images [B, S, S, 3] float32 0-255 -> the decoding state before the first word (`state_sizes` order)."""
        return self.decoder.initial_state(self.image_encoder(images, training=False))

    def decode_step(self, ids, state):
        """ids [N] int32, state -> (log_probs [N, V] float32, new state)."""
        logits, new_state = self.decoder.step(ids, state)
        return tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1), new_state

    @property
    def attention_grid(self) -> tuple[int, int] | None:
        """(h, w): the cells each word's attention weighs (the backbone's map), None without attention."""
        return self.image_encoder.cell_grid if self.decoder.attends else None

    def check_attention(self) -> tuple[int, int]:
        """The attention grid; AttentionError when the model does not attend."""
        if self.attention_grid is None:
            raise AttentionError(f"{self.path or 'this model'} was trained without attention "
                                 "(model.attention_size is 0), so it has no attention maps to show; "
                                 "train with --set model.attention_size=N (the shapes preset does)")
        return self.attention_grid

    def decode_step_with_attention(self, ids, state):
        """`decode_step`, and the step's attention weights [N, h*w] (cell l: row l // w, column l % w)."""
        height, width = self.check_attention()
        logits, new_state, weights = self.decoder.step_with_attention(ids, state)
        weights = tf.reshape(tf.cast(weights, tf.float32), [-1, height * width])
        return tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1), new_state, weights

    def generate(self, images, settings: DecodeSettings | None = None, seeds=None, *,
                 attention: bool = False) -> SearchResult:
        """images [B, S, S, 3] float32 0-255 -> the strategy's captions as ids (SearchResult, best first;
        with `attention`, a TracedSearchResult).

        Args:
          seeds: int [B], one per image, for sampling (default: `settings.seed` for every image).
          attention: also each caption's attention weights, from the same search: `traces`
            [B, K, T, h*w], row t the weights behind word t (AttentionError without attention).
        """
        settings = settings or self.decode
        step = self.decode_step_with_attention if attention else self.decode_step
        return settings.to_strategy().search(step, self.encode(images), start_id=START_ID, end_id=END_ID,
                                             max_length=settings.max_length, seeds=seeds, trace=attention)

    def ids_to_text(self, ids):
        """ids int [..., T] -> text [...] (the words up to <end>, joined by spaces)."""
        return self.vocab.ids_to_text(ids)

    def caption_pixels(self, images, settings: DecodeSettings | None = None, seeds=None, *,
                       attention: bool = False) -> dict:
        """images [B, S, S, 3] (the model's size) -> {"captions" [B, K] string, "log_probs", "scores" [B, K]};
        with `attention` also "attention" [B, K, T, h, w] (row t: word t's weights, 0 after the caption),
        "words" [B, K, T] string (word t, "" where the caption text has none) and "pixels" [B, S, S, 3] uint8."""
        settings = settings or self.decode

        def generate(batch, *batch_seeds):  # the seeds [B] when sampling, else nothing
            result = self.generate(batch, settings, *batch_seeds, attention=attention)
            out = {"captions": self.ids_to_text(result.ids), "log_probs": result.log_probs, "scores": result.scores}
            if attention:
                height, width = self.attention_grid
                shape = tf.concat([tf.shape(result.ids), [height, width]], axis=0)
                out.update(attention=tf.reshape(result.traces, shape), words=self.vocab.ids_to_words(result.ids),
                           pixels=tf.cast(tf.round(batch), tf.uint8))
            return out

        seeds = _seeds(images, settings, seeds)
        return _on_nonempty_batch(generate, images, *([] if seeds is None else [seeds]))

    def caption_images(self, images, settings: DecodeSettings | None = None, seeds=None, *,
                       attention: bool = False) -> dict:
        """images [B, h, w, 3] float32 0-255, any size -> `caption_pixels`' outputs, resized the run's way."""
        return self.caption_pixels(resize_image(images, self.image_size, self.preprocess), settings, seeds,
                                   attention=attention)

    def caption_bytes(self, image_bytes, settings: DecodeSettings | None = None, seeds=None, *,
                      attention: bool = False) -> dict:
        """image_bytes [B] string (JPEG/PNG/GIF/BMP) -> `caption_pixels`' outputs and valid [B] bool.

        One bad image does not fail its batch: images that do not decode, or whose header
        declares more than `max_image_pixels`, are not decoded and get valid=false, an empty
        caption and -inf scores (and zeros / "" for the attention outputs).
        """
        settings = settings or self.decode
        n = tf.shape(image_bytes)[0]
        seeds = _seeds(image_bytes, settings, seeds)
        # [M, S, S, 3], [M]: the images that decoded within the pixel limit, and their rows
        images, index = decode_images(image_bytes, self.image_size, self.max_image_pixels, self.preprocess)
        out = self.caption_pixels(images, settings, None if seeds is None else tf.gather(seeds, index),
                                  attention=attention)  # each [M, ...]
        k = settings.to_strategy().num_results
        where = index[:, None]  # [M, 1]

        def scatter(values, fill, shape=None):  # [M, K] -> [B, K] (or `shape`), `fill` where no image decoded
            filled = tf.fill([n, k] if shape is None else shape, tf.constant(fill, values.dtype))
            return tf.tensor_scatter_nd_update(filled, where, values)

        valid = tf.tensor_scatter_nd_update(tf.zeros([n], tf.bool), where, tf.ones_like(index, tf.bool))
        result = {"captions": scatter(out["captions"], ""), "log_probs": scatter(out["log_probs"], _NEG_INF),
                  "scores": scatter(out["scores"], _NEG_INF), "valid": valid}
        if attention:
            for key, fill in (("attention", 0.0), ("words", ""), ("pixels", 0)):
                result[key] = scatter(out[key], fill, tf.concat([[n], tf.shape(out[key])[1:]], axis=0))
        return result

    # -- traced functions ------------------------------------------------------------------------

    def functions(self, settings: DecodeSettings | None = None) -> "CaptionFunctions":
        """The captioning functions for `settings` (default: the run's), traced once and kept."""
        settings = (settings or self.decode).check()
        if settings not in self._functions:
            self._functions[settings] = CaptionFunctions(self, settings)
        return self._functions[settings]

    def tracing_count(self) -> int:
        return sum(f.tracing_count() for f in self._functions.values())


class CaptionFunctions:
    """A TrainedCaptioner's functions for one decode setting, with the input signatures the export serves.

        serving_default  image_bytes string [B] -> captions string [B, K], log_probs, scores float32 [B, K], valid bool [B]
        caption_images   images float32 [B, h, w, 3] (0-255, any size) -> captions [B, K], log_probs, scores
        sample_captions  image_bytes string [B], seed int64 [B] -> captions [B, K'], log_probs, scores, valid
                         (sampling: `sampling_settings`; the same seed gives the same captions)
        encode_image     images float32 [B, h, w, 3] -> the decoder's state tensors, [B, width] each
        decode_step      input_ids int32 [N] and the state tensors [N, width] -> log_probs [N, V] and the new state
        ids_to_text      ids int32 [N, T] -> text string [N]

    Traced with `autograph=False, jit_compile=False`: core ops only (TF Serving's loader, a TF1
    Session and the C++ loader run them). Each call of any batch size runs the same trace.

    With attention asked for (`caption_bytes(..., attention=True)`, `caption_pixels(..., attention=True)`),
    two more functions, not signatures, are traced on first use: serving_default's and caption_images'
    calls with the attention outputs (see `TrainedCaptioner.caption_pixels`).
    """

    def __init__(self, captioner: TrainedCaptioner, settings: DecodeSettings):
        self.captioner, self.settings = captioner, settings
        self.sampling = sampling_settings(settings)
        self.state_names = list(captioner.state_sizes())
        images = tf.TensorSpec([None, None, None, 3], tf.float32, name="images")
        image_bytes = tf.TensorSpec([None], tf.string, name="image_bytes")
        state = [tf.TensorSpec([None, width], tf.float32, name=name) for name, width in captioner.state_sizes().items()]
        function = _function
        self._with_attention: tuple | None = None
        self.serving_default = function(lambda image_bytes: captioner.caption_bytes(image_bytes, settings), image_bytes)
        self.caption_images = function(lambda images: captioner.caption_images(images, settings), images)
        self.sample_captions = function(
            lambda image_bytes, seed: captioner.caption_bytes(image_bytes, self.sampling, seed),
            image_bytes, tf.TensorSpec([None], tf.int64, name="seed"))
        self.encode_image = function(self._encode_image, images)
        self.decode_step = function(self._decode_step, tf.TensorSpec([None], tf.int32, name="input_ids"), *state)
        self.ids_to_text = function(lambda ids: {"text": captioner.ids_to_text(ids)},
                                    tf.TensorSpec([None, None], tf.int32, name="ids"))
        # Traced now, so that the first call costs what every call costs.
        self.serving_default.get_concrete_function()
        self.caption_images.get_concrete_function()

    def _attention_functions(self) -> tuple:
        """(image_bytes, seed -> caption_bytes' outputs with attention; images -> caption_images' with
        attention), traced on first use; AttentionError for a model without attention."""
        if self._with_attention is None:
            self.captioner.check_attention()
            captioner, settings = self.captioner, self.settings
            self._with_attention = (
                _function(lambda image_bytes, seed: captioner.caption_bytes(image_bytes, settings, seed,
                                                                            attention=True),
                          tf.TensorSpec([None], tf.string, name="image_bytes"),
                          tf.TensorSpec([None], tf.int64, name="seed")),
                _function(lambda images: captioner.caption_images(images, settings, attention=True),
                          tf.TensorSpec([None, None, None, 3], tf.float32, name="images")))
        return self._with_attention

    def _encode_image(self, images):
        resized = resize_image(images, self.captioner.image_size, self.captioner.preprocess)
        return dict(zip(self.state_names, _on_nonempty_batch(lambda x: self.captioner.encode(x), resized)))

    def _decode_step(self, input_ids, *state):
        log_probs, new_state = self.captioner.decode_step(input_ids, list(state))
        return {"log_probs": log_probs, **dict(zip(self.state_names, new_state))}

    def signatures(self) -> dict:
        return {name: getattr(self, name) for name in SIGNATURES}

    def variables(self) -> list:
        """The tf.Variables the signatures capture (what a SavedModel of them must hold)."""
        captured = {}
        for name in SIGNATURES:
            for variable in getattr(self, name).get_concrete_function().variables:
                captured[id(variable)] = variable
        return list(captured.values())

    def tracing_count(self) -> int:
        return sum(getattr(self, n).experimental_get_tracing_count() for n in ("serving_default", "caption_images"))

    # Eager calls with numpy results (the Python API and the `caption` command).
    def caption_bytes(self, data: list[bytes], seeds: list[int] | None = None, *, attention: bool = False) -> dict:
        if attention:  # the settings' search, with the same seeds (beam search and greedy ignore them)
            seeds = [self.settings.seed] * len(data) if seeds is None else seeds
            out = self._attention_functions()[0](tf.constant(data), tf.constant(seeds, tf.int64))
        elif self.settings.strategy == "sample" and seeds is not None:
            out = self.sample_captions(tf.constant(data), tf.constant(seeds, tf.int64))
        else:
            out = self.serving_default(tf.constant(data))
        return {k: v.numpy() for k, v in out.items()}

    def caption_pixels(self, images: np.ndarray, *, attention: bool = False) -> dict:
        function = self._attention_functions()[1] if attention else self.caption_images
        return {k: v.numpy() for k, v in function(tf.constant(images, tf.float32)).items()}


def _function(fn, *specs):
    return tf.function(fn, input_signature=list(specs), autograph=False, jit_compile=False)


class ExportedCaptioner:
    """An exported SavedModel version dir, answering the calls a TrainedCaptioner's functions answer.

    Its decode settings are fixed at export: it can give fewer captions, and sampling with the
    exported sampling settings (`sample_captions`, any seed); any other setting is a DecodeSettingsError.
    """

    def __init__(self, path: str):
        described = io_utils.read_json(os.path.join(path, "assets", "config.json"))
        self.path, self.image_size = path, int(described["image_size"])
        self.max_image_pixels = int(described.get("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS))
        self.decode = DecodeSettings(**described["decode"])
        self._loaded = tf.saved_model.load(path)  # keeps the signatures' variables alive
        signatures = self._loaded.signatures
        self._sampling = (DecodeSettings(**described["sampling"]) if "sample_captions" in signatures
                          and "sampling" in described else None)
        self._functions = _ExportedFunctions(signatures)

    def functions(self, settings: DecodeSettings | None = None) -> "_ExportedFunctions":
        settings = settings or self.decode
        if self._sampling is not None and settings.strategy == "sample" and self.decode.strategy != "sample":
            exported = self._sampling
        else:
            exported = self.decode
        same = ("strategy", "beam_size", "max_length", "length_normalization", "words_per_beam", "temperature",
                "top_k", "top_p", "no_repeat_ngram")
        # Any seed: sampling goes through sample_captions, which takes one per image.
        if any(getattr(settings, n) != getattr(exported, n) for n in same) \
                or settings.num_captions > exported.num_captions:
            raise DecodeSettingsError(
                f"{self.path} was exported to decode with {_describe(self.decode)}"
                + (f" and to sample with {_describe(self._sampling)} (any seed)" if self._sampling else "")
                + f"; an export can give fewer captions but not {_describe(settings)}: export again "
                "(python -m export --strategy ... --beam-size ...) or load the run dir")
        return self._functions

    def tracing_count(self) -> int:
        return 0

    def check_attention(self):
        raise AttentionError(f"{self.path} is an export: its signatures give captions, not attention maps; "
                             "load the run dir it was exported from to see where the model looks")


class _ExportedFunctions:
    """An export's signatures, answering the calls `CaptionFunctions` answers (numpy results)."""

    def __init__(self, signatures):
        self._bytes = signatures["serving_default"]
        self._pixels = signatures["caption_images"]
        # Exports made before sampling existed have no sample_captions (ExportedCaptioner refuses sampling then).
        self._sample = signatures["sample_captions"] if "sample_captions" in signatures else None

    def caption_bytes(self, data: list[bytes], seeds: list[int] | None = None) -> dict:
        if seeds is not None and self._sample is not None:
            out = self._sample(image_bytes=tf.constant(data), seed=tf.constant(seeds, tf.int64))
        else:
            out = self._bytes(image_bytes=tf.constant(data))
        return {k: v.numpy() for k, v in out.items()}

    def caption_pixels(self, images: np.ndarray) -> dict:
        return {k: v.numpy() for k, v in self._pixels(images=tf.constant(images, tf.float32)).items()}


def load(path: str, *, checkpoint: str | None = None,
         max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> "TrainedCaptioner | ExportedCaptioner":
    """A run dir (its newest checkpoint that restores, or `checkpoint`), an exported SavedModel version
    dir (OUT/<name>/<N>), or a model base path (OUT/<name>: its newest version).

    Raises:
      FileNotFoundError: `path` is neither.
    """
    from caption_app.runs import layout

    check_pixel_limit(max_image_pixels)
    if io_utils.isfile(os.path.join(path, layout.CONFIG)):
        return TrainedCaptioner.from_run_dir(path, checkpoint, max_image_pixels=max_image_pixels)
    if checkpoint is not None:
        raise ValueError("checkpoint= is for a run dir; an export holds one checkpoint")
    return ExportedCaptioner(_version_dir(path))


def _version_dir(path: str) -> str:
    """`path` if it is a SavedModel, else its newest integer-named version dir that is one."""
    if io_utils.isfile(os.path.join(path, SAVED_MODEL_FILE)):
        return path
    if io_utils.isdir(path):
        versions = sorted((int(d) for d in io_utils.listdir(path) if d.isdigit()
                           and io_utils.isfile(os.path.join(path, d, SAVED_MODEL_FILE))), reverse=True)
        if versions:
            return os.path.join(path, str(versions[0]))
    raise FileNotFoundError(f"{path} is neither a run dir (config.json) nor an exported SavedModel "
                            f"({SAVED_MODEL_FILE}, or version dirs holding one); train into it or export it first")


def _describe(settings: DecodeSettings) -> str:
    parts = [f"strategy={settings.strategy}"]
    if settings.strategy == "beam":
        parts += [f"beam_size={settings.beam_size}", f"length_normalization={settings.length_normalization}"]
    if settings.strategy == "sample":
        parts += [f"temperature={settings.temperature}", f"top_k={settings.top_k}", f"top_p={settings.top_p}"]
    parts += [f"max_length={settings.max_length}", f"num_captions={settings.num_captions}"]
    if settings.no_repeat_ngram:
        parts.append(f"no_repeat_ngram={settings.no_repeat_ngram}")
    return ", ".join(parts)


def _seeds(batch, settings: DecodeSettings, seeds):
    """One int64 seed per row of `batch` (a tensor [B, ...]): `seeds`, or the settings' seed for each;
    None when the settings do not sample (beam search and greedy take no seeds: no ops for them)."""
    if settings.strategy != "sample":
        return None
    if seeds is None:
        return tf.fill([tf.shape(batch)[0]], tf.constant(settings.seed, tf.int64))
    return tf.cast(seeds, tf.int64)


def _on_nonempty_batch(fn, images, *args):
    """fn(images, *args) for images [B, S, S, 3] and per-image args [B, ...], each output [B, ...], also when B = 0.

    The backbone's batch normalization fails on an empty batch on CPU (TF 2.21:
    "Incompatible shapes: [32] vs. [0,32,32,3]"), and a batch where no image
    decoded is empty: `fn` then gets one black image (and the args' zero row) and
    its outputs' first B (= 0) rows are returned.
    """
    n = tf.shape(images)[0]

    def pad(x):
        return tf.cond(n > 0, lambda: x, lambda: tf.zeros(tf.concat([[1], tf.shape(x)[1:]], 0), x.dtype))

    return tf.nest.map_structure(lambda t: t[:n], fn(pad(images), *[pad(a) for a in args]))
