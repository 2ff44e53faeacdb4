"""The one vocabulary: caption normalization, tokenization, word <-> id.

`tfrecords_tools` builds it from the train split's captions and writes
`vocab.txt` (one `word count` per line, most frequent first, like im2txt's
`word_counts.txt`); the input pipeline, evaluation, captioning and export load
it from there. Tokenization runs in-graph with tensorflow-text, so the records
hold raw captions and the converter counts words with the very same ops the
pipeline uses.

Ids: 0 `<pad>`, 1 `<start>`, 2 `<end>`, 3 `<unk>`, then the words of
`vocab.txt` in file order. A word `<unused_N>` is a placeholder: an id the
model has a row for but no word (an imported im2txt model's ids beyond its
word list, caption_app/runs/im2txt_import.py); it decodes as `<unk>`, as im2txt's
`id_to_word` does, and no caption word maps to it (the tokenizer splits `<`,
`_` and `>` off).
"""

from __future__ import annotations

import collections
import dataclasses
import os
from typing import Iterable, Iterator, Sequence

import tensorflow as tf
import tensorflow_text as tf_text

from caption_app import io_utils
from caption_app.data import vocab_file

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIAL_TOKENS = (PAD, START, END, UNK)
PAD_ID, START_ID, END_ID, UNK_ID = 0, 1, 2, 3
PLACEHOLDER = "<unused_{}>"  # an id with a model row but no word; decodes as UNK


def is_placeholder(token: str) -> bool:
    return token.startswith("<unused_") and token.endswith(">")


# Everything that is not a letter, digit or apostrophe splits words.
_PUNCTUATION = r"[^\p{L}\p{N}'\s]"


@dataclasses.dataclass(frozen=True)
class TokenizerSettings:
    """How raw captions become words; saved in the manifest."""

    lowercase: bool = True
    strip_punctuation: bool = True
    tokenizer: str = "whitespace"  # tensorflow_text.WhitespaceTokenizer

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TokenizerSettings":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown tokenizer settings {sorted(unknown)} in manifest")
        settings = cls(**d)
        if settings.tokenizer != "whitespace":
            raise ValueError(f"tokenizer {settings.tokenizer!r} is not supported; use 'whitespace'")
        return settings


def tokenize(captions: tf.Tensor, settings: TokenizerSettings = TokenizerSettings()) -> tf.RaggedTensor:
    """Normalizes and splits captions, in-graph.

    Args:
      captions: [n] string, raw UTF-8 captions.
    Returns:
      [n, (words)] string ragged tensor.
    """
    captions = tf.convert_to_tensor(captions, tf.string)
    if settings.lowercase:
        captions = tf_text.case_fold_utf8(captions)
    if settings.strip_punctuation:
        captions = tf.strings.regex_replace(captions, _PUNCTUATION, " ")
    return tf_text.WhitespaceTokenizer().tokenize(captions)


def split_words(captions: Iterable[str], settings: TokenizerSettings = TokenizerSettings(),
                chunk_size: int = 65536) -> Iterator[list[str]]:
    """The words of each caption, in order: the in-graph tokenizer run eagerly in chunks."""
    chunk: list[str] = []

    def flush():
        words = tokenize(tf.constant(chunk), settings).to_list()
        chunk.clear()
        return ([w.decode("utf-8") for w in caption] for caption in words)

    for caption in captions:
        chunk.append(caption)
        if len(chunk) >= chunk_size:
            yield from flush()
    if chunk:
        yield from flush()


def count_words(captions: Iterable[str], settings: TokenizerSettings = TokenizerSettings(),
                chunk_size: int = 65536) -> collections.Counter:
    """Counts the words of many captions with the in-graph tokenizer."""
    counts: collections.Counter = collections.Counter()
    for words in split_words(captions, settings, chunk_size):
        counts.update(words)
    return counts


