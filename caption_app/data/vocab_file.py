"""vocab.txt's format, `word count` per line, parsed without TensorFlow.

`Vocabulary.load` (caption_app/data/vocabulary.py) reads vocabularies through
`parse`; a LiteRT package (export/litert.py) ships a copy of this module for
its runner, which imports no TensorFlow.
"""

from __future__ import annotations


def parse(text: str, path: str) -> tuple[list[str], list[int]]:
    """A vocabulary file's text -> (words, counts), in file order; empty lines are skipped.

    Raises:
      ValueError: a line that is not `word count` (naming `path` and the line number).
    """
    words, counts = [], []
    for line_no, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if not line:
            continue
        word, _, count = line.rpartition(" ")
        if not word or not count.isdigit():
            raise ValueError(f"{path}:{line_no}: expected `word count`, got {line!r}")
        words.append(word)
        counts.append(int(count))
    return words, counts
