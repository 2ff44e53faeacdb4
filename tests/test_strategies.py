"""The decoding strategies (Beam, Greedy, Sample) and no-repeat n-grams, against fake next-word tables."""

import json

import numpy as np
import pytest
import tensorflow as tf

from caption_app.inference import strategies
from caption_app.inference.beam_search import BeamSearchResult, beam_search
from caption_app.inference.ngram_blocking import block_repeated_ngrams
from caption_app.inference.settings import DecodeSettingsError
from caption_app.inference.strategies import Beam, Greedy, Sample, SearchResult
from tests import saved_model_ops
from tests.test_beam_search import (END, GREEDY_TABLE, LENGTH_TABLE, START, A, B, C, assert_matches, hand_table,
                                    log_table, markov_step, random_log_table, reference_beam_search, sum_state,
                                    sum_step, sum_table)

NEG_INF = float("-inf")


def captions(result, image=0):
    """Image `image`'s captions as tuples of ids, <end> included."""
    return [tuple(r[:n].tolist()) for r, n in zip(result.ids.numpy()[image], result.lengths.numpy()[image])]


def caption_log_prob(table, words, start=START):
    prev, total = start, 0.0
    for w in words:
        total += float(table[prev, w])
        prev = w
    return total


def has_repeated_ngram(words, n):
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return len(grams) != len(set(grams))


# ---------------------------------------------------------------- names and configs


def test_names_configs_and_round_trips():
    assert strategies.STRATEGIES == {"beam": Beam, "greedy": Greedy, "sample": Sample}
    assert SearchResult is BeamSearchResult  # the beam search's result is every strategy's
    examples = [Beam(), Beam(beam_size=5, num_results=2, length_normalization=0.7, words_per_beam=3,
                             no_repeat_ngram=2),
                Greedy(), Greedy(length_normalization=1.0, no_repeat_ngram=3),
                Sample(), Sample(num_samples=7, temperature=0.6, top_k=4, top_p=0.9, length_normalization=0.5,
                                 no_repeat_ngram=2, seed=123)]
    for s in examples:
        config = s.get_config()
        assert config["name"] == s.name
        assert strategies.from_config(json.loads(json.dumps(config))) == s  # JSON-serializable
        assert strategies.get(**config) == s
    assert Beam().num_results == 3 and Beam(beam_size=4, num_results=2).num_results == 2
    assert Greedy().num_results == 1 and Sample().num_results == 5 and Sample(num_samples=9).num_results == 9
    assert Beam() != Greedy() and Sample(seed=1) != Sample(seed=2)
    with pytest.raises(DecodeSettingsError, match="unknown decoding strategy 'nucleus'; the strategies are "
                                                  "beam, greedy, sample"):
        strategies.get("nucleus")
    with pytest.raises(DecodeSettingsError, match="strategy 'greedy' has no option temperature; its options are "
                                                  "length_normalization, no_repeat_ngram"):
        strategies.from_config({"name": "greedy", "temperature": 0.5})


