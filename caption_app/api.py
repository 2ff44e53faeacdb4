"""The Python API: caption images from a notebook or a script, and the pieces of your own `model.fit`.

    from caption_app import Captioner
    captioner = Captioner.load("runs/mine")          # a run dir, or an exported SavedModel (version) dir
    results = captioner.caption(["dog.jpg", pil_image, numpy_array, jpeg_bytes], beam_size=3, num_captions=2)
    results[0].captions, results[0].log_probs

Both sources run the same graph: a run dir is loaded through `run_dir.load_model`
into the export's `CaptionModule` (export/saved_model.py), an export is its
saved form. Encoded bytes and files go through its `serving_default` (the one
decoder of untrusted bytes, caption_app/data/image_bytes.py: the header's
declared size is checked before anything is decoded); pixel arrays and PIL
images through `caption_images`. Both are `tf.function`s with a fixed input
signature ([None] strings, [None, S, S, 3] floats), traced once when the
captioner loads (per decode setting, for a run dir): later calls of any batch
size run the traced graph.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from caption_app.training import budget as budget_lib
from caption_app import config as config_lib
from caption_app import io_utils
from caption_app.runs import layout as run_layout
from caption_app.runs import loader as run_loader
from caption_app.inference.image_files import read_image_file, why_not_decoded
from caption_app.config import Config
from caption_app.data import manifest as manifest_lib
from caption_app.data.image_bytes import DEFAULT_MAX_IMAGE_PIXELS
from caption_app.data.pipeline import make_dataset, resolve_tensor_sizes
from caption_app.data.vocabulary import Vocabulary
from caption_app.inference.settings import DecodeSettings, DecodeSettingsError
from caption_app.model import show_and_tell
from caption_app.model.loss import MaskedCrossEntropy

SAVED_MODEL_FILE = "saved_model.pb"


@dataclasses.dataclass(frozen=True)
class CaptionResult:
    """The captions of one image, best first.

    Attributes:
      captions: the K captions (empty when the image could not be captioned).
      log_probs: each caption's log-probability (<end> included).
      scores: what beam search ranked by: log_prob / length ** length_normalization.
      source: the path for a file, else None.
      error: why the image could not be captioned (unreadable file, not an
        image, damaged, over the pixel limit), else None.
    """

    captions: list[str]
    log_probs: list[float]
    scores: list[float]
    source: str | None = None
    error: str | None = None


class Captioner:
    """A trained captioner, loaded once; `caption` reuses its traced graph.

    Build it with `Captioner.load(path)`.
    """

    def __init__(self, backend: "_RunDirBackend | _SavedModelBackend", *, batch_size: int = 16):
        self._backend = backend
        self.batch_size = batch_size
        self.path = backend.path
        self.image_size: int = backend.image_size
        self.decode: DecodeSettings = backend.default_settings

    @classmethod
    def load(cls, path: str, *, checkpoint: str | None = None, batch_size: int = 16,
             max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> "Captioner":
        """Loads a run dir (its newest checkpoint that restores, or `checkpoint`), an exported
        SavedModel version dir (OUT/<name>/<N>), or a model base path (OUT/<name>: its newest
        version).

        Args:
          path: the run dir or export.
          checkpoint: a run dir's checkpoint path (default: the newest).
          batch_size: images captioned together.
          max_image_pixels: encoded images whose header declares more pixels are not decoded
            (a run dir; an export keeps the limit it was exported with).
        Raises:
          FileNotFoundError: `path` is neither.
        """
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if io_utils.isfile(os.path.join(path, run_layout.CONFIG)):
            return cls(_RunDirBackend(path, checkpoint, max_image_pixels), batch_size=batch_size)
        if checkpoint is not None:
            raise ValueError("checkpoint= is for a run dir; an export holds one checkpoint")
        version_dir = _version_dir(path)
        return cls(_SavedModelBackend(version_dir), batch_size=batch_size)

    def caption(self, images: Any, *, beam_size: int | None = None, num_captions: int | None = None,
                max_length: int | None = None, length_normalization: float | None = None):
        """Captions images.

        Args:
          images: one image or a list of them, each a file path (str or os.PathLike),
            encoded bytes (JPEG, PNG, GIF, BMP), a PIL image, or an array [H, W, 3]
            (also [H, W], [H, W, 1], [H, W, 4]: grey and alpha are handled) of uint8 or
            of floats in 0-255, any size.
          beam_size, num_captions, max_length, length_normalization: the decode
            settings, with the meaning they have in `caption` (caption_app/inference/settings.py):
            None or 0 keeps the run's. An export decodes with the settings it was
            exported with; only fewer captions may be asked of it.
        Returns:
          A CaptionResult per image (a list for a list, one for one image).
        Raises:
          DecodeSettingsError: a decode setting out of range, or one an export cannot give.
          ValueError, TypeError: an input that is not an image of the kinds above.
        """
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        settings = self.decode.resolve(beam_size=beam_size, max_length=max_length,
                                       length_normalization=length_normalization, num_captions=num_captions)
        prepared = [_prepare(item, i) for i, item in enumerate(items)]  # (source, bytes | pixels | error)
        results: list[CaptionResult | None] = [None] * len(items)
        for start in range(0, len(items), self.batch_size):
            chunk = range(start, min(start + self.batch_size, len(items)))
            encoded = [i for i in chunk if isinstance(prepared[i][1], bytes)]
            pixels = [i for i in chunk if isinstance(prepared[i][1], np.ndarray)]
            for i in chunk:
                source, value = prepared[i]
                if isinstance(value, str):
                    results[i] = CaptionResult([], [], [], source, value)
            if encoded:
                data = [prepared[i][1] for i in encoded]
                out = self._backend.caption_bytes(data, settings)
                for row, i in enumerate(encoded):
                    if out["valid"][row]:
                        results[i] = _result(out, row, settings, prepared[i][0])
                    else:
                        reason = why_not_decoded(data[row], self._backend.max_image_pixels)
                        results[i] = CaptionResult([], [], [], prepared[i][0], f"cannot caption: {reason}")
            # Arrays of one shape go together, as they are: the graph resizes them the run's way
            # (data.preprocess), so an imported im2txt run sees im2txt's resize here too.
            by_shape: dict[tuple, list[int]] = {}
            for i in pixels:
                by_shape.setdefault(prepared[i][1].shape, []).append(i)
            for group in by_shape.values():
                batch = tf.constant(np.stack([prepared[i][1] for i in group]).astype(np.float32))
                out = self._backend.caption_pixels(batch, settings)
                for row, i in enumerate(group):
                    results[i] = _result(out, row, settings, prepared[i][0])
        return results[0] if single else results

    def tracing_count(self) -> int:
        """How many times the graphs were traced (a run dir; 0 for an export, which is traced already)."""
        return self._backend.tracing_count()


def _result(out: dict, row: int, settings: DecodeSettings, source: str | None) -> CaptionResult:
    k = settings.num_captions
    return CaptionResult([t.decode("utf-8") for t in out["captions"][row][:k]],
                         [float(v) for v in out["log_probs"][row][:k]],
                         [float(v) for v in out["scores"][row][:k]], source)


def _prepare(item: Any, position: int) -> tuple[str | None, bytes | np.ndarray | str]:
    """One input -> (source, encoded bytes | float32 pixels [H, W, 3] | an error message)."""
    if isinstance(item, (str, os.PathLike)):
        path = os.fspath(item)
        try:
            return path, read_image_file(path)
        except OSError as err:
            return path, f"cannot read: {err.strerror}"
    if isinstance(item, (bytes, bytearray, memoryview)):
        return None, bytes(item)
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        Image = None
    if Image is not None and isinstance(item, Image.Image):
        item = np.asarray(item.convert("RGB"))
    if isinstance(item, tf.Tensor):
        item = item.numpy()
    if not isinstance(item, np.ndarray):
        raise TypeError(f"images[{position}]: expected a path, bytes, a PIL image or an array, "
                        f"got {type(item).__name__}")
    return None, _pixels(item, position)


def _pixels(array: np.ndarray, position: int) -> np.ndarray:
    """[H, W], [H, W, 1|3|4] uint8 or float 0-255 -> float32 [H, W, 3]."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4) or min(array.shape[:2]) < 1:
        raise ValueError(f"images[{position}]: an array image is [height, width, channels] with 1, 3 or 4 "
                         f"channels, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)) \
            or array.dtype == np.bool_:
        raise ValueError(f"images[{position}]: expected uint8 or float pixels, got dtype {array.dtype}")
    pixels = array.astype(np.float32)
    if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 255:
        raise ValueError(f"images[{position}]: pixel values must be finite and within 0-255 (got "
                         f"{pixels.min():g} to {pixels.max():g}); scale 0-1 images by 255")
    if np.issubdtype(array.dtype, np.floating) and pixels.size and pixels.max() <= 1.0 and pixels.max() > 0:
        warnings.warn(f"images[{position}]: float pixels all within 0-1; the model reads 0-255 "
                      "(multiply by 255 if this is a 0-1 image)", stacklevel=4)
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    return pixels[:, :, :3]


class _RunDirBackend:
    """A run dir's model in the export's CaptionModule, one per decode setting (traced when built)."""

    def __init__(self, path: str, checkpoint: str | None, max_image_pixels: int):
        from export.saved_model import CaptionModule  # the serving graph, in memory

        if isinstance(max_image_pixels, bool) or not isinstance(max_image_pixels, int) or max_image_pixels < 1:
            raise ValueError(f"max_image_pixels must be a positive integer, got {max_image_pixels!r}")
        config = run_loader.load_config(path)
        self.default_settings = config.decode
        self.default_settings.resolve()  # the run's own settings are valid
        model, _, self._vocab, sizes, self.checkpoint = run_loader.load_model(path, checkpoint)
        self._captioner = show_and_tell.Captioner(model)
        self._module_class = CaptionModule
        self.path, self.image_size, self.max_image_pixels = path, sizes.image_size, max_image_pixels
        self._preprocess = config.data.preprocess  # e.g. im2txt's resize for an imported run
        self._files = (os.path.join(path, run_layout.VOCAB), os.path.join(path, run_layout.CONFIG))
        self._modules: dict[DecodeSettings, Any] = {}
        self._module(self.default_settings.resolve())  # traced now, not on the first call

    def _module(self, settings: DecodeSettings):
        if settings not in self._modules:
            self._modules[settings] = self._module_class(self._captioner, self._vocab, settings, *self._files,
                                                         max_image_pixels=self.max_image_pixels,
                                                         preprocess=self._preprocess)
        return self._modules[settings]

    def caption_bytes(self, data: list[bytes], settings: DecodeSettings) -> dict:
        out = self._module(settings).serving_default(tf.constant(data))
        return {k: v.numpy() for k, v in out.items()}

    def caption_pixels(self, images: tf.Tensor, settings: DecodeSettings) -> dict:
        return {k: v.numpy() for k, v in self._module(settings).caption_images(images).items()}

    def tracing_count(self) -> int:
        return sum(getattr(m, name).experimental_get_tracing_count()
                   for m in self._modules.values() for name in ("serving_default", "caption_images"))


class _SavedModelBackend:
    """An exported SavedModel: its `serving_default` and `caption_images` signatures."""

    def __init__(self, path: str):
        described = io_utils.read_json(os.path.join(path, "assets", "config.json"))
        self.path, self.image_size = path, int(described["image_size"])
        self.max_image_pixels = int(described.get("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS))
        self.default_settings = DecodeSettings(**described["decode"])
        loaded = tf.saved_model.load(path)
        self._loaded = loaded  # keeps the signatures' variables alive
        self._bytes = loaded.signatures["serving_default"]
        self._pixels = loaded.signatures["caption_images"]

    def _check(self, settings: DecodeSettings) -> None:
        exported = self.default_settings
        fixed = ("beam_size", "max_length", "length_normalization")
        if any(getattr(settings, n) != getattr(exported, n) for n in fixed) \
                or settings.num_captions > exported.num_captions:
            raise DecodeSettingsError(
                f"{self.path} was exported with beam_size={exported.beam_size}, max_length={exported.max_length}, "
                f"length_normalization={exported.length_normalization}, num_captions={exported.num_captions}; "
                "an export can give fewer captions but not other settings: export again "
                "(python -m export --beam-size ...) or load the run dir")

    def caption_bytes(self, data: list[bytes], settings: DecodeSettings) -> dict:
        self._check(settings)
        return {k: v.numpy() for k, v in self._bytes(image_bytes=tf.constant(data)).items()}

    def caption_pixels(self, images: tf.Tensor, settings: DecodeSettings) -> dict:
        self._check(settings)
        return {k: v.numpy() for k, v in self._pixels(images=images).items()}

    def tracing_count(self) -> int:
        return 0


def _version_dir(path: str) -> str:
    """`path` if it is a SavedModel, else its newest integer-named version dir that is one."""
    if io_utils.isfile(os.path.join(path, SAVED_MODEL_FILE)):
        return path
    if io_utils.isdir(path):
        versions = sorted((int(d) for d in io_utils.listdir(path) if d.isdigit()
                           and io_utils.isfile(os.path.join(path, d, SAVED_MODEL_FILE))), reverse=True)
        if versions:
            return os.path.join(path, str(versions[0]))
    raise FileNotFoundError(f"{path} is neither a run dir ({run_layout.CONFIG}) nor an exported SavedModel "
                            f"({SAVED_MODEL_FILE}, or version dirs holding one); train into it or export it first")


# ---------------------------------------------------------------------------
# The pieces of your own `model.fit`.

def load_config(name: str, overrides: Sequence[str] = ()) -> Config:
    """What `--config NAME --set ...` gives: a preset, a JSON config file (an earlier run's
    RUN/config.json) or a run dir, with `section.field=value` overrides."""
    return config_lib.override(config_lib.from_name_or_file(name), list(overrides)).validate()


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """A data dir's datasets for `model.fit`, sized by `make_datasets`.

    Attributes:
      train: repeating (inputs, targets) batches: inputs {"image": [B, S, S, 3] float32 0-255,
        "input_ids": [B, C, T-1] int32}, targets [B, C, T-1] int32 (0 = padding).
      val: the val split, once through (None when the data has no val images).
      steps_per_epoch: one pass over the train split's image-caption pairs.
      vocab: the vocabulary (`vocab.size` is what `build_model` needs).
      manifest: the data dir's manifest.
    """

    train: tf.data.Dataset
    val: tf.data.Dataset | None
    steps_per_epoch: int
    vocab: Vocabulary
    manifest: manifest_lib.Manifest

    @property
    def vocab_size(self) -> int:
        return self.vocab.size


def make_datasets(config: Config, data_dir: str) -> TrainingData:
    """The train and val datasets of a converted data dir, as `train` builds them."""
    manifest = manifest_lib.load(data_dir)
    vocab = Vocabulary.load(manifest.vocab_path)
    sizes = resolve_tensor_sizes(config, manifest)
    train = make_dataset(config, manifest, vocab, "train", training=True, sizes=sizes).repeat()
    has_val = "val" in manifest.splits and manifest.split("val").num_images > 0
    val = make_dataset(config, manifest, vocab, "val", training=False, sizes=sizes) if has_val else None
    return TrainingData(train, val, budget_lib.budget_for(config, manifest).steps_per_epoch, vocab, manifest)


def build_model(config: Config, vocab_size: int):
    """The Show-and-Tell Keras model: {"image", "input_ids"} -> logits [B, C, T, V]."""
    return show_and_tell.build_model(config, vocab_size)


def caption_loss(label_smoothing: float = 0.0) -> MaskedCrossEntropy:
    """The training loss: mean cross-entropy over the real (non-padding) target tokens, optionally
    label-smoothed (pass `config.train.label_smoothing` to train as `train` does)."""
    return MaskedCrossEntropy(label_smoothing)
