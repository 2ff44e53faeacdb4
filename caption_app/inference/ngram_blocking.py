"""No-repeat n-grams: the one in-graph rule that keeps a caption from repeating a phrase of its own.

Every strategy (beam, greedy, sample) calls `block_repeated_ngrams` on a step's
log-probabilities before it chooses, so "a dog a dog a dog" cannot happen with
n = 2. Core ops only (slices, comparisons, one segment sum), like the searches.
"""

from __future__ import annotations

import tensorflow as tf

_NEG_INF = float("-inf")


def block_repeated_ngrams(log_probs: tf.Tensor, seq: tf.Tensor, length: tf.Tensor, n: int) -> tf.Tensor:
    """Sets to -inf every word that would complete an n-gram already in its row's words.

    The row's words are `seq[:, :length]` (the words emitted after `<start>`).
    A word w is blocked when the last n - 1 words followed by w occur earlier
    in them; for n = 1 every word already emitted is blocked. Rows with fewer
    than n words block nothing. The work is O(rows * time * n) plus one
    [rows, vocab] scatter, never a [rows, time, vocab] one-hot.

    Args:
      log_probs: [rows, vocab] float, the next word's scores.
      seq: [rows, time] int32, each row's words; the static `time` bounds
        where n-grams can start.
      length: int32 scalar, the words emitted so far (the same for every row:
        the searches advance all rows together).
      n: the n-gram size; 0 returns `log_probs` unchanged.

    Returns:
      `log_probs` with the blocked entries -inf.
    """
    if n <= 0:
        return log_probs
    t_max = seq.shape[1]
    starts = t_max - n + 1  # where an n-gram can start in seq (static)
    if starts <= 0:
        return log_probs
    rows, vocab = tf.shape(log_probs)[0], tf.shape(log_probs)[1]
    # match[r, j]: the n-gram starting at j lies inside the emitted words, and its first n - 1
    # words equal the row's last n - 1 words (positions length - n + 1 ... length - 1).
    inside = tf.range(starts) + n <= length  # [starts]
    match = tf.broadcast_to(inside[None, :], tf.stack([rows, starts]))  # [rows, starts]
    for i in range(n - 1):  # n is small and static; the rows and positions are vectorized
        tail = tf.gather(seq, tf.maximum(length - n + 1 + i, 0), axis=1)  # [rows]
        match = tf.logical_and(match, tf.equal(seq[:, i:i + starts], tail[:, None]))
    completes = seq[:, n - 1:n - 1 + starts]  # [rows, starts], the word each match would repeat
    segment = tf.range(rows)[:, None] * vocab + completes  # [rows, starts]
    hits = tf.math.unsorted_segment_sum(tf.cast(match, tf.int32), segment, rows * vocab)  # [rows * vocab]
    blocked = tf.reshape(hits, tf.shape(log_probs)) > 0  # [rows, vocab]
    return tf.where(blocked, tf.constant(_NEG_INF, log_probs.dtype), log_probs)
