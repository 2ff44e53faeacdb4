"""Typed, frozen configuration: dataclasses, named presets, `--set` overrides.

Everything the data can tell (examples per epoch, vocabulary size, caption
length, steps) is read from the data dir's manifest at run time; nothing
here is a dataset count.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from typing import Any, Callable

from caption_app import io_utils
from caption_app.inference.settings import DecodeSettings
from caption_app.errors import CaptionAppError


OPTIMIZERS = ("sgd", "adam")  # caption_app/training/optimizers.py
LR_SCHEDULES = ("staircase", "cosine", "constant")
SCST_BASELINES = ("mean", "greedy")  # caption_app/training/scst.py

# data.preprocess: "default" resizes with antialiasing; "im2txt" as im2txt's inference does (TF1
# bilinear resize to 346/299 of the size, aspect ratio not kept, central crop), for imported im2txt models.
PREPROCESS = ("default", "im2txt")


@dataclasses.dataclass(frozen=True)
class Data:
    image_size: int = 0  # pixels (square); 0 = the backbone's default size
    captions_per_image: int = 0  # captions per image in a train batch; 0 = the manifest's maximum
    max_caption_length: int = 32  # tokens, <start> and <end> included; longer captions are cut
    augment: tuple[str, ...] = ()  # train-only keras-cv augmentations: flip, color, crop
    shuffle_buffer: int = 2048  # images
    cache: bool = False  # keep decoded train images in memory after the first epoch
    preprocess: str = "default"  # one of PREPROCESS: how images become S x S pixels (data/pipeline.py)
    # Train batches pad captions to their length bucket (caption_app/data/pipeline.py): this many
    # buckets chosen from the manifest's caption lengths (1 = one length, as before), or
    # bucket_lengths: explicit padded lengths in tokens (<start> and <end> included), e.g. 14,18,24.
    length_buckets: int = 4
    bucket_lengths: tuple[int, ...] = ()
    # Which caption of a train image, by length (1 = the longest), picks its bucket; with k > 1 the
    # image's longer captions are cut to the bucket (they lose <end>). Validation is never cut.
    bucket_caption_rank: int = 1


@dataclasses.dataclass(frozen=True)
class Model:
    backbone: str = "inception_v3"  # a name in caption_app.model.backbones.BACKBONES
    backbone_weights: str = "imagenet"  # imagenet | none | path to a weights file
    embedding_size: int = 512  # image and word embedding width
    decoder: str = "lstm"  # a name in caption_app.model.decoders (the registry of decoder types)
    lstm_units: int = 512  # the LSTM decoder's H
    lstm_dropout: float = 0.3  # im2txt: lstm_dropout_keep_prob 0.7
    init_scale: float = 0.08  # uniform initializer range of the decoder
    embedding_norm: bool = False  # batch-normalize the image embedding (keeps LSTM gates out of saturation)
    use_cudnn: bool = False  # cuDNN LSTM makes Keras drop XLA silently; keep False with jit_compile
    image_every_step: bool = False  # also feed the image embedding with every word (state [h, c, image])
    image_logits: bool = False  # deep output: logits += a linear map of the image embedding (state [h, c, image])
    # >0: the decoder attends over the backbone's spatial map, projected to this width per cell, and the
    # attended context adds to the logits (state [h, c, image with its cells]); 0 = off.
    attention_size: int = 0
    word_dropout: float = 0.0  # training: each input word (not <start>) -> <unk> with this probability
    image_first: bool = True  # False (attention only): the LSTM's first input is zeros, not the image


@dataclasses.dataclass(frozen=True)
class Train:
    # Durations are passes over the train split's image-caption pairs (caption_app/training/budget.py).
    epochs: float = 16.0  # frozen-backbone phase (or full training when freeze_backbone=False)
    batch_size: int = 32  # images per batch; each image brings its captions
    optimizer: str = "sgd"  # sgd | adam
    learning_rate: float = 2.0
    lr_schedule: str = "staircase"  # staircase | cosine | constant
    lr_decay_epochs: float = 8.0  # staircase: multiply by lr_decay_factor every this many passes
    lr_decay_factor: float = 0.5
    warmup_epochs: float = 0.0  # linear warmup from 0, in passes (staircase and cosine)
    reference_batch_pairs: int = 0  # >0: the rates are for batches of this many pairs; scaled linearly
    clip_gradient_norm: float = 5.0  # global norm; 0 = off
    label_smoothing: float = 0.0  # the training loss only; perplexity stays the plain cross-entropy
    weight_decay: float = 0.0  # adam only (AdamW)
    freeze_backbone: bool = True  # phase 1 trains the decoder and image embedding only
    feature_cache: bool = False  # phase 1 from backbone features computed once (caption_app/training/feature_cache.py)
    fine_tune_epochs: float = 0.0  # phase 2: everything trainable
    fine_tune_learning_rate: float = 0.0005
    fine_tune_lr_schedule: str = ""  # phase 2's schedule; "" = lr_schedule
    jit_compile: bool = True
    max_checkpoints_to_keep: int = 5
    seed: int = 0
    # Scale (README "Scaling out"): batch_size is the GLOBAL batch, split over the replicas.
    strategy: str = "default"  # default | mirrored | multi_worker | tpu (caption_app/training/distribute.py)
    precision: str = "float32"  # float32 | mixed_float16 | mixed_bfloat16; logits and loss stay float32
    backup_every_steps: int = 0  # also back up mid-epoch every this many steps (RUN/backup); 0 = epoch ends only
    # Phase 3, self-critical sequence training (caption_app/training/scst.py, docs/training.md): passes over
    # the train images after the cross-entropy phases, optimizing CIDEr-D of sampled captions; the backbone
    # stays frozen, Adam at its own rate and schedule.
    scst_epochs: float = 0.0  # 0 = off
    scst_learning_rate: float = 5e-5
    scst_lr_schedule: str = "constant"  # staircase | cosine | constant
    scst_samples: int = 5  # K captions sampled per image (>= 2)
    scst_baseline: str = "mean"  # mean: the image's other samples' mean reward; greedy: the greedy caption's


@dataclasses.dataclass(frozen=True)
class Eval:
    batch_size: int = 32  # images per evaluation batch (the decode settings are `Config.decode`)
    report_images: int = 500  # thumbnails in evaluate's HTML report (its worst rows); the rest are text only
    sample_images: int = 4  # fixed val images captioned into TensorBoard after each epoch; 0 = off
    sample_beam_size: int = 1  # their beam size (1: greedy, cheap)


class ConfigError(CaptionAppError, ValueError):
    """A config value out of range (the message names the key and the rule)."""


# Keys that moved from `eval` to `decode` (caption_app/inference/settings.py). Old config.json files and
# `--set eval.beam_size=...` keep working: both are read as the `decode` key.
_MOVED_TO_DECODE = ("beam_size", "max_length", "length_normalization")


@dataclasses.dataclass(frozen=True)
class Config:
    name: str = "custom"
    data: Data = Data()
    model: Model = Model()
    train: Train = Train()
    eval: Eval = Eval()
    decode: DecodeSettings = DecodeSettings()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> "Config":
        """Returns self when every value is in range; raises ConfigError naming the first that is not.

        Called by every command that trains into a run dir (`train`,
        `cache-features`) before anything is written.
        """
        d, m, t, e = self.data, self.model, self.train, self.eval
        checks = [
            ("train.epochs", t.epochs, t.epochs > 0, "> 0"),
            ("train.fine_tune_epochs", t.fine_tune_epochs, t.fine_tune_epochs >= 0, ">= 0"),
            ("train.batch_size", t.batch_size, t.batch_size >= 1, ">= 1"),
            ("train.learning_rate", t.learning_rate, t.learning_rate > 0, "> 0"),
            ("train.fine_tune_learning_rate", t.fine_tune_learning_rate,
             t.fine_tune_epochs == 0 or t.fine_tune_learning_rate > 0, "> 0 when train.fine_tune_epochs > 0"),
            ("train.max_checkpoints_to_keep", t.max_checkpoints_to_keep, t.max_checkpoints_to_keep >= 1, ">= 1"),
            ("train.backup_every_steps", t.backup_every_steps, t.backup_every_steps >= 0, ">= 0 (0: off)"),
            ("train.clip_gradient_norm", t.clip_gradient_norm, t.clip_gradient_norm >= 0, ">= 0 (0: off)"),
            ("train.label_smoothing", t.label_smoothing, 0 <= t.label_smoothing < 1, "in [0, 1) (0: off)"),
            ("train.optimizer", t.optimizer, t.optimizer in OPTIMIZERS, " or ".join(OPTIMIZERS)),
            ("train.lr_schedule", t.lr_schedule, t.lr_schedule in LR_SCHEDULES, ", ".join(LR_SCHEDULES)),
            ("train.scst_epochs", t.scst_epochs, t.scst_epochs >= 0, ">= 0 (0: off)"),
            ("train.scst_learning_rate", t.scst_learning_rate, t.scst_epochs == 0 or t.scst_learning_rate > 0,
             "> 0 when train.scst_epochs > 0"),
            ("train.scst_lr_schedule", t.scst_lr_schedule, t.scst_lr_schedule in LR_SCHEDULES,
             ", ".join(LR_SCHEDULES)),
            ("train.scst_samples", t.scst_samples, t.scst_samples >= 2,
             ">= 2 (each sample's baseline needs another sample or the greedy caption)"),
            ("train.scst_baseline", t.scst_baseline, t.scst_baseline in SCST_BASELINES, " or ".join(SCST_BASELINES)),
            ("train.fine_tune_lr_schedule", t.fine_tune_lr_schedule, t.fine_tune_lr_schedule in ("",) + LR_SCHEDULES,
             ", ".join(LR_SCHEDULES) + ', or "" for train.lr_schedule'),
            ("data.max_caption_length", d.max_caption_length, d.max_caption_length >= 2,
             ">= 2 (<start> and <end> included)"),
            ("data.captions_per_image", d.captions_per_image, d.captions_per_image >= 0,
             ">= 1, or 0 for the manifest's maximum"),
            ("data.image_size", d.image_size, d.image_size >= 0, ">= 1, or 0 for the backbone's default"),
            ("data.shuffle_buffer", d.shuffle_buffer, d.shuffle_buffer >= 1, ">= 1"),
            ("data.preprocess", d.preprocess, d.preprocess in PREPROCESS, " or ".join(PREPROCESS)),
            ("data.length_buckets", d.length_buckets, d.length_buckets >= 1, ">= 1 (1: one length, no buckets)"),
            ("data.bucket_lengths", d.bucket_lengths, all(n >= 3 for n in d.bucket_lengths),
             "token counts >= 3 (<start>, a word, <end>), or empty to choose from the data"),
            ("data.bucket_caption_rank", d.bucket_caption_rank,
             d.bucket_caption_rank >= 1 and d.bucket_caption_rank <= (d.captions_per_image or d.bucket_caption_rank),
             ">= 1 (1: the longest caption, nothing cut) and <= data.captions_per_image when that is set"),
            ("model.embedding_size", m.embedding_size, m.embedding_size >= 1, ">= 1"),
            ("model.lstm_units", m.lstm_units, m.lstm_units >= 1, ">= 1"),
            ("model.lstm_dropout", m.lstm_dropout, 0 <= m.lstm_dropout < 1, "in [0, 1)"),
            ("model.attention_size", m.attention_size, m.attention_size >= 0, ">= 0 (0: off)"),
            ("model.word_dropout", m.word_dropout, 0 <= m.word_dropout < 1, "in [0, 1)"),
            ("eval.batch_size", e.batch_size, e.batch_size >= 1, ">= 1"),
            ("eval.report_images", e.report_images, e.report_images >= 0, ">= 0"),
            ("eval.sample_images", e.sample_images, e.sample_images >= 0, ">= 0 (0: off)"),
            ("eval.sample_beam_size", e.sample_beam_size, e.sample_beam_size >= 1, ">= 1"),
        ]
        for key, value, ok, rule in checks:
            if isinstance(value, bool) or not ok:  # NaN fails every comparison
                raise ConfigError(f"{key} must be {rule}, got {value!r} (--set {key}=...)")
        from caption_app.model import decoders  # the registry (imports Keras; not needed for --help)

        if m.decoder not in decoders.names():
            raise ConfigError(f"model.decoder must be one of {', '.join(decoders.names())}, got {m.decoder!r} "
                              "(--set model.decoder=...)")
        if not m.image_first and not (m.attention_size or m.image_every_step or m.image_logits):
            raise ConfigError("model.image_first=false leaves the decoder no way to see the image: set "
                              "model.attention_size (or model.image_every_step / model.image_logits), "
                              "or model.image_first=true")
        if t.feature_cache and m.attention_size:
            raise ConfigError("train.feature_cache keeps pooled backbone features, but model.attention_size "
                              f"{m.attention_size} needs the spatial map: set train.feature_cache=false or "
                              "model.attention_size=0")
        try:
            self.decode.resolve()
        except ValueError as err:
            raise ConfigError(f"decode: {err}") from None
        return self

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        old_eval = dict(d.get("eval", {}))
        moved = {k: old_eval.pop(k) for k in _MOVED_TO_DECODE if k in old_eval}
        if moved:  # a config.json written before `decode` had its own section
            d = {**d, "eval": old_eval, "decode": {**moved, **d.get("decode", {})}}
        return _from_dict(cls, d, "")


# ---------------------------------------------------------------------------
# Presets. Each docstring starts with the command that runs it.

def shapes() -> Config:
    """python -m caption_app train --config shapes --data DATA --run-dir RUN

    The embedded synthetic "shapes" dataset (and other small simple-scene sets
    in the Flickr8k layout): a small CNN trained from scratch at 64x64 together
    with the decoder, Adam with a cosine schedule. The image reaches the words
    only through attention: each word's LSTM output attends over the CNN's 4x4
    map (`attention_size`) and the LSTM does not read the pooled image first
    (`image_first=False`); a quarter of the input words are hidden in training
    (`word_dropout`), and the loss is label-smoothed (`label_smoothing`). With
    the image only as the first LSTM input (Show and Tell) the CNN stayed nearly
    colour-blind; with one pooled vector the decoder learnt (colour, shape)
    pairs as wholes and renamed pairs never seen in training to seen ones; and
    the plain cross-entropy drove a word never seen after the words before it
    towards probability 0, a veto the attended object could not overrule
    (bench/RESULTS.md, "Learning quality").
    """
    return Config(
        name="shapes",
        # length_buckets=1: batches grouped by caption length hold images of one object count, and the
        # batch-normalized embedding (and the small CNN's BatchNorm) then normalizes the count away in
        # training: with 4 buckets every test caption named 2 objects (BLEU-4 0.665, bench/RESULTS.md).
        data=Data(image_size=64, max_caption_length=32, augment=(), shuffle_buffer=4096, cache=True,
                  length_buckets=1),
        model=Model(backbone="small_cnn", backbone_weights="none", embedding_size=128,
                    lstm_units=256, lstm_dropout=0.0, embedding_norm=True, attention_size=64,
                    image_first=False, word_dropout=0.25),
        train=Train(epochs=12, batch_size=32, optimizer="adam", learning_rate=2e-3,
                    lr_schedule="cosine", warmup_epochs=0.5, clip_gradient_norm=5.0, label_smoothing=0.1,
                    freeze_backbone=False, fine_tune_epochs=0),
        decode=DecodeSettings(beam_size=3, max_length=20),
    )


def im2txt() -> Config:
    """python -m caption_app train --config im2txt --data DATA --run-dir RUN

    im2txt's training (tensorflow/models research/im2txt), in pair exposures:
    InceptionV3 at 299x299 from ImageNet weights, embedding and LSTM 512,
    dropout keep 0.7, uniform init 0.08, gradient clip 5.0. im2txt steps on 32
    image-caption pairs; here a batch is 6 images x 5 captions = 30 pairs at
    im2txt's rates (the backbone runs once per image; bench/RESULTS.md "im2txt
    preset: batch and schedule" shows it tracks a 32-pair batch, where 32
    images x 5 captions at a linearly scaled rate diverged). Phase 1: SGD 2.0
    halved every 8 passes for 54.6 passes (1M steps x 32 pairs over im2txt's
    586,363 COCO train pairs); phase 2: everything trainable at a constant
    0.0005 for 109.1 passes (2M more steps). Steps come from the manifest's
    counts; see docs/im2txt_preset.md for the cost and a shorter recipe.
    """
    return Config(
        name="im2txt",
        data=Data(image_size=299, captions_per_image=5, augment=("flip", "color")),
        model=Model(backbone="inception_v3", backbone_weights="imagenet", embedding_size=512,
                    lstm_units=512, lstm_dropout=0.3, init_scale=0.08),
        train=Train(epochs=54.6, batch_size=6, optimizer="sgd", learning_rate=2.0,
                    lr_schedule="staircase", lr_decay_epochs=8.0, lr_decay_factor=0.5,
                    clip_gradient_norm=5.0, freeze_backbone=True, fine_tune_epochs=109.1,
                    fine_tune_learning_rate=0.0005, fine_tune_lr_schedule="constant"),
        decode=DecodeSettings(beam_size=3, max_length=20),
    )


def tiny() -> Config:
    """python -m caption_app train --config tiny --data DATA --run-dir RUN

    A few-second smoke configuration, and the tests' one configuration
    (tests/conftest.py): 32x32 images, widths of 16, batch 3 (not a divisor
    of the test data's 40 train images, so the dropped remainder shows).
    """
    return Config(
        name="tiny",
        data=Data(image_size=32, max_caption_length=16, shuffle_buffer=64),
        model=Model(backbone="small_cnn", backbone_weights="none", embedding_size=16,
                    lstm_units=16, lstm_dropout=0.0),
        train=Train(epochs=1, batch_size=3, optimizer="adam", learning_rate=1e-2,
                    lr_schedule="constant", freeze_backbone=False),
        eval=Eval(batch_size=8),
        decode=DecodeSettings(beam_size=2, max_length=8),
    )


PRESETS: dict[str, Callable[[], Config]] = {"shapes": shapes, "im2txt": im2txt, "tiny": tiny}


def get_preset(name: str) -> Config:
    if name not in PRESETS:
        raise ValueError(f"unknown config {name!r}; choose one of: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()


def from_name_or_file(name: str) -> Config:
    """`--config NAME`: a preset's name, a JSON config file (such as an earlier run's
    RUN/config.json, old keys included) or a run dir (its config.json)."""
    if name in PRESETS:
        return PRESETS[name]()
    path = os.path.join(name, "config.json") if os.path.isdir(name) else name
    if not os.path.isfile(path):
        raise ValueError(f"--config {name!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor a JSON "
                         "config file (such as an earlier run's RUN/config.json)")
    try:
        return load(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"--config {path}: not a JSON config file ({err})") from None
    except (ValueError, TypeError, AttributeError) as err:  # unknown keys, a section that is not an object
        raise ValueError(f"--config {path}: not a config this version reads ({err})") from None


# ---------------------------------------------------------------------------
# Overrides.

def override(config: Config, assignments: list[str]) -> Config:
    """Applies `section.field=value` assignments, type-checked.

    Example: override(cfg, ["train.epochs=3", "model.backbone=inception_resnet_v2"]).
    Tuples take comma-separated values (`data.augment=flip,color`, or empty).
    """
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value, got {assignment!r}")
        section_name, _, field_name = key.strip().partition(".")
        if section_name == "eval" and field_name in _MOVED_TO_DECODE:
            section_name = "decode"
        sections = [f.name for f in dataclasses.fields(Config) if f.name != "name"]
        if section_name not in sections or not field_name:
            raise ValueError(f"unknown config key {key!r}; keys look like "
                             f"train.epochs (sections: {', '.join(sections)})")
        section = getattr(config, section_name)
        hints = typing.get_type_hints(type(section))
        if field_name not in hints:
            raise ValueError(f"unknown config key {key!r}; {section_name} has: {', '.join(hints)}")
        value = _parse(text.strip(), hints[field_name], key)
        config = dataclasses.replace(config, **{section_name: dataclasses.replace(section, **{field_name: value})})
    return config


def _parse(text: str, typ: Any, key: str) -> Any:
    try:
        if typ is bool:
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if typ is int:
            return int(text)
        if typ is float:
            return float(text)
        if typ is str:
            return text
        if typing.get_origin(typ) is tuple:
            item = typing.get_args(typ)[0]
            return tuple(item(s.strip()) for s in text.split(",") if s.strip())
    except ValueError as e:
        raise ValueError(f"--set {key}={text}: {e}") from None
    raise TypeError(f"--set {key}: unsupported type {typ}")


def _from_dict(cls, d: dict, where: str):
    hints = typing.get_type_hints(cls)
    unknown = set(d) - set(hints)
    if unknown:
        raise ValueError(f"unknown config keys {sorted(where + k for k in unknown)}")
    kwargs = {}
    for name, value in d.items():
        typ = hints[name]
        key = f"{where}{name}"
        if dataclasses.is_dataclass(typ):
            if not isinstance(value, dict):
                raise ValueError(f"{key} must be a section (a JSON object), got {value!r}")
            kwargs[name] = _from_dict(typ, value, f"{key}.")
        elif typing.get_origin(typ) is tuple:
            item = typing.get_args(typ)[0]
            if not isinstance(value, (list, tuple)) or not all(_is(v, item) for v in value):
                raise ValueError(f"{key} must be a list of {item.__name__} values, got {value!r}")
            kwargs[name] = tuple(value)
        elif not _is(value, typ):
            raise ValueError(f"{key} must be {_TYPE_WORDS.get(typ, typ)}, got {value!r}")
        elif typ is float:
            kwargs[name] = float(value)  # config.json files written when epochs were whole numbers
        else:
            kwargs[name] = value
    return cls(**kwargs)


_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _is(value, typ) -> bool:
    """Whether a JSON value has the config field's type (an integer is a float too; a bool is neither)."""
    if typ is bool:
        return isinstance(value, bool)
    if typ is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if typ is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if typ is str:
        return isinstance(value, str)
    return True


def save(config: Config, path: str) -> None:
    io_utils.write_text_atomic(path, config.to_json() + "\n")


def load(path: str) -> Config:
    return Config.from_dict(io_utils.read_json(path))
