"""DecodeSettings: how captions are decoded by beam search, one object everywhere.

The run's config holds them (`Config.decode`, `--set decode.beam_size=5`);
`evaluate`, `caption`, the export and `beam_search` all take them from here,
checked by the one `check` and filled from the run's config by the one
`resolve`. The meaning of a value, the same for every command:

* `None` or `0` for beam size, max length or number of captions means "use
  the run's config" (the CLI flags default to None); for the number of
  captions the config's 0 means "as many as the beam size".
* Any other value must be valid: beam size, max length and number of captions
  positive integers, length normalization >= 0. A negative value is an error.
* More captions than the beam size is an error (beam search keeps
  `beam_size` finished captions), never silently clamped.
"""

from __future__ import annotations

import argparse
import dataclasses
from caption_app.errors import CaptionAppError


class DecodeSettingsError(CaptionAppError, ValueError):
    """A decode setting out of range (the message names the value and the flag)."""


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    """Beam-search settings.

    Attributes:
      beam_size: hypotheses kept alive (and finished) per image.
      max_length: the most words per caption, <end> included.
      length_normalization: alpha; score = log_prob / length ** alpha.
      num_captions: K, captions returned per image, <= beam_size; 0 in a
        config means "beam_size" (what `resolve` fills in).
      words_per_beam: > 0: each hypothesis continues with only its this many
        most probable words (im2txt's CaptionGenerator: the beam size; an
        imported im2txt run sets it); 0: with every word.
    """

    beam_size: int = 3
    max_length: int = 20  # words, <end> included
    length_normalization: float = 0.0  # score = log_prob / length ** alpha
    num_captions: int = 0  # K, captions per image; 0 = beam_size
    words_per_beam: int = 0  # continue each hypothesis with its this many best words; 0 = every word

    def check(self) -> "DecodeSettings":
        """Returns self when every value is in range (num_captions resolved); raises DecodeSettingsError."""
        for name in ("beam_size", "max_length", "num_captions"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise DecodeSettingsError(f"{name} must be a positive integer, got {value!r} "
                                          f"(--{name.replace('_', '-')})")
        if self.num_captions > self.beam_size:
            raise DecodeSettingsError(
                f"--num-captions {self.num_captions} exceeds --beam-size {self.beam_size} (num_captions="
                f"{self.num_captions} exceeds beam_size={self.beam_size}): beam search keeps beam_size finished "
                "captions; raise --beam-size or lower --num-captions")
        if not isinstance(self.words_per_beam, int) or isinstance(self.words_per_beam, bool) \
                or self.words_per_beam < 0:
            raise DecodeSettingsError(f"words_per_beam must be an integer >= 0 (0: every word), got "
                                      f"{self.words_per_beam!r} (--set decode.words_per_beam=...)")
        if not self.length_normalization >= 0:  # also rejects NaN
            raise DecodeSettingsError("length_normalization must be >= 0 (the beam search's early stop assumes it), "
                                      f"got {self.length_normalization!r} (--length-normalization)")
        return self

    def resolve(self, *, beam_size: int | None = None, max_length: int | None = None,
                length_normalization: float | None = None, num_captions: int | None = None) -> "DecodeSettings":
        """These settings (a run's `config.decode`) with the given values in their place, checked.

        None or 0 for beam_size, max_length and num_captions keeps the run's
        value (num_captions then: the run's, or the beam size when that is 0);
        None for length_normalization keeps the run's. Negative or otherwise
        invalid values raise DecodeSettingsError.
        """
        beam_size = beam_size or self.beam_size
        settings = DecodeSettings(
            beam_size=beam_size,
            max_length=max_length or self.max_length,
            length_normalization=self.length_normalization if length_normalization is None else length_normalization,
            num_captions=num_captions or self.num_captions or beam_size,
            words_per_beam=self.words_per_beam)
        return settings.check()


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
