"""Import TF-slim model-zoo checkpoints (Inception-v3 and -v4) into our Keras backbones.

    model.backbone_weights=/path/inception_v4.ckpt  -> import_slim_checkpoint(model, "inception_v4", path)

The checkpoints are the ones of the TF-slim model zoo (`inception_v4_2016_09_09.tar.gz`,
`inception_v3_2016_08_28.tar.gz`, the one im2txt starts from). They are read with
`tf.train.load_checkpoint`, which reads both the zoo's single-file V1 format and the
`.index` + `.data-*` V2 format.

Each network has one explicit map "slim variable name -> Keras variable" (`variable_map`).
The import checks it against the checkpoint before assigning anything: every
variable the backbone needs must be in the checkpoint, every checkpoint variable in
the network's scope must have a Keras weight (except the classifier heads, AuxLogits
and Logits, which the backbone leaves out), and the shapes must agree. Entries outside
the network's scope (`global_step`, TF2 bookkeeping) are ignored. Slim's batch norm has
no gamma (scale=False) and its convolutions no bias, so the Keras layers have neither.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Callable

import keras
import tensorflow as tf

from caption_app.model import inception_v4
from caption_app.errors import CaptionAppError

_ZOO = "http://download.tensorflow.org/models/"


class SlimImportError(CaptionAppError, ValueError):
    """A checkpoint that does not fit the backbone (names listed in the message)."""


@dataclasses.dataclass(frozen=True)
class SlimNetwork:
    scope: str  # the checkpoint's top-level variable scope
    ignored_scopes: tuple[str, ...]  # sub-scopes the backbone does not use (classifier heads)
    variable_map: Callable[[keras.Model], dict[str, keras.Variable]]
    archive_url: str  # where the model zoo publishes the checkpoint
    checkpoint_file: str  # the checkpoint's name inside the archive


# ---------------------------------------------------------------------------
# The maps: slim variable name -> Keras variable, one to one.

_BN_WEIGHTS = ("beta", "moving_mean", "moving_variance")  # slim BatchNorm variables (no gamma)


def inception_v4_variable_map(model: keras.Model) -> dict[str, keras.Variable]:
    """Our Inception-v4 (caption_app.model.inception_v4): layer names are the slim scopes.

    `InceptionV4/<scope>/weights` -> layer `<scope with . for />` kernel;
    `InceptionV4/<scope>/BatchNorm/<beta|moving_mean|moving_variance>` -> layer
    `<scope>.BatchNorm` variable of the same name. 149 convolutions x 4 = 596 variables.
    """
    out: dict[str, keras.Variable] = {}
    for layer in model.layers:
        for weight in layer.weights:
            try:
                name = inception_v4.slim_variable_name(layer.name, weight.name)
            except ValueError as e:
                raise SlimImportError(f"{model.name} is not caption_app's Inception-v4: {e}") from e
            _add(out, name, weight)
    return out


def v3_scopes() -> list[str]:
    """The 94 convolution scopes of slim's inception_v3_base, in the order slim creates them."""
    scopes = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"]
    branches: dict[str, list[list[str]]] = {}
    a = [["Conv2d_0a_1x1"], ["Conv2d_0a_1x1", "Conv2d_0b_5x5"],
         ["Conv2d_0a_1x1", "Conv2d_0b_3x3", "Conv2d_0c_3x3"], ["Conv2d_0b_1x1"]]
    branches["Mixed_5b"] = a
    # slim's own names in Mixed_5c (Branch_1 differs from 5b and 5d; the checkpoint has them so).
    branches["Mixed_5c"] = [["Conv2d_0a_1x1"], ["Conv2d_0b_1x1", "Conv_1_0c_5x5"], a[2], ["Conv2d_0b_1x1"]]
    branches["Mixed_5d"] = a
    branches["Mixed_6a"] = [["Conv2d_1a_1x1"], ["Conv2d_0a_1x1", "Conv2d_0b_3x3", "Conv2d_1a_1x1"]]
    b = [["Conv2d_0a_1x1"], ["Conv2d_0a_1x1", "Conv2d_0b_1x7", "Conv2d_0c_7x1"],
         ["Conv2d_0a_1x1", "Conv2d_0b_7x1", "Conv2d_0c_1x7", "Conv2d_0d_7x1", "Conv2d_0e_1x7"], ["Conv2d_0b_1x1"]]
    for block in "bcde":
        branches[f"Mixed_6{block}"] = b
    branches["Mixed_7a"] = [["Conv2d_0a_1x1", "Conv2d_1a_3x3"],
                            ["Conv2d_0a_1x1", "Conv2d_0b_1x7", "Conv2d_0c_7x1", "Conv2d_1a_3x3"]]
    c = ["Conv2d_0a_1x1", "Conv2d_0b_3x3", "Conv2d_0c_1x3", "Conv2d_0d_3x1"]
    branches["Mixed_7b"] = [["Conv2d_0a_1x1"], ["Conv2d_0a_1x1", "Conv2d_0b_1x3", "Conv2d_0b_3x1"], c,
                            ["Conv2d_0b_1x1"]]
    branches["Mixed_7c"] = [["Conv2d_0a_1x1"], ["Conv2d_0a_1x1", "Conv2d_0b_1x3", "Conv2d_0c_3x1"], c,
                            ["Conv2d_0b_1x1"]]
    for block, convs in branches.items():
        for i, names in enumerate(convs):
            scopes += [f"{block}/Branch_{i}/{name}" for name in names]
    return scopes


