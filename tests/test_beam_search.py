"""beam_search against fake next-word tables: brute force, a Python reference, hand-computed cases."""

import itertools
import math

import numpy as np
import pytest
import tensorflow as tf

from caption_app.inference.beam_search import BeamSearchResult, beam_search

NEG_INF = float("-inf")


# ---------------------------------------------------------------- fake models


def random_log_table(seed, vocab, rows=None):
    """[rows, vocab] float32 log-softmax of random logits (rows default to vocab)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=1.5, size=(rows or vocab, vocab))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return logp.astype(np.float32)


def log_table(probs):
    """Probability rows -> float32 log-probabilities, with log(0) = -inf."""
    probs = np.asarray(probs, np.float64)
    with np.errstate(divide="ignore"):
        return np.log(probs).astype(np.float32)


def markov_step(table):
    """step_fn whose log_probs depend only on the previous word; the state is a dummy."""
    table = tf.constant(table)

    def step(ids, state):
        return tf.gather(table, ids), state

    return step


def markov_step_py(table):
    return lambda prev, state: (table[prev].astype(np.float64), state)


# The state-dependent model: the state is the running sum of the ids fed so far
# (start included), and the next word's log-probabilities are
# table[previous id, running sum % MODULUS]. A wrongly gathered state changes
# the sums, hence the answers.
MODULUS = 3


def sum_step(table):  # table [vocab, MODULUS, vocab]
    table = tf.constant(table)

    def step(ids, state):
        total = state["sum"] + tf.cast(ids, tf.float32)[:, None]  # [n, 1]
        bucket = tf.math.floormod(tf.cast(total[:, 0], tf.int32), MODULUS)  # [n]
        log_probs = tf.gather_nd(table, tf.stack([ids, bucket], axis=1))  # [n, vocab]
        # An extra passenger tensor, to check nested structures travel along.
        return log_probs, {"sum": total, "extra": (state["extra"][0] + 1.0,)}

    return step


def sum_step_py(table):
    def step(prev, total):
        total = total + prev
        return table[prev, int(total) % MODULUS].astype(np.float64), total

    return step


def sum_state(initial_sums):
    sums = tf.constant(initial_sums, tf.float32)[:, None]  # [batch, 1]
    return {"sum": sums, "extra": (tf.zeros([len(initial_sums), 4]),)}


# ---------------------------------------------------------------- references


def brute_force(table, *, start_id, end_id, max_length, alpha):
    """Every caption the semantics allow, best first, as (words, score, log_prob).

    Captions: any words then end_id within max_length words, or exactly
    max_length words without end_id. Probability-0 captions are dropped.
    """
    vocab = table.shape[1]
    words = [w for w in range(vocab) if w != end_id]
    captions = [p + (end_id,) for n in range(max_length) for p in itertools.product(words, repeat=n)]
    captions += list(itertools.product(words, repeat=max_length))
    scored = []
    for caption in captions:
        prev, logp = start_id, 0.0
        for w in caption:
            logp += float(table[prev, w])
            prev = w
        if logp > NEG_INF:
            scored.append((caption, logp / len(caption) ** alpha, logp))
    scored.sort(key=lambda c: -c[1])
    return scored


def reference_beam_search(step_py, state, *, start_id, end_id, beam_size, max_length, alpha,
                          num_results, words_per_beam=0):
    """The documented semantics for one image, in plain Python, without early stop
    (`words_per_beam` > 0: each hypothesis continues with its w most probable words only,
    ties to the lower id, as im2txt's CaptionGenerator sorts them)."""
    alive = [((), 0.0, state)]  # (words, log_prob, state)
    finished = []  # (words, score, log_prob)
    for t in range(max_length):
        length = t + 1
        open_cands, ended = [], []
        for words, logp, st in alive:
            log_probs, new_st = step_py(words[-1] if words else start_id, st)
            allowed = set(np.argsort(-log_probs, kind="stable")[:words_per_beam or len(log_probs)])
            for w, lp in enumerate(log_probs):
                if w not in allowed:
                    continue
                total = logp + lp
                if total == NEG_INF:
                    continue
                if w == end_id:
                    ended.append((words + (w,), total))
                else:
                    open_cands.append((words + (w,), total, new_st))
        open_cands.sort(key=lambda c: -c[1])  # stable: earlier beam, lower word first
        alive = open_cands[:beam_size]
        if length == max_length:
            ended += [(w, lp) for w, lp, _ in alive]
        finished += [(w, lp / length ** alpha, lp) for w, lp in ended]
        finished.sort(key=lambda c: -c[1])
        finished = finished[:beam_size]
        if not alive:
            break
    return finished[:num_results]


def assert_no_near_ties(expected, upto, gap=1e-4):
    """The fixture must rank unambiguously in float32, or the test would be flaky by design."""
    scores = [c[1] for c in expected[:upto + 1]]
    for a, b in zip(scores, scores[1:]):
        assert a - b > gap, f"fixture has a near tie ({a} vs {b}); pick another seed"


def assert_matches(result, index, expected, num_results, max_length):
    """Compares image `index` of a BeamSearchResult with [(words, score, log_prob)]."""
    ids = result.ids.numpy()[index]
    scores = result.scores.numpy()[index]
    log_probs = result.log_probs.numpy()[index]
    lengths = result.lengths.numpy()[index]
    assert ids.shape == (num_results, max_length)
    assert not np.isnan(scores).any() and not np.isnan(log_probs).any()
    for r in range(num_results):
        if r < len(expected):
            words, score, logp = expected[r]
            got = tuple(ids[r, :lengths[r]])
            assert got == tuple(words), f"result {r}: got {got}, expected {tuple(words)}"
            assert (ids[r, lengths[r]:] == 0).all()
            np.testing.assert_allclose(scores[r], score, rtol=0, atol=1e-5)
            np.testing.assert_allclose(log_probs[r], logp, rtol=0, atol=1e-5)
        else:  # padding
            assert scores[r] == NEG_INF and log_probs[r] == NEG_INF
            assert lengths[r] == 0 and (ids[r] == 0).all()


# ---------------------------------------------------------------- brute force


# With beam_size >= (vocab - 1) ** (max_length - 1) every prefix stays alive, so
# nothing is pruned and beam search must return the brute-force top k exactly.
@pytest.mark.parametrize("vocab,max_length,seed", [
    (4, 1, 0), (4, 2, 1), (4, 3, 2), (4, 4, 3), (5, 3, 4), (6, 3, 5)])
@pytest.mark.parametrize("alpha", [0.0, 0.7, 1.0, 2.0])
def test_matches_brute_force_when_nothing_is_pruned(vocab, max_length, seed, alpha):
    start_id, end_id = 1, 2
    table = random_log_table(seed, vocab)
    beam = max((vocab - 1) ** (max_length - 1), 4)
    expected = brute_force(table, start_id=start_id, end_id=end_id, max_length=max_length,
                           alpha=alpha)
    num_results = min(beam, 6)
    assert_no_near_ties(expected, num_results)
    result = beam_search(markov_step(table), tf.zeros([1, 1]), start_id=start_id, end_id=end_id,
                         beam_size=beam, max_length=max_length, length_normalization=alpha,
                         num_results=num_results)
    assert_matches(result, 0, expected, num_results, max_length)


def test_pads_with_minus_inf_when_fewer_captions_exist_than_results():
    # vocab 4, max_length 2: 1 + 3 + 9 = 13 captions for 16 slots.
    table = random_log_table(7, 4)
    expected = brute_force(table, start_id=1, end_id=2, max_length=2, alpha=0.0)
    assert len(expected) == 13
    result = beam_search(markov_step(table), tf.zeros([1, 1]), start_id=1, end_id=2,
                         beam_size=16, max_length=2)
    assert_matches(result, 0, expected, 16, 2)


# ---------------------------------------------------------------- hand-computed

# ids follow the vocabulary's convention: 0 <pad>, 1 <start>, 2 <end>, then words.
PAD, START, END, A, B, C = range(6)


def hand_table(rows):
    """{previous: {word: prob}} -> [6, 6] log table; rows never fed are uniform."""
    probs = np.full((6, 6), 1 / 6)
    for prev, row in rows.items():
        probs[prev] = 0.0
        for word, p in row.items():
            probs[prev, word] = p
    return log_table(probs)


# Greedy picks "a" (0.5), then "a <end>" = 0.5 * 0.4 = 0.2.
# Beam 2 keeps "b" (0.4) too, and "b <end>" = 0.4 * 0.9 = 0.36 wins.
GREEDY_TABLE = hand_table({
    START: {A: 0.5, B: 0.4, C: 0.1},
    A: {A: 0.35, B: 0.25, END: 0.4},
    B: {A: 0.06, B: 0.04, END: 0.9},
    C: {END: 1.0},
})


@pytest.mark.parametrize("beam,expected_ids,expected_probs,expected_lengths", [
    # Step 1: alive [a .5]. Step 2: "a <end>" .2 finishes; alive ["a a" .175].
    # Step 3 (last): "a a <end>" .07 and truncated "a a a" .06125 lose to .2.
    (1, [[A, END, 0]], [0.2], [2]),
    # Step 1: alive [a .5, b .4]. Step 2: finished ["b <end>" .36, "a <end>" .2];
    # alive ["a a" .175, "a b" .125]. Step 3: "a b <end>" .1125, "a a <end>" .07,
    # "a a a" .06125, "a a b" .04375 all lose to .2.
    (2, [[B, END, 0], [A, END, 0]], [0.36, 0.2], [2, 2]),
    # Step 2: finished [.36 "b <end>", .2 "a <end>", .1 "c <end>"]; alive
    # ["a a" .175, "a b" .125, "b a" .024]. Step 3: "a b <end>" = .125 * .9
    # = .1125 beats "c <end>" .1, and the rest (.07, .06125, ...) lose.
    (3, [[B, END, 0], [A, END, 0], [A, B, END]], [0.36, 0.2, 0.1125], [2, 2, 3]),
])
def test_hand_computed_greedy_differs_from_beam(beam, expected_ids, expected_probs,
                                                expected_lengths):
    result = beam_search(markov_step(GREEDY_TABLE), tf.zeros([1, 1]), start_id=START,
                         end_id=END, beam_size=beam, max_length=3)
    np.testing.assert_array_equal(result.ids.numpy()[0], expected_ids)
    np.testing.assert_allclose(result.scores.numpy()[0], np.log(expected_probs), atol=1e-6)
    np.testing.assert_allclose(result.log_probs.numpy()[0], np.log(expected_probs), atol=1e-6)
    np.testing.assert_array_equal(result.lengths.numpy()[0], expected_lengths)


# "a <end>" = .55 * .6 = .33 beats "b c <end>" = .45 * .8 * .8 = .288 in total,
# but per word ln(.288) / 3 = -0.415 beats ln(.33) / 2 = -0.554.
LENGTH_TABLE = hand_table({
    START: {A: 0.55, B: 0.45},
    A: {A: 0.25, B: 0.15, END: 0.6},
    B: {A: 0.1, B: 0.1, C: 0.8},
    C: {A: 0.12, B: 0.08, END: 0.8},
})


@pytest.mark.parametrize("alpha,expected_ids,expected_probs,expected_lengths", [
    # Step 1: alive [a .55, b .45]. Step 2: "a <end>" .33 finishes; alive
    # ["b c" .36, "a a" .1375]. Step 3 (last): "b c <end>" .288, "a a <end>"
    # .0825, truncated "b c a" .0432, "a a a" .034375.
    (0.0, [[A, END, 0], [B, C, END]], [0.33, 0.288], [2, 3]),
    (1.0, [[B, C, END], [A, END, 0]], [0.288, 0.33], [3, 2]),
])
def test_length_normalization_changes_the_ranking(alpha, expected_ids, expected_probs,
                                                  expected_lengths):
    result = beam_search(markov_step(LENGTH_TABLE), tf.zeros([1, 1]), start_id=START,
                         end_id=END, beam_size=2, max_length=3, length_normalization=alpha)
    np.testing.assert_array_equal(result.ids.numpy()[0], expected_ids)
    log_probs = np.log(expected_probs)
    np.testing.assert_allclose(result.log_probs.numpy()[0], log_probs, atol=1e-6)
    np.testing.assert_allclose(result.scores.numpy()[0],
                               log_probs / np.asarray(expected_lengths) ** alpha, atol=1e-6)
    np.testing.assert_array_equal(result.lengths.numpy()[0], expected_lengths)


def counting_step(table, calls):
    inner = markov_step(table)

    def step(ids, state):
        calls.append(ids.numpy().tolist())
        return inner(ids, state)

    return step


@pytest.mark.parametrize("beam,expected_calls", [
    # After step 2 the finished set is [.36, .2] and the best alive "a a" has .175:
    # it can only go down, so the loop stops.
    (2, 2),
    # After step 2 the worst finished is "c <end>" .1 < "a a" .175: go on. After
    # step 3 it is .1125 and the best alive, "a a a", has .06125: stop.
    (3, 3),
])
def test_stops_early_with_the_same_answer(beam, expected_calls):
    calls = []
    early = beam_search(counting_step(GREEDY_TABLE, calls), tf.zeros([1, 1]), start_id=START,
                        end_id=END, beam_size=beam, max_length=10)
    assert len(calls) == expected_calls
    assert calls[0] == [START]  # the first step runs once per image (its beams would repeat it)
    assert all(len(c) == beam for c in calls[1:])
    full = beam_search(markov_step(GREEDY_TABLE), tf.zeros([1, 1]), start_id=START, end_id=END,
                       beam_size=beam, max_length=3)
    np.testing.assert_array_equal(early.ids.numpy()[:, :, :3], full.ids.numpy())
    assert not early.ids.numpy()[:, :, 3:].any()
    np.testing.assert_allclose(early.scores.numpy(), full.scores.numpy())


def test_stops_when_the_table_allows_nothing_more():
    # From start only c; after c only <end>: a single caption exists, the other
    # slots pad, and the loop stops once nothing is alive.
    table = hand_table({START: {C: 1.0}, C: {END: 1.0}})
    calls = []
    result = beam_search(counting_step(table, calls), tf.zeros([1, 1]), start_id=START,
                         end_id=END, beam_size=3, max_length=8)
    assert len(calls) == 2
    assert_matches(result, 0, [((C, END), 0.0, 0.0)], 3, 8)


# ---------------------------------------------------------------- pruning: vs Python reference


@pytest.mark.parametrize("seed", [10, 11, 12])
@pytest.mark.parametrize("beam,max_length,alpha", [
    (1, 5, 0.0), (2, 5, 0.0), (3, 8, 0.0), (3, 8, 1.0), (4, 6, 0.6), (2, 12, 2.0)])
def test_matches_python_reference_with_pruning(seed, beam, max_length, alpha):
    table = random_log_table(seed, 6)
    expected = reference_beam_search(markov_step_py(table), None, start_id=1, end_id=2,
                                     beam_size=beam, max_length=max_length, alpha=alpha,
                                     num_results=beam)
    result = beam_search(markov_step(table), tf.zeros([1, 1]), start_id=1, end_id=2,
                         beam_size=beam, max_length=max_length, length_normalization=alpha)
    assert_matches(result, 0, expected, beam, max_length)


@pytest.mark.parametrize("seed", [20, 21, 22])
@pytest.mark.parametrize("beam,words,max_length", [(1, 1, 6), (2, 2, 6), (3, 3, 8), (3, 2, 8), (4, 5, 6)])
def test_words_per_beam_matches_python_reference(seed, beam, words, max_length):
    table = random_log_table(seed, 7)
    expected = reference_beam_search(markov_step_py(table), None, start_id=1, end_id=2, beam_size=beam,
                                     max_length=max_length, alpha=0.0, num_results=beam, words_per_beam=words)
    result = beam_search(markov_step(table), tf.zeros([1, 1]), start_id=1, end_id=2, beam_size=beam,
                         max_length=max_length, words_per_beam=words)
    assert_matches(result, 0, expected, beam, max_length)


def test_words_per_beam_ends_only_where_the_end_is_among_the_best_words():
    # After <start> (1): 3 or 4 (p .5 each). After 3: 5 (.4), 4 (.35), <end> (.25); after 4 and 5: 0 (.9),
    # <end> (.1); after 0: 0 (.7), <end> (.3). Every word: "3 <end>" (.125) is second best. With 2 words
    # per hypothesis <end> is not among 3's best two: "3 <end>" is never seen, "4 0 0 <end>" (.0945) is second.
    start, end = 1, 2
    rows = np.zeros((6, 6))
    rows[start, [3, 4]] = 0.5
    rows[3, [5, 4, end]] = [0.4, 0.35, 0.25]
    rows[[4, 5], 0] = 0.9
    rows[[4, 5], end] = 0.1
    rows[0, [0, end]] = [0.7, 0.3]
    rows[2, end] = 1.0
    table = log_table(rows)

    def captions(**kwargs):
        result = beam_search(markov_step(table), tf.zeros([1, 1]), start_id=start, end_id=end, beam_size=2,
                             max_length=8, **kwargs)
        return [tuple(r[:n].tolist()) for r, n in zip(result.ids[0].numpy(), result.lengths[0].numpy())]

    assert captions() == [(4, 0, 2), (3, 2)]
    assert captions(words_per_beam=2) == [(4, 0, 2), (4, 0, 0, 2)]


def test_num_results_below_beam_size_is_the_best_prefix():
    table = random_log_table(13, 6)
    expected = reference_beam_search(markov_step_py(table), None, start_id=1, end_id=2,
                                     beam_size=4, max_length=6, alpha=0.5, num_results=2)
    result = beam_search(markov_step(table), tf.zeros([1, 1]), start_id=1, end_id=2,
                         beam_size=4, max_length=6, length_normalization=0.5, num_results=2)
    assert result.ids.shape == (1, 2, 6)
    assert_matches(result, 0, expected, 2, 6)


# ---------------------------------------------------------------- state, batch, graph


def sum_table(seed, vocab=6):
    return random_log_table(seed, vocab, rows=vocab * MODULUS).reshape(vocab, MODULUS, vocab)


@pytest.mark.parametrize("beam,alpha", [(2, 0.0), (3, 1.0), (5, 0.5)])
def test_state_is_gathered_by_parent_beam(beam, alpha):
    table = sum_table(20)
    expected = reference_beam_search(sum_step_py(table), 0.0, start_id=1, end_id=2,
                                     beam_size=beam, max_length=7, alpha=alpha, num_results=beam)
    result = beam_search(sum_step(table), sum_state([0.0]), start_id=1, end_id=2,
                         beam_size=beam, max_length=7, length_normalization=alpha)
    assert_matches(result, 0, expected, beam, 7)


def test_batch_matches_each_image_alone():
    table = sum_table(21)
    initial = [0.0, 1.0, 5.0]
    kwargs = dict(start_id=1, end_id=2, beam_size=3, max_length=7, length_normalization=0.5)
    batched = beam_search(sum_step(table), sum_state(initial), **kwargs)
    answers = set()
    for i, s in enumerate(initial):
        alone = beam_search(sum_step(table), sum_state([s]), **kwargs)
        for got, want in zip(batched, alone):
            np.testing.assert_allclose(got.numpy()[i], want.numpy()[0], atol=1e-6)
        expected = reference_beam_search(sum_step_py(table), s, start_id=1, end_id=2,
                                         beam_size=3, max_length=7, alpha=0.5, num_results=3)
        assert_matches(batched, i, expected, 3, 7)
        answers.add(tuple(batched.ids.numpy()[i].ravel()))
    assert len(answers) > 1, "the initial states should lead to different captions"


def test_tf_function_with_unknown_batch_matches_eager():
    table = sum_table(22)
    kwargs = dict(start_id=1, end_id=2, beam_size=3, max_length=6, length_normalization=1.0)

    @tf.function(input_signature=[{"sum": tf.TensorSpec([None, 1], tf.float32),
                                   "extra": (tf.TensorSpec([None, 4], tf.float32),)}])
    def decode(state):
        return beam_search(sum_step(table), state, **kwargs)

    result_spec = decode.get_concrete_function().structured_outputs
    assert result_spec.ids.shape.as_list() == [None, 3, 6]
    for initial in ([0.0, 1.0, 2.0], [4.0], []):
        graph = decode(sum_state(initial))
        eager = beam_search(sum_step(table), sum_state(initial), **kwargs)
        assert isinstance(graph, BeamSearchResult)
        assert graph.ids.shape == (len(initial), 3, 6)
        for got, want in zip(graph, eager):
            np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-6)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs,message", [
    # num_results is DecodeSettings.num_captions
    (dict(beam_size=2, num_results=3), "num_captions=3 exceeds beam_size=2"),
    (dict(beam_size=0), "beam_size must be a positive int"),
    (dict(max_length=0), "max_length must be a positive int"),
    (dict(length_normalization=-0.5), "length_normalization must be >= 0"),
    (dict(words_per_beam=-1), "words_per_beam must be an integer >= 0"),
])
def test_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        beam_search(markov_step(GREEDY_TABLE), tf.zeros([1, 1]), start_id=START, end_id=END,
                    **kwargs)


def test_rejects_empty_state_and_state_that_changes_shape():
    with pytest.raises(ValueError, match="initial_state has no tensors"):
        beam_search(markov_step(GREEDY_TABLE), (), start_id=START, end_id=END)

    def bad_step(ids, state):
        return tf.gather(tf.constant(GREEDY_TABLE), ids), tf.zeros([tf.shape(ids)[0], 2])

    with pytest.raises(ValueError, match="keep each state tensor's dtype and shape"):
        beam_search(bad_step, tf.zeros([1, 1]), start_id=START, end_id=END)


def test_probability_zero_words_make_no_nan():
    # Sanity of -inf handling: the first step's extra beams start at -inf, and
    # most of this table is -inf too.
    result = beam_search(markov_step(GREEDY_TABLE), tf.zeros([2, 1]), start_id=START,
                         end_id=END, beam_size=6, max_length=4, length_normalization=1.0)
    for tensor in (result.scores, result.log_probs):
        assert not np.isnan(tensor.numpy()).any()
    assert math.isfinite(float(result.scores[0, 0]))
