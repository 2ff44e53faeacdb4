"""The decoder interface and its registry: what the training step, the searches and the export need from a caption decoder.

A decoder is a Keras layer that turns the image encoder's output and caption
ids into next-word logits, both teacher-forced (training, perplexity) and one
step at a time (every search strategy, the export's `encode_image` /
`decode_step`). Its decoding state is a list of float tensors [N, width]
whose names and widths the decoder declares (`state_sizes`); nothing outside
the decoder knows what they mean, so the search (caption_app/inference/),
the export's step signatures, the warmup requests, the run dir's fingerprint
and `assets/config.json` all ask this interface.

    decoder(image_input [B, W], input_ids [B, C, T]) -> logits [B, C, T, V]   teacher-forced
    decoder.initial_state(image_input [N, W])        -> state, a list of [N, width_i]
    decoder.step(ids [N], state)                     -> (logits [N, V], new state)
    decoder.state_sizes()                            -> {name_i: width_i}, in state order
    decoder.attends                                  -> whether a step attends over the image's cells; then
    decoder.step_with_attention(ids [N], state)      -> (logits [N, V], new state, weights [N, L]), each
                                                        row summing to 1 over the L cells

Adding a decoder type (say a Transformer) is one new module with a subclass
of `Decoder` decorated `@register("name")`, and its import in `_load()`
below; `model.decoder=name` then selects it, the fingerprint records it (and
whatever its `fingerprint` says decides its variables), and the export's step
signatures carry the state it declares.
"""

from __future__ import annotations

from typing import Callable

import keras

DECODERS: dict[str, type["Decoder"]] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: `model.decoder=name` builds this decoder."""

    def add(cls: type) -> type:
        cls.decoder_name = name
        DECODERS[name] = cls
        return cls

    return add


class Decoder(keras.layers.Layer):
    """The interface every decoder implements (see the module docstring for the shapes)."""

    decoder_name = ""

    @classmethod
    def from_config_model(cls, model, vocab_size: int, **kwargs) -> "Decoder":
        """The decoder a run's `config.model` describes."""
        raise NotImplementedError

    @classmethod
    def fingerprint(cls, model) -> dict:
        """The `config.model` values (besides backbone, image size, embedding size, vocabulary) that
        decide this decoder's variables: a run dir refuses checkpoints whose values differ."""
        raise NotImplementedError

    def state_sizes(self) -> dict[str, int]:
        """The decoding state's tensors, by the names the export gives them, and their widths, in state order."""
        raise NotImplementedError

    def initial_state(self, image_input):
        """The image encoder's output [N, W] -> the state before the first word (a list, `state_sizes` order)."""
        raise NotImplementedError

    def step(self, ids, state):
        """ids [N] int, state -> (logits [N, V] float32, the new state)."""
        raise NotImplementedError

    @property
    def attends(self) -> bool:
        """Whether each step attends over the image's cells (then `step_with_attention` gives the weights)."""
        return False

    def step_with_attention(self, ids, state):
        """`step`, also giving the step's attention weights [N, L] over the image's L cells (each row sums
        to 1): the weights behind that very step's logits. Only for a decoder that `attends`."""
        raise NotImplementedError(f"the {self.decoder_name!r} decoder does not attend over the image")


def _load() -> None:
    """Imports the modules that register decoders (a new decoder type adds its import here)."""
    from caption_app.model import lstm_decoder  # noqa: F401


def names() -> tuple[str, ...]:
    _load()
    return tuple(sorted(DECODERS))


def get(name: str) -> type[Decoder]:
    """The decoder class registered as `name`; ValueError listing the names otherwise."""
    _load()
    if name not in DECODERS:
        raise ValueError(f"unknown decoder {name!r} (model.decoder); choose one of: {', '.join(sorted(DECODERS))}")
    return DECODERS[name]


def build(model, vocab_size: int, **kwargs) -> Decoder:
    """The decoder of `config.model` (its `decoder` name, "lstm" for configs written before the key existed)."""
    return get(model.decoder).from_config_model(model, vocab_size, **kwargs)
