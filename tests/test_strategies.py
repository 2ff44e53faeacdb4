"""No-repeat n-grams against a plain-Python reference, alone and in beam search."""

import numpy as np
import pytest
import tensorflow as tf

from caption_app.inference.beam_search import beam_search
from caption_app.inference.ngram_blocking import block_repeated_ngrams
from tests.test_beam_search import assert_matches, markov_step, random_log_table, reference_beam_search

NEG_INF = float("-inf")


def captions(result, image=0):
    """Image `image`'s captions as tuples of ids, <end> included."""
    return [tuple(r[:n].tolist()) for r, n in zip(result.ids.numpy()[image], result.lengths.numpy()[image])]


def has_repeated_ngram(words, n):
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return len(grams) != len(set(grams))


# ---------------------------------------------------------------- no-repeat n-grams


def blocked_words(words, n):
    """The words that would complete an n-gram already in `words` (plain Python)."""
    if not n or len(words) < n:
        return set()
    tail = tuple(words[len(words) - n + 1:]) if n > 1 else ()
    return {words[j + n - 1] for j in range(len(words) - n + 1) if tuple(words[j:j + n - 1]) == tail}


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_block_repeated_ngrams_matches_python(n):
    rng = np.random.default_rng(n)
    rows, t_max, vocab = 12, 9, 5
    seq = rng.integers(0, 3, (rows, t_max)).astype(np.int32)  # few distinct words: many repeats
    log_probs = rng.normal(size=(rows, vocab)).astype(np.float32)
    for length in range(t_max + 1):
        visible = np.where(np.arange(t_max) < length, seq, 0)  # the searches keep 0 after the emitted words
        got = block_repeated_ngrams(tf.constant(log_probs), tf.constant(visible), tf.constant(length), n).numpy()
        for r in range(rows):
            expected = log_probs[r].copy()
            expected[list(blocked_words(list(visible[r, :length]), n))] = NEG_INF
            np.testing.assert_array_equal(got[r], expected)
    assert block_repeated_ngrams(tf.constant(log_probs), tf.constant(seq), 5, 0) is not None


def ngram_step_py(table, n):
    """A Python step for `reference_beam_search` that blocks repeated n-grams: its state is the ids fed so far."""
    def step(prev, fed):
        fed = fed + (prev,)
        log_probs = table[prev].astype(np.float64).copy()
        for w in blocked_words(list(fed[1:]), n):
            log_probs[w] = NEG_INF
        return log_probs, fed

    return step


@pytest.mark.parametrize("seed", [50, 51, 52])
@pytest.mark.parametrize("beam,n,max_length,words", [(1, 1, 6, 0), (2, 2, 8, 0), (3, 2, 8, 2), (3, 3, 9, 0)])
def test_no_repeat_beam_search_matches_python_reference(seed, beam, n, max_length, words):
    table = random_log_table(seed, 6)
    table[:, 2] -= 2.5  # a rare <end>: long captions, so there is something to repeat
    expected = reference_beam_search(ngram_step_py(table, n), (), start_id=1, end_id=2, beam_size=beam,
                                     max_length=max_length, alpha=0.0, num_results=beam, words_per_beam=words)
    result = beam_search(markov_step(table), tf.zeros([1, 1]), start_id=1, end_id=2, beam_size=beam,
                         max_length=max_length, words_per_beam=words, no_repeat_ngram=n)
    assert_matches(result, 0, expected, beam, max_length)
    for words_ in captions(result):
        assert not has_repeated_ngram(words_, n)
