"""The read-only loader of a trained run dir: its config, vocabulary, tensor sizes, manifest and restored model.

The one load path of evaluate, caption, the Python API and export (through
caption_app/inference/captioner.py). RUN/vocab.txt is checked against the
fingerprint's vocabulary hash.
"""

from __future__ import annotations

import os

import tensorflow as tf

from caption_app import config as config_lib
from caption_app import io_utils
from caption_app.config import Config, ConfigError
from caption_app.data import manifest as manifest_lib
from caption_app.data.pipeline import TensorSizes
from caption_app.data.vocabulary import Vocabulary
from caption_app.model import show_and_tell
from caption_app.runs.checkpoints import checkpoint_dir, checkpoint_paths, restore_newest
from caption_app.runs.layout import (CONFIG, OLD_TENSOR_SIZES, TENSOR_SIZES, VOCAB, check_config_matches,
                                     check_vocab, fingerprint)


def load_config(run_dir: str) -> Config:
    """RUN/config.json, read and checked: every command reads a run's config here.

    Raises:
      FileNotFoundError: not a run dir.
      ConfigError: one line naming the file and the key: not JSON, an unknown key, a value of
        the wrong type or out of range, or no decode settings (a run's config.json has them).
    """
    path = os.path.join(run_dir, CONFIG)
    if not io_utils.exists(path):
        raise FileNotFoundError(f"{run_dir} is not a run dir (no {CONFIG}); train into it first")
    try:
        raw = io_utils.read_json(path)
    except (ValueError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not a JSON config ({err}); restore the run's config.json") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} is not a config (a JSON object); restore the run's config.json")
    old_eval = raw.get("eval") if isinstance(raw.get("eval"), dict) else {}
    if "decode" not in raw and "beam_size" not in old_eval:  # the run's own decode settings are gone
        raise ConfigError(f"{path} has no decode section (the run's beam size, length, ...); restore it, or "
                          "add \"decode\": {} to decode with the defaults")
    try:
        config = Config.from_dict(raw).validate()
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    except (ValueError, TypeError, AttributeError) as err:
        raise ConfigError(f"{path}: {err}") from None
    return config


def load_tensor_sizes(run_dir: str) -> TensorSizes:
    """RUN/tensor_sizes.json, or RUN/shapes.json in a run dir written before the rename."""
    path = os.path.join(run_dir, TENSOR_SIZES)
    if not io_utils.exists(path) and io_utils.exists(os.path.join(run_dir, OLD_TENSOR_SIZES)):
        path = os.path.join(run_dir, OLD_TENSOR_SIZES)
    return TensorSizes(**io_utils.read_json(path))


def load_manifest(run_dir: str, data_dir: str | None = None) -> manifest_lib.Manifest:
    """The manifest of the data the run trained on (or of `data_dir`)."""
    if data_dir is None:
        path = os.path.join(run_dir, manifest_lib.MANIFEST)
        if not io_utils.exists(path):  # an imported run (caption_app/runs/im2txt_import.py) was trained elsewhere
            raise FileNotFoundError(f"{run_dir} has no {manifest_lib.MANIFEST} (it was not trained here); "
                                    "pass the data dir with --data")
        data_dir = io_utils.read_json(path)["data_dir"]
    return manifest_lib.load(data_dir)


def load_vocab(run_dir: str) -> Vocabulary:
    """RUN/vocab.txt, checked against the vocabulary hash of RUN/fingerprint.json (when there is one)."""
    path = os.path.join(run_dir, VOCAB)
    vocab = Vocabulary.load(path)
    check_vocab(run_dir, vocab, path)
    return vocab


def load_model(run_dir: str, checkpoint: str | None = None):
    """Rebuilds the run's model and restores a checkpoint: the newest that restores cleanly by
    default (damaged newer ones skipped with a note), or `checkpoint` (damaged: CheckpointError).

    The one load path of evaluate, caption and export. RUN/vocab.txt is checked
    against the fingerprint's vocabulary hash.

    Returns:
      (model, config, vocab, sizes, checkpoint path).
    """
    config = load_config(run_dir)
    vocab = load_vocab(run_dir)
    sizes = load_tensor_sizes(run_dir)
    # An edited config.json (say model.lstm_units) is reported as what it is, before any checkpoint is
    # blamed for not restoring into the wrong model.
    check_config_matches(run_dir, fingerprint(config, vocab, sizes))
    paths = [checkpoint] if checkpoint else checkpoint_paths(checkpoint_dir(run_dir))
    if not paths:
        raise FileNotFoundError(f"{run_dir} has no checkpoint yet; train first")
    # Inference in float32 whatever the training precision (the variables are float32 either way).
    model = show_and_tell.build_model(config, vocab.size, backbone_weights="none", precision="float32")

    def restore(path: str) -> None:
        tf.train.Checkpoint(model=model).restore(path).expect_partial().assert_existing_objects_matched()

    what = f"checkpoint {checkpoint}" if checkpoint else f"checkpoints of {run_dir}"
    path = restore_newest(paths, restore, what)
    return model, config, vocab, sizes, path