@pytest.mark.parametrize("make,message", [
    (lambda: Beam(beam_size=2, num_results=3), "num_captions=3 exceeds beam_size=2"),
    (lambda: Beam(beam_size=0), "beam_size must be a positive integer"),
    (lambda: Greedy(no_repeat_ngram=-1), "no_repeat_ngram must be an integer >= 0"),
    (lambda: Sample(num_samples=0), "num_captions must be a positive integer"),
    (lambda: Sample(temperature=0.0), "temperature must be a finite number > 0"),
    (lambda: Sample(top_k=-1), "top_k must be an integer >= 0"),
    (lambda: Sample(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (lambda: Sample(seed=0.5), "seed must be an integer"),
])
def test_constructors_check_their_values(make, message):
    with pytest.raises(DecodeSettingsError, match=message):
        make()


# ---------------------------------------------------------------- greedy


def python_greedy(table, *, max_length, alpha=0.0, n=0, start=START, end=END):
    """(words, score, log_prob) of the argmax path, ties to the lower id, repeated n-grams blocked."""
    words, total = [], 0.0
    for _ in range(max_length):
        row = table[words[-1] if words else start].astype(np.float64).copy()
        for w in blocked_words(words, n):
            row[w] = NEG_INF
        w = int(np.argmax(row))
        words.append(w)
        total += row[w]
        if w == end:
            break
    return tuple(words), total / len(words) ** alpha, total


@pytest.mark.parametrize("table,alpha,words,prob", [
    (GREEDY_TABLE, 0.0, (A, END), 0.5 * 0.4),  # a (.5), then <end> (.4) beats a (.35)
    (LENGTH_TABLE, 1.0, (A, END), 0.55 * 0.6),  # the score is per word; the choice is not
])
def test_greedy_hand_computed(table, alpha, words, prob):
    result = Greedy(length_normalization=alpha).search(markov_step(table), tf.zeros([2, 1]), start_id=START,
                                                       end_id=END, max_length=5)
    assert result.ids.shape == (2, 1, 5)
    for image in range(2):
        assert captions(result, image) == [words]
    np.testing.assert_allclose(result.log_probs.numpy(), np.log(prob), atol=1e-6)
    np.testing.assert_allclose(result.scores.numpy(), np.log(prob) / len(words) ** alpha, atol=1e-6)
    assert (result.ids.numpy()[:, :, len(words):] == 0).all()


def test_greedy_follows_its_path_where_beam_one_keeps_an_earlier_end():
    # Greedy: a (.6), b (.55), <end> (.9): .297. Beam 1 finished "<end>" (.4) at step 1, and nothing on the
    # path it follows (the same a, b) ends better.
    table = hand_table({START: {A: 0.6, END: 0.4}, A: {B: 0.55, END: 0.45}, B: {END: 0.9, C: 0.1},
                        C: {END: 1.0}})
    greedy = Greedy().search(markov_step(table), tf.zeros([1, 1]), start_id=START, end_id=END, max_length=6)
    beam = Beam(beam_size=1).search(markov_step(table), tf.zeros([1, 1]), start_id=START, end_id=END,
                                    max_length=6)
    assert captions(greedy) == [(A, B, END)] and captions(beam) == [(END,)]
    np.testing.assert_allclose(greedy.log_probs.numpy(), [[np.log(0.297)]], atol=1e-6)


def test_greedy_equals_beam_one_where_they_must_agree():
    # Beam 1 follows greedy's path (its one alive hypothesis is the best word that is not <end>) and keeps
    # the best caption ending on it. Without length normalization nothing after greedy's <end> can beat it
    # (<end> was the best word, and log-probabilities only fall), so they agree exactly when greedy's caption
    # scores at least as well as every caption ending earlier on the path. (With alpha > 0 a longer caption
    # can score better, and beam 1 goes on where greedy stopped.)
    alpha, agreed = 0.0, 0
    for seed in range(30):
        table = random_log_table(100 + seed, 7)
        words, score, logp = python_greedy(table, max_length=6, alpha=alpha)
        truncated = words[-1] != END
        earlier = [caption_log_prob(table, words[:i] + (END,)) / (i + 1) ** alpha
                   for i in range(len(words) - 1 + truncated)]
        if earlier and max(earlier) >= score - 1e-4:
            continue
        agreed += 1
        greedy = Greedy(length_normalization=alpha).search(markov_step(table), tf.zeros([1, 1]), start_id=1,
                                                           end_id=2, max_length=6)
        beam = Beam(beam_size=1, length_normalization=alpha).search(markov_step(table), tf.zeros([1, 1]),
                                                                   start_id=1, end_id=2, max_length=6)
        assert captions(greedy) == captions(beam) == [words]
        for g, b in zip(greedy, beam):
            np.testing.assert_allclose(g.numpy(), b.numpy(), atol=1e-5)
        np.testing.assert_allclose(greedy.log_probs.numpy()[0, 0], logp, atol=1e-5)
    assert agreed >= 5, "too few tables where the two must agree; pick other seeds"


def counting_step(table, calls):
    inner = markov_step(table)

    def step(ids, state):
        calls.append(int(ids.shape[0]))
        return inner(ids, state)

    return step


def test_greedy_stops_when_every_row_has_ended_and_truncates_at_max_length():
    # The state is the running sum of the ids fed (start included): an even sum ends the caption, an odd one
    # says 3 or 4 (a tie: the lower id). Image 0 (0 + 1: odd) says 3, then (4: even) ends; image 1 ends at
    # once. Two steps, not max_length's nine.
    calls = []

    def step(ids, state):
        calls.append(int(ids.shape[0]))
        total = state + tf.cast(ids, tf.float32)[:, None]  # [n, 1]
        probs = tf.where(tf.equal(tf.math.floormod(total, 2.0), 0.0), [[0, 0, 1.0, 0, 0]], [[0, 0, 0, 0.5, 0.5]])
        return tf.math.log(probs), total

    result = Greedy().search(step, tf.constant([[0.0], [1.0]]), start_id=1, end_id=2, max_length=9)
    assert captions(result, 0) == [(3, 2)] and captions(result, 1) == [(2,)]
    assert calls == [2, 1]  # the second step runs on the one unfinished caption only
    np.testing.assert_allclose(result.log_probs.numpy(), [[np.log(0.5)], [0.0]], atol=1e-6)
    # A table that never ends: truncated at max_length, every word counted.
    never = hand_table({START: {A: 1.0}, A: {B: 0.7, A: 0.3}, B: {A: 0.6, C: 0.4}, C: {A: 1.0}})
    result = Greedy().search(markov_step(never), tf.zeros([1, 1]), start_id=START, end_id=END, max_length=4)
    assert captions(result) == [(A, B, A, B)] and result.lengths.numpy().tolist() == [[4]]
    np.testing.assert_allclose(result.log_probs.numpy()[0, 0], np.log(0.7 * 0.6 * 0.7), atol=1e-6)


# ---------------------------------------------------------------- sample: the distribution


def tempered_filtered(log_probs, temperature=1.0, top_k=0, top_p=1.0):
    """The distribution Sample draws from, in numpy (float64)."""
    z = np.asarray(log_probs, np.float64) / temperature
    if top_k:
        z = np.where(z >= np.sort(z)[::-1][top_k - 1], z, NEG_INF)
    if top_p < 1:
        p = np.exp(z - z.max())
        p /= p.sum()
        order = np.argsort(-p, kind="stable")
        before = np.cumsum(p[order]) - p[order]
        z = np.where(p >= p[order][before < top_p].min(), z, NEG_INF)
    p = np.exp(z - z.max())
    return p / p.sum()


# From <start>: 8 words with distinct probabilities (0 and 1, <pad> and <start>, never).
FIRST_WORD = np.array([0, 0, 0.04, 0.30, 0.22, 0.16, 0.12, 0.09, 0.05, 0.02])


def first_word_table():
    rows = np.full((10, 10), 0.1)
    rows[START] = FIRST_WORD
    return log_table(rows)


@pytest.mark.parametrize("options", [
    dict(), dict(temperature=0.5), dict(temperature=2.0), dict(top_k=3), dict(top_p=0.7),
    dict(temperature=1.5, top_k=5, top_p=0.8)])
def test_sample_word_frequencies_match_the_tempered_filtered_distribution(options):
    table = first_word_table()
    images, k = 500, 8  # 4000 draws; deterministic seeds, so the test cannot flake
    strategy = Sample(num_samples=k, **options)
    result = strategy.search(markov_step(table), tf.zeros([images, 1]), start_id=START, end_id=END,
                             max_length=1, seeds=tf.range(images) * 7919 + 13)
    first = result.ids.numpy()[:, :, 0].ravel()
    counts = np.bincount(first, minlength=10)
    expected = tempered_filtered(table[START], **options)
    n = images * k
    assert counts[expected == 0].sum() == 0  # filtered words are never drawn
    keep = expected > 0
    z = (counts[keep] - n * expected[keep]) / np.sqrt(n * expected[keep] * (1 - expected[keep]) + 1e-12)
    assert np.abs(z).max() < 4.0, (counts / n, expected)
    chi2 = ((counts[keep] - n * expected[keep]) ** 2 / (n * expected[keep])).sum()
    assert chi2 < 30.0  # <= 7 degrees of freedom; p < 1e-4 beyond


def test_sample_steps_draw_independently():
    # Every row the same distribution over 5 words (no <end>): the (word 1, word 2) pairs are p x p.
    p = np.array([0, 0, 0, 0.35, 0.25, 0.2, 0.12, 0.08])
    table = log_table(np.tile(p, (8, 1)))
    images, k = 400, 10
    result = Sample(num_samples=k).search(markov_step(table), tf.zeros([images, 1]), start_id=START, end_id=END,
                                          max_length=2, seeds=tf.range(images))
    ids = result.ids.numpy().reshape(-1, 2)
    counts = np.zeros((8, 8))
    np.add.at(counts, (ids[:, 0], ids[:, 1]), 1)
    expected = np.outer(p, p)[3:, 3:] * len(ids)
    chi2 = ((counts[3:, 3:] - expected) ** 2 / expected).sum()
    assert chi2 < 60.0  # 24 degrees of freedom; p < 1e-4 beyond


def test_sample_log_probs_are_the_models_not_the_tempered_ones():
    table = random_log_table(40, 8)
    strategy = Sample(num_samples=6, temperature=2.0, top_k=5, top_p=0.9, length_normalization=0.6, seed=3)
    result = strategy.search(markov_step(table), tf.zeros([3, 1]), start_id=1, end_id=2, max_length=7,
                             seeds=tf.constant([5, 6, 7]))
    for image in range(3):
        got = captions(result, image)
        scores = result.scores.numpy()[image]
        assert (np.diff(scores) <= 0).all()  # best first
        for r, words in enumerate(got):
            assert words[-1] == 2 or len(words) == 7  # ended, or truncated at max_length
            assert 2 not in words[:-1]
            logp = caption_log_prob(table, words, start=1)
            np.testing.assert_allclose(result.log_probs.numpy()[image, r], logp, atol=1e-5)
            np.testing.assert_allclose(scores[r], logp / len(words) ** 0.6, atol=1e-5)
            assert (result.ids.numpy()[image, r, len(words):] == 0).all()


@pytest.mark.parametrize("options", [dict(top_k=1), dict(top_p=1e-6), dict(temperature=1e-3)])
def test_sampling_that_leaves_one_word_is_greedy(options):
    step, state = sum_step(sum_table(42, 8)), sum_state([0.0, 2.0, 4.0])
    greedy = Greedy().search(step, state, start_id=1, end_id=2, max_length=8)
    sampled = Sample(num_samples=4, **options).search(step, state, start_id=1, end_id=2, max_length=8,
                                                      seeds=tf.constant([1, 2, 3]))
    for image in range(3):
        assert captions(sampled, image) == captions(greedy, image) * 4
    np.testing.assert_allclose(sampled.log_probs.numpy(), np.repeat(greedy.log_probs.numpy(), 4, axis=1), atol=1e-5)


def test_temperature_spreads_or_concentrates_the_samples():
    table = random_log_table(43, 8)
    distinct = {}
    for temperature in (0.3, 1.0, 3.0):
        result = Sample(num_samples=16, temperature=temperature).search(
            markov_step(table), tf.zeros([4, 1]), start_id=1, end_id=2, max_length=6, seeds=tf.range(4))
        distinct[temperature] = sum(len(set(captions(result, i))) for i in range(4))
    assert distinct[0.3] < distinct[1.0] < distinct[3.0], distinct


# ---------------------------------------------------------------- sample: seeds


def test_same_seed_same_captions_in_any_batch_and_position():
    table = sum_table(44, 8)
    strategy = Sample(num_samples=5, temperature=1.2, top_p=0.95)

    def run(sums, seeds, dtype=tf.int32):
        return strategy.search(sum_step(table), sum_state(sums), start_id=1, end_id=2, max_length=8,
                               seeds=tf.constant(seeds, dtype))

    alone = run([1.0], [77])
    for sums, seeds, where in [([0.0, 1.0, 5.0], [3, 77, 9], 1), ([1.0, 0.0], [77, 3], 0),
                               ([5.0, 0.0, 2.0, 1.0], [9, 3, 3, 77], 3), ([1.0, 1.0], [5, 77], 1)]:
        for dtype in (tf.int32, tf.int64):
            batched = run(sums, seeds, dtype)
            for got, want in zip(batched, alone):
                np.testing.assert_array_equal(got.numpy()[where], want.numpy()[0])
    # Another seed, other captions; the default seed is the strategy's.
    assert captions(run([1.0], [78])) != captions(alone)
    assert captions(run([1.0, 1.0], [5, 77]), 0) != captions(alone)
    default = strategy.search(sum_step(table), sum_state([1.0, 0.0]), start_id=1, end_id=2, max_length=8)
    explicit = run([1.0, 0.0], [0, 0])
    for got, want in zip(default, explicit):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    seeded = Sample(num_samples=5, temperature=1.2, top_p=0.95, seed=77).search(
        sum_step(table), sum_state([1.0]), start_id=1, end_id=2, max_length=8)
    np.testing.assert_array_equal(seeded.ids.numpy(), alone.ids.numpy())


def test_step_fn_runs_once_per_distinct_unfinished_prefix():
    # top_k=1: the 4 samples of an image are one caption, stepped once; two images with the same state are
    # still two prefixes (an image's captions never depend on another's). The table never ends before 5 words.
    calls = []

    def step(ids, state):
        calls.append(int(ids.shape[0]))
        return markov_step(REPEAT_TABLE)(ids, state)

    result = Sample(num_samples=4, top_k=1).search(step, tf.zeros([2, 1]), start_id=START, end_id=END, max_length=5)
    assert calls == [2] * 5
    assert captions(result, 0) == captions(result, 1) == [(A, DOG, A, DOG, A)] * 4


def test_seeds_must_match_the_batch():
    with pytest.raises(tf.errors.InvalidArgumentError, match="one seed per image"):
        Sample().search(markov_step(GREEDY_TABLE), tf.zeros([2, 1]), start_id=START, end_id=END, max_length=3,
                        seeds=tf.constant([1, 2, 3]))


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


PAD_, DOG, RUNS = 0, 4, 5
# Unblocked, the best caption of 6 words is "a dog a dog a dog" (truncated): .81**3 * .7**2 = .2604 beats
# "a dog runs <end>" .243. With 2-grams blocked, "a dog a" cannot go on with "dog".
REPEAT_TABLE = hand_table({START: {A: 0.9, RUNS: 0.1}, A: {DOG: 0.9, RUNS: 0.1}, DOG: {A: 0.7, RUNS: 0.3},
                           RUNS: {END: 1.0}})


def test_no_repeat_ngram_on_a_repeating_table():
    kwargs = dict(start_id=START, end_id=END, max_length=6)
    step, state = markov_step(REPEAT_TABLE), tf.zeros([1, 1])
    assert captions(Beam(beam_size=3).search(step, state, **kwargs))[0] == (A, DOG, A, DOG, A, DOG)
    # .243, .1, .09 (and "a dog a runs <end>" .0567 fourth).
    assert captions(Beam(beam_size=3, no_repeat_ngram=2).search(step, state, **kwargs)) == [
        (A, DOG, RUNS, END), (RUNS, END), (A, RUNS, END)]
    assert captions(Greedy().search(step, state, **kwargs)) == [(A, DOG, A, DOG, A, DOG)]
    assert captions(Greedy(no_repeat_ngram=2).search(step, state, **kwargs)) == [(A, DOG, A, RUNS, END)]
    # n = 1: no word twice. "a dog" leaves "runs" (.3), then <end>.
    assert captions(Greedy(no_repeat_ngram=1).search(step, state, **kwargs)) == [(A, DOG, RUNS, END)]
    plain = Sample(num_samples=20, seed=1).search(step, state, **kwargs)
    blocked = Sample(num_samples=20, seed=1, no_repeat_ngram=2).search(step, state, **kwargs)
    assert any(has_repeated_ngram(c, 2) for c in captions(plain))
    assert not any(has_repeated_ngram(c, 2) for c in captions(blocked))
    for words, logp in zip(captions(blocked), blocked.log_probs.numpy()[0]):
        np.testing.assert_allclose(logp, caption_log_prob(REPEAT_TABLE, words), atol=1e-5)  # the model's


def test_a_row_with_nothing_left_to_say_comes_back_empty():
    # Only "a" and "dog" are possible and <end> never: with no word repeated, greedy and sampling run out
    # after "a dog", and beam search finds no caption at all.
    table = hand_table({START: {A: 1.0}, A: {DOG: 1.0}, DOG: {A: 1.0}})
    for strategy in (Greedy(no_repeat_ngram=1), Sample(num_samples=2, no_repeat_ngram=1),
                     Beam(beam_size=2, no_repeat_ngram=1)):
        result = strategy.search(markov_step(table), tf.zeros([1, 1]), start_id=START, end_id=END, max_length=5)
        assert (result.scores.numpy() == NEG_INF).all() and (result.log_probs.numpy() == NEG_INF).all()
        assert not result.lengths.numpy().any() and not result.ids.numpy().any()


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


@pytest.mark.parametrize("seed", [60, 61])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_no_repeat_greedy_matches_python_reference(seed, n):
    table = random_log_table(seed, 7)
    table[:, 2] -= 2.5
    words, score, logp = python_greedy(table, max_length=9, n=n, start=1, end=2)
    result = Greedy(no_repeat_ngram=n).search(markov_step(table), tf.zeros([1, 1]), start_id=1, end_id=2,
                                              max_length=9)
    if logp == NEG_INF:  # ran out of words
        assert result.lengths.numpy()[0, 0] == 0
    else:
        assert captions(result) == [words]
        np.testing.assert_allclose(result.log_probs.numpy()[0, 0], logp, atol=1e-5)


# ---------------------------------------------------------------- in a graph


GRAPH_STRATEGIES = [
    Beam(beam_size=2, length_normalization=0.5, no_repeat_ngram=2),
    Greedy(length_normalization=1.0, no_repeat_ngram=2),
    Sample(num_samples=3, temperature=0.8, top_k=4, top_p=0.9, no_repeat_ngram=2),
]
STATE_SPEC = {"sum": tf.TensorSpec([None, 1], tf.float32), "extra": (tf.TensorSpec([None, 4], tf.float32),)}


def graph_search(strategy, table, max_length=6):
    @tf.function(input_signature=[STATE_SPEC, tf.TensorSpec([None], tf.int32)])
    def decode(state, seeds):
        return strategy.search(sum_step(table), state, start_id=1, end_id=2, max_length=max_length, seeds=seeds)

    return decode


@pytest.mark.parametrize("strategy", GRAPH_STRATEGIES, ids=lambda s: s.name)
def test_tf_function_with_unknown_batch_matches_eager(strategy):
    table = sum_table(70, 7)
    decode = graph_search(strategy, table)
    spec = decode.get_concrete_function().structured_outputs
    assert isinstance(spec, SearchResult)
    assert spec.ids.shape.as_list() == [None, strategy.num_results, 6]
    for sums in ([0.0, 1.0, 2.0], [4.0], []):
        seeds = tf.constant([3 * i + 1 for i in range(len(sums))], tf.int32)
        graph = decode(sum_state(sums), seeds)
        eager = strategy.search(sum_step(table), sum_state(sums), start_id=1, end_id=2, max_length=6, seeds=seeds)
        assert graph.ids.shape == (len(sums), strategy.num_results, 6)
        for got, want in zip(graph, eager):
            np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-6)


def test_traced_strategies_use_only_core_ops_and_run_in_a_tf1_session(tmp_path):
    table = sum_table(71, 7)
    module = tf.Module()
    functions = {}

    def signature(strategy):
        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="state_sum"),
                                      tf.TensorSpec([None], tf.int32, name="seeds")])
        def outputs(state_sum, seeds):
            state = {"sum": state_sum, "extra": (tf.zeros([tf.shape(state_sum)[0], 4]),)}
            return strategy.search(sum_step(table), state, start_id=1, end_id=2, max_length=6,
                                   seeds=seeds)._asdict()

        return outputs

    for strategy in GRAPH_STRATEGIES:
        functions[strategy.name] = signature(strategy)
        setattr(module, strategy.name, functions[strategy.name])
    tf.saved_model.save(module, str(tmp_path), signatures=functions)

    report = saved_model_ops.scan(str(tmp_path))
    ops = set(report["ops"])
    assert report["unregistered"] == [] and report["xla"] == []
    assert {"While", "TopKV2", "ArgMax", "UnsortedSegmentSum", "BitwiseXor", "Cumsum"} <= ops  # the bodies were seen
    assert [op for op in ops if not hasattr(tf.raw_ops, op)] == []  # core TensorFlow, not tensorflow_text
    random_ops = {op for op in ops if "Random" in op or op in ("Multinomial", "PyFunc", "PyFuncStateless",
                                                                "EagerPyFunc")}
    assert random_ops == set()

    sums, seeds = np.array([[0.0], [3.0]], np.float32), np.array([5, 6], np.int32)
    session = saved_model_ops.run_in_session(
        str(tmp_path), [(s.name, {"state_sum": sums, "seeds": seeds}) for s in GRAPH_STRATEGIES])
    for strategy, out in zip(GRAPH_STRATEGIES, session):
        eager = strategy.search(sum_step(table), sum_state(sums[:, 0].tolist()), start_id=1, end_id=2,
                                max_length=6, seeds=tf.constant(seeds))
        np.testing.assert_array_equal(out["ids"], eager.ids.numpy())
        np.testing.assert_allclose(out["log_probs"], eager.log_probs.numpy(), atol=1e-6)