def inception_v3_variable_map(model: keras.Model) -> dict[str, keras.Variable]:
    """keras.applications' InceptionV3 (our `inception_v3` backbone), matched to slim's Inception-v3.

    Both networks create their 94 convolutions in the same order (block by
    block, branch by branch, as in the paper), so the i-th convolution Keras
    creates is the i-th scope of `v3_scopes()`. Keras numbers its unnamed
    layers in creation order (conv2d_N), which gives that order; each conv's
    batch norm is the layer it feeds. Every kernel shape is checked against
    the checkpoint by the import, and the reference test checks the numbers.
    """
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    scopes = v3_scopes()
    if len(convs) != len(scopes):
        raise SlimImportError(f"{model.name} has {len(convs)} convolutions; slim's Inception-v3 has {len(scopes)} "
                              "(is it keras.applications.InceptionV3?)")

    def creation_index(layer) -> int:
        match = re.fullmatch(r"conv2d(?:_(\d+))?", layer.name)
        if match is None:
            raise SlimImportError(f"unexpected layer name {layer.name!r} in {model.name}: the Inception-v3 map "
                                  "relies on Keras' creation-order names conv2d_N")
        return int(match.group(1) or 0)

    convs.sort(key=creation_index)
    first = creation_index(convs[0])
    if [creation_index(c) for c in convs] != list(range(first, first + len(convs))):
        raise SlimImportError(f"the convolutions of {model.name} are not numbered consecutively; cannot tell "
                              "their creation order")
    norm_of = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            norm_of[id(layer.input._keras_history.operation)] = layer
    out: dict[str, keras.Variable] = {}
    for scope, conv in zip(scopes, convs):
        bn = norm_of.get(id(conv))
        if bn is None or conv.use_bias or bn.scale or abs(bn.epsilon - 0.001) > 1e-9:
            raise SlimImportError(f"{conv.name} is not a conv (no bias) + batch norm (scale=False, epsilon 0.001) "
                                  "pair like slim's")
        _add(out, f"InceptionV3/{scope}/weights", conv.kernel)
        for name in _BN_WEIGHTS:
            _add(out, f"InceptionV3/{scope}/BatchNorm/{name}", getattr(bn, name))
    return out


def _add(out: dict, name: str, weight) -> None:
    if name in out:
        raise SlimImportError(f"two Keras weights map to the checkpoint variable {name}: {out[name].path} and "
                              f"{weight.path}")
    out[name] = weight


SLIM_NETWORKS: dict[str, SlimNetwork] = {
    "inception_v4": SlimNetwork("InceptionV4", ("AuxLogits", "Logits"), inception_v4_variable_map,
                                f"{_ZOO}inception_v4_2016_09_09.tar.gz", "inception_v4.ckpt"),
    "inception_v3": SlimNetwork("InceptionV3", ("AuxLogits", "Logits"), inception_v3_variable_map,
                                f"{_ZOO}inception_v3_2016_08_28.tar.gz", "inception_v3.ckpt"),
}


