"""The Python API: caption images from a notebook or a script, and the pieces of your own `model.fit`.

    from caption_app import Captioner
    captioner = Captioner.load("runs/mine")          # a run dir, or an exported SavedModel (version) dir
    results = captioner.caption(["dog.jpg", pil_image, numpy_array, jpeg_bytes], beam_size=3, num_captions=2)
    results[0].captions, results[0].log_probs
    captioner.caption("dog.jpg", strategy="sample", num_captions=5, top_p=0.9, seed=1)
    captioner.caption("dog.jpg", return_attention=True).attention[0]   # [words, h, w]: where each word looked

Both sources run the same functions: a run dir is loaded into a `TrainedCaptioner`
(caption_app/inference/captioner.py), whose traced functions are what an export
serializes; an export is loaded as their saved form. Encoded bytes and files go
through `serving_default` (the one decoder of untrusted bytes,
caption_app/data/image_bytes.py: the header's declared size is checked before
anything is decoded; sampling with a seed through `sample_captions`); pixel
arrays and PIL images through `caption_images`. They are `tf.function`s with a
fixed input signature, traced once per decode setting: later calls of any
batch size run the traced graph.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import tensorflow as tf

from caption_app import config as config_lib
from caption_app.config import Config
from caption_app.data import manifest as manifest_lib
from caption_app.data.image_bytes import DEFAULT_MAX_IMAGE_PIXELS
from caption_app.data.pipeline import make_dataset, resolve_tensor_sizes
from caption_app.data.vocabulary import Vocabulary
from caption_app.inference import captioner as captioner_lib
from caption_app.inference.captioner import SAVED_MODEL_FILE  # noqa: F401 (its old home)
from caption_app.inference.inputs import CaptionResult, caption_items
from caption_app.inference.settings import DecodeSettings
from caption_app.model import show_and_tell
from caption_app.model.loss import MaskedCrossEntropy
from caption_app.training import budget as budget_lib

__all__ = ["Captioner", "CaptionResult", "load_config", "make_datasets", "TrainingData", "build_model",
           "caption_loss"]


class Captioner:
    """A trained captioner, loaded once; `caption` reuses its traced functions.

    Build it with `Captioner.load(path)`.
    """

    def __init__(self, loaded: "captioner_lib.TrainedCaptioner | captioner_lib.ExportedCaptioner", *,
                 batch_size: int = 16, max_file_bytes: int | None = None):
        self.loaded = loaded
        self.batch_size = batch_size
        self.max_file_bytes = max_file_bytes
        self.path = loaded.path
        self.image_size: int = loaded.image_size
        self.decode: DecodeSettings = loaded.decode

    @classmethod
    def load(cls, path: str, *, checkpoint: str | None = None, batch_size: int = 16,
             max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, max_file_bytes: int | None = None) -> "Captioner":
        """Loads a run dir (its newest checkpoint that restores, or `checkpoint`), an exported
        SavedModel version dir (OUT/<name>/<N>), or a model base path (OUT/<name>: its newest
        version).

        Args:
          path: the run dir or export.
          checkpoint: a run dir's checkpoint path (default: the newest).
          batch_size: images captioned together.
          max_image_pixels: encoded images whose header declares more pixels are not decoded
            (a run dir; an export keeps the limit it was exported with).
          max_file_bytes: image files larger than this are not read (default: the converters' limit).
        Raises:
          FileNotFoundError: `path` is neither.
        """
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        loaded = captioner_lib.load(path, checkpoint=checkpoint, max_image_pixels=max_image_pixels)
        if isinstance(loaded, captioner_lib.TrainedCaptioner):
            loaded.functions()  # traced now, not on the first call
        return cls(loaded, batch_size=batch_size, max_file_bytes=max_file_bytes)

    def caption(self, images: Any, *, strategy: str | None = None, beam_size: int | None = None,
                num_captions: int | None = None, max_length: int | None = None,
                length_normalization: float | None = None, temperature: float | None = None,
                top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                no_repeat_ngram: int | None = None, return_attention: bool = False):
        """Captions images.

        Args:
          images: one image or a list of them, each a file path (str or os.PathLike),
            encoded bytes (JPEG, PNG, GIF, BMP), a PIL image, or an array [H, W, 3]
            (also [H, W], [H, W, 1], [H, W, 4]: grey, and alpha composited onto white) of uint8 or
            of floats in 0-255, any size.
          strategy: "beam", "greedy" or "sample" (caption_app/inference/strategies.py).
          beam_size, num_captions, max_length, length_normalization, temperature, top_k, top_p,
            seed, no_repeat_ngram: the decode settings, with the meaning they have in `caption`
            (caption_app/inference/settings.py): None or 0 keeps the run's. An export decodes with
            the settings it was exported with (and samples with its exported sampling settings,
            any seed); only fewer captions may be asked of it.
          return_attention: also, per caption, its attention maps (`CaptionResult.attention`: a
            numpy array [words, h, w] over the backbone's cells, each map summing to 1, from the
            search that chose the words) and the image as the model saw it (`pixels`). A run
            dir trained with `model.attention_size` only.
        Returns:
          A CaptionResult per image (a list for a list, one for one image).
        Raises:
          DecodeSettingsError: a decode setting out of range, or one an export cannot give.
          AttentionError: `return_attention` for a run without attention, or for an export.
          ValueError, TypeError: an input that is not an image of the kinds above.
        """
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        settings = self.decode.resolve(strategy=strategy, beam_size=beam_size, max_length=max_length,
                                       length_normalization=length_normalization, num_captions=num_captions,
                                       temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                                       no_repeat_ngram=no_repeat_ngram)
        if return_attention:
            self.loaded.check_attention()
        functions = self.loaded.functions(settings)
        results = caption_items(functions, items, settings, batch_size=self.batch_size,
                                max_image_pixels=self.loaded.max_image_pixels, max_file_bytes=self.max_file_bytes,
                                attention=return_attention)
        return results[0] if single else results

    def tracing_count(self) -> int:
        """How many times the functions were traced (a run dir; 0 for an export, which is traced already)."""
        return self.loaded.tracing_count()


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
