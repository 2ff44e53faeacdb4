"""DecodeSettings: how captions are decoded, one object everywhere.

The run's config holds them (`Config.decode`, `--set decode.beam_size=5`);
`evaluate`, `caption`, the export and the strategies all take them from here,
checked by the one `check`, filled from the run's config by the one `resolve`
and turned into a decoding strategy (caption_app/inference/strategies.py) by
the one `to_strategy`. The meaning of a value, the same for every command:

* `None` or `0` for beam size, max length or number of captions means "use
  the run's config" (the CLI flags default to None); for the number of
  captions the config's 0 means the strategy's own count: the beam size for
  beam search, 1 for greedy, `DEFAULT_NUM_SAMPLES` for sampling.
* `None` for the other values (strategy, length normalization, temperature,
  top-k, top-p, seed, no-repeat n-gram) means "use the run's config"; `0` is a
  value there (top-k 0 and no-repeat n-gram 0 are "off").
* Any other value must be valid: beam size, max length and number of captions
  positive integers, length normalization >= 0, temperature > 0, top-k >= 0,
  top-p in (0, 1], no-repeat n-gram >= 0. A negative value is an error.
* More captions than the beam size is an error (beam search keeps
  `beam_size` finished captions), never silently clamped; so is more than one
  caption with greedy decoding.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import TYPE_CHECKING

from caption_app.errors import CaptionAppError

if TYPE_CHECKING:  # strategies imports this module; `to_strategy` imports it when called
    from caption_app.inference.strategies import Strategy

STRATEGY_NAMES = ("beam", "greedy", "sample")
DEFAULT_NUM_SAMPLES = 5  # captions drawn per image by the "sample" strategy when num_captions is 0


class DecodeSettingsError(CaptionAppError, ValueError):
    """A decode setting out of range (the message names the value and the flag)."""


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    """Decoding settings: the strategy and its parameters.

    Attributes:
      beam_size: hypotheses kept alive (and finished) per image (beam only).
      max_length: the most words per caption, <end> included.
      length_normalization: alpha; score = log_prob / length ** alpha.
      num_captions: K, captions returned per image: beam: <= beam_size;
        greedy: 1; sample: the number of samples drawn. 0 in a config means
        the strategy's own count (what `resolve` fills in).
      words_per_beam: > 0: each hypothesis continues with only its this many
        most probable words (im2txt's CaptionGenerator: the beam size; an
        imported im2txt run sets it); 0: with every word (beam only).
      strategy: "beam", "greedy" or "sample".
      temperature: sample: log-probabilities are divided by it (< 1 sharper,
        > 1 flatter) before filtering and drawing.
      top_k: sample: draw among the k most probable words only; 0: off.
      top_p: sample: draw among the smallest set of most probable words whose
        (tempered) probability reaches top_p; 1: off.
      seed: sample: the seed of every image that is not given its own; the
        draws depend only on (seed, sample, step, word), not on the batch.
      no_repeat_ngram: n > 0: no caption repeats an n-gram of its own words
        (every strategy); 0: off.
    """

    beam_size: int = 3
    max_length: int = 20  # words, <end> included
    length_normalization: float = 0.0  # score = log_prob / length ** alpha
    num_captions: int = 0  # K, captions per image; 0 = the strategy's count
    words_per_beam: int = 0  # continue each hypothesis with its this many best words; 0 = every word
    # Added with the strategies; old config.json files and exports' "decode" dicts lack them, and
    # these defaults are the beam search those files meant.
    strategy: str = "beam"
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    seed: int = 0
    no_repeat_ngram: int = 0  # 0: off

    def check(self) -> "DecodeSettings":
        """Returns self when every value is in range (num_captions resolved); raises DecodeSettingsError."""
        if self.strategy not in STRATEGY_NAMES:
            raise DecodeSettingsError(f"strategy must be one of {', '.join(STRATEGY_NAMES)}, got "
                                      f"{self.strategy!r} (--strategy)")
        for name in ("beam_size", "max_length", "num_captions"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise DecodeSettingsError(f"{name} must be a positive integer, got {value!r} "
                                          f"(--{name.replace('_', '-')})")
        if self.strategy == "beam" and self.num_captions > self.beam_size:
            raise DecodeSettingsError(
                f"--num-captions {self.num_captions} exceeds --beam-size {self.beam_size} (num_captions="
                f"{self.num_captions} exceeds beam_size={self.beam_size}): beam search keeps beam_size finished "
                "captions; raise --beam-size or lower --num-captions")
        if self.strategy == "greedy" and self.num_captions != 1:
            raise DecodeSettingsError(
                f"--num-captions {self.num_captions} with --strategy greedy: greedy decoding gives one caption "
                "per image; use --num-captions 1, or --strategy beam or sample for several")
        if not _is_int(self.words_per_beam) or self.words_per_beam < 0:
            raise DecodeSettingsError(f"words_per_beam must be an integer >= 0 (0: every word), got "
                                      f"{self.words_per_beam!r} (--set decode.words_per_beam=...)")
        if not self.length_normalization >= 0:  # also rejects NaN
            raise DecodeSettingsError("length_normalization must be >= 0 (the beam search's early stop assumes it), "
                                      f"got {self.length_normalization!r} (--length-normalization)")
        if not _is_number(self.temperature) or not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise DecodeSettingsError(f"temperature must be a finite number > 0, got {self.temperature!r} "
                                      "(--temperature)")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise DecodeSettingsError(f"top_k must be an integer >= 0 (0: off), got {self.top_k!r} (--top-k)")
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:  # NaN fails the comparison
            raise DecodeSettingsError(f"top_p must be in (0, 1] (1: off), got {self.top_p!r} (--top-p)")
        if not _is_int(self.seed):
            raise DecodeSettingsError(f"seed must be an integer, got {self.seed!r} (--seed)")
        if not _is_int(self.no_repeat_ngram) or self.no_repeat_ngram < 0:
            raise DecodeSettingsError(f"no_repeat_ngram must be an integer >= 0 (0: off), got "
                                      f"{self.no_repeat_ngram!r} (--no-repeat-ngram)")
        return self

    def resolve(self, *, beam_size: int | None = None, max_length: int | None = None,
                length_normalization: float | None = None, num_captions: int | None = None,
                strategy: str | None = None, temperature: float | None = None, top_k: int | None = None,
                top_p: float | None = None, seed: int | None = None,
                no_repeat_ngram: int | None = None) -> "DecodeSettings":
        """These settings (a run's `config.decode`) with the given values in their place, checked.

        None or 0 for beam_size, max_length and num_captions keeps the run's
        value (num_captions then: the run's, or the strategy's own count when
        that is 0; a strategy other than the run's does not inherit the run's
        count, which meant something else there). None for the other values
        keeps the run's. Invalid values raise DecodeSettingsError.
        """
        def given(value, current):
            return current if value is None else value

        beam_size = beam_size or self.beam_size
        strategy = given(strategy, self.strategy)
        run_count = self.num_captions if strategy == self.strategy else 0
        settings = dataclasses.replace(
            self,
            beam_size=beam_size,
            max_length=max_length or self.max_length,
            length_normalization=given(length_normalization, self.length_normalization),
            num_captions=num_captions or run_count or _default_count(strategy, beam_size),
            strategy=strategy,
            temperature=given(temperature, self.temperature),
            top_k=given(top_k, self.top_k),
            top_p=given(top_p, self.top_p),
            seed=given(seed, self.seed),
            no_repeat_ngram=given(no_repeat_ngram, self.no_repeat_ngram))
        return settings.check()

    def to_strategy(self) -> "Strategy":
        """The decoding strategy these settings describe (checked; num_captions 0: the strategy's count).

        The one place that maps settings to a strategy object; `max_length` is
        not part of it (it is an argument of `Strategy.search`).
        """
        from caption_app.inference import strategies  # it imports this module

        count = self.num_captions or _default_count(self.strategy, self.beam_size)
        settings = dataclasses.replace(self, num_captions=count).check()
        common = dict(length_normalization=settings.length_normalization,
                      no_repeat_ngram=settings.no_repeat_ngram)
        if settings.strategy == "beam":
            return strategies.Beam(beam_size=settings.beam_size, num_results=count,
                                   words_per_beam=settings.words_per_beam, **common)
        if settings.strategy == "greedy":
            return strategies.Greedy(**common)
        return strategies.Sample(num_samples=count, temperature=settings.temperature, top_k=settings.top_k,
                                 top_p=settings.top_p, seed=settings.seed, **common)


def _default_count(strategy: str, beam_size: int) -> int:
    """Captions per image when num_captions is 0."""
    return {"beam": beam_size, "greedy": 1, "sample": DEFAULT_NUM_SAMPLES}.get(strategy, beam_size)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def add_arguments(parser: argparse.ArgumentParser, *, num_captions: bool = True) -> None:
    """The decode-settings flags of `caption`, `evaluate` and `export`, spelled once.

    Each defaults to None (or 0): the run's `decode.*` value, filled in by `resolve`.
    """
    parser.add_argument("--beam-size", type=int, default=None, help="default (or 0): the run's decode.beam_size")
    parser.add_argument("--max-length", type=int, default=None,
                        help="words, <end> included (default or 0: the run's decode.max_length)")
    parser.add_argument("--length-normalization", type=float, default=None,
                        help="alpha in score = log p / length**alpha (default: the run's decode.length_normalization)")
    if num_captions:
        parser.add_argument("--num-captions", type=int, default=None,
                            help="captions per image, at most the beam size (default or 0: the beam size)")
    parser.add_argument("--strategy", choices=STRATEGY_NAMES, default=None,
                        help="beam search, greedy (one caption) or sampling (default: the run's decode.strategy)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="sample: divide the log-probabilities by this, > 0 (default: the run's "
                             "decode.temperature)")
    parser.add_argument("--top-k", type=int, default=None,
                        help="sample: draw among the k most probable words, 0: all (default: the run's decode.top_k)")
    parser.add_argument("--top-p", type=float, default=None,
                        help="sample: draw among the most probable words whose mass reaches p, in (0, 1], 1: all "
                             "(default: the run's decode.top_p)")
    parser.add_argument("--seed", type=int, default=None,
                        help="sample: the seed of the draws; the same image and seed give the same captions "
                             "(default: the run's decode.seed)")
    parser.add_argument("--no-repeat-ngram", type=int, default=None,
                        help="n > 0: no caption repeats an n-gram of its own, 0: off (default: the run's "
                             "decode.no_repeat_ngram)")