# ---------------------------------------------------------------------------
# Reading and importing.

def is_tf_checkpoint(path: str) -> bool:
    """Whether `path` is a TF checkpoint prefix (V2 `.index` + `.data-*`, or the zoo's V1 single file)."""
    if os.path.exists(path + ".index"):
        return True
    if path.endswith(".h5") or not os.path.exists(path):
        return False
    try:
        tf.train.load_checkpoint(path)
    except (tf.errors.OpError, ValueError):
        return False
    return True


@dataclasses.dataclass(frozen=True)
class ImportReport:
    loaded: int  # Keras variables assigned
    values: int  # numbers assigned
    ignored: tuple[str, ...]  # checkpoint entries not used (classifier heads, global_step, ...)


def _listing(title: str, items: list[str], limit: int = 10) -> str:
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"\n  {title} ({len(items)}): " + ", ".join(items[:limit]) + more


def import_slim_checkpoint(model: keras.Model, backbone: str, path: str) -> ImportReport:
    """Assigns the TF-slim checkpoint at `path` to backbone `model` (built by the registry).

    Args:
      model: the backbone `backbone` builds, any image size.
      backbone: a key of SLIM_NETWORKS.
      path: the checkpoint prefix, e.g. /data/inception_v4.ckpt.
    Raises:
      SlimImportError: nothing is assigned; the message lists the missing,
        unexpected and shape-mismatched variables.
    """
    if backbone not in SLIM_NETWORKS:
        raise SlimImportError(f"{path} is a TF checkpoint, but backbone {backbone} has no TF-slim importer; "
                              f"TF-slim checkpoints import into: {', '.join(sorted(SLIM_NETWORKS))}")
    network = SLIM_NETWORKS[backbone]
    try:
        reader = tf.train.load_checkpoint(path)
    except (tf.errors.OpError, ValueError) as e:
        raise SlimImportError(f"cannot read the TF checkpoint {path}: {e}") from e
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    prefix = network.scope + "/"
    ignored = sorted(k for k in shapes if not k.startswith(prefix)
                     or k[len(prefix):].split("/")[0] in network.ignored_scopes)
    needed = set(shapes) - set(ignored)
    if not needed:
        scopes = sorted({k.split("/")[0] for k in shapes})
        raise SlimImportError(f"{path} has no {prefix} variables (its top-level scopes: {', '.join(scopes)}); "
                              f"{backbone} needs TF-slim's {network.checkpoint_file} from {network.archive_url}")
    targets = network.variable_map(model)
    mapped = {id(v) for v in targets.values()}
    unmapped = [v.path for v in model.weights if id(v) not in mapped]
    if unmapped:  # a bug in a map, not in the user's file
        raise SlimImportError(f"the {backbone} map leaves Keras weights without a checkpoint variable: "
                              + ", ".join(unmapped[:10]))

    missing = sorted(set(targets) - needed)
    unexpected = sorted(needed - set(targets))
    mismatched = sorted(f"{k} {list(shapes[k])} vs Keras {list(targets[k].shape)} ({targets[k].path})"
                        for k in needed & set(targets) if tuple(shapes[k]) != tuple(targets[k].shape))
    mismatched += sorted(f"{k} has dtype {dtypes[k].name}" for k in needed & set(targets)
                         if not dtypes[k].is_floating)
    if missing or unexpected or mismatched:
        message = f"cannot import {path} into {backbone}:"
        if missing:
            message += _listing("needed but not in the checkpoint", missing)
        if unexpected:
            message += _listing(f"in the checkpoint's {prefix} scope but not in the backbone", unexpected)
        if mismatched:
            message += _listing("shape mismatch (checkpoint vs Keras)", mismatched)
        raise SlimImportError(message + f"\n  {backbone} expects TF-slim's {network.checkpoint_file} "
                                        f"({network.archive_url}).")
    values = 0
    for name, variable in targets.items():
        value = reader.get_tensor(name)
        variable.assign(value.astype(variable.dtype))
        values += value.size
    return ImportReport(loaded=len(targets), values=values, ignored=tuple(ignored))