class Vocabulary:
    """Words with their train-split counts, and the id mapping.

    Args:
      words: the words, most frequent first (special tokens excluded).
      counts: their counts, same order.
    """

    def __init__(self, words: Sequence[str], counts: Sequence[int] | None = None):
        words = list(words)
        clash = set(words) & set(SPECIAL_TOKENS)
        if clash:
            raise ValueError(f"vocabulary words {sorted(clash)} collide with special tokens")
        if len(set(words)) != len(words):
            raise ValueError("vocabulary has duplicate words")
        self.words = words
        self.counts = list(counts) if counts is not None else [0] * len(words)
        self.tokens = list(SPECIAL_TOKENS) + words  # id -> token
        self._ids = {t: i for i, t in enumerate(self.tokens)}
        self._texts = [UNK if is_placeholder(t) else t for t in self.tokens]  # id -> what it decodes as

    @classmethod
    def build(cls, counts: collections.Counter, min_word_count: int = 4) -> "Vocabulary":
        """Keeps words seen at least `min_word_count` times, most frequent first
        (ties in alphabetical order, so the file is deterministic)."""
        kept = sorted(((w, c) for w, c in counts.items() if c >= min_word_count),
                      key=lambda wc: (-wc[1], wc[0]))
        return cls([w for w, _ in kept], [c for _, c in kept])

    def save(self, path: str) -> None:
        tmp = path + ".tmp"
        with tf.io.gfile.GFile(tmp, "w") as f:
            for word, count in zip(self.words, self.counts):
                f.write(f"{word} {count}\n")
        tf.io.gfile.rename(tmp, path, overwrite=True)

    @classmethod
    def load(cls, path: str) -> "Vocabulary":
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(f"vocabulary file {path} does not exist; "
                                    "convert a dataset with `python -m tfrecords_tools` first")
        try:
            text = io_utils.read_small_file(path, "vocabulary file").decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"vocabulary file {path} is not UTF-8 text ({err})") from None
        return cls(*vocab_file.parse(text, path))

    @property
    def size(self) -> int:
        """Number of ids, special tokens included."""
        return len(self.tokens)

    def __len__(self) -> int:
        return self.size

    def word_to_id(self, word: str) -> int:
        return self._ids.get(word, UNK_ID)

    def id_to_word(self, i: int) -> str:
        return self._texts[i]

    def has_word(self, word: str) -> bool:
        return word in self._ids

    def texts(self) -> list[str]:
        """id -> what it decodes as (`id_to_word` of every id)."""
        return list(self._texts)

    def encode(self, caption: str, settings: TokenizerSettings = TokenizerSettings()) -> list[int]:
        """`<start> words <end>` ids of one raw caption (eager helper)."""
        words = tokenize(tf.constant([caption]), settings)[0].numpy()
        return [START_ID] + [self.word_to_id(w.decode("utf-8")) for w in words] + [END_ID]

    def decode(self, ids: Iterable[int]) -> str:
        """Words of `ids` up to the first `<end>`, `<pad>`/`<start>` dropped."""
        out = []
        for i in ids:
            i = int(i)
            if i == END_ID:
                break
            if i in (PAD_ID, START_ID):
                continue
            out.append(self._texts[i])
        return " ".join(out)

    def lookup_table(self) -> tf.lookup.StaticHashTable:
        """In-graph word -> id table; unknown words map to `<unk>`."""
        keys = tf.constant(self.tokens, tf.string)
        values = tf.range(self.size, dtype=tf.int64)
        return tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(keys, values), default_value=UNK_ID)

    def ids_to_words(self, ids: tf.Tensor) -> tf.Tensor:
        """In-graph: [..., time] int ids -> [..., time] string, each position's word, "" from `<end>` on
        and for `<pad>`/`<start>` (the words `ids_to_text` joins; `<unk>` stays visible)."""
        ids = tf.cast(ids, tf.int32)
        is_end = tf.cast(tf.equal(ids, END_ID), tf.int32)
        before_end = tf.equal(tf.cumsum(is_end, axis=-1), 0)
        keep = tf.logical_and(before_end, ids >= UNK_ID)
        return tf.where(keep, tf.gather(tf.constant(self._texts), ids), "")

    def ids_to_text(self, ids: tf.Tensor) -> tf.Tensor:
        """In-graph decoding: [..., time] int ids -> [...] string, cut at `<end>`,
        `<pad>`/`<start>` dropped (`<unk>` stays visible). Core TF ops only (usable in serving graphs)."""
        words = self.ids_to_words(ids)
        text = tf.strings.reduce_join(words, axis=-1, separator=" ")
        # Collapse the separators left by dropped tokens.
        text = tf.strings.regex_replace(text, " +", " ")
        return tf.strings.strip(text)


VOCAB_FILE = "vocab.txt"  # the vocabulary's file name in a data dir, a run dir and an export's assets


def vocab_path(data_dir: str) -> str:
    return os.path.join(data_dir, VOCAB_FILE)
