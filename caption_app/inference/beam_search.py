"""The one beam search: batched, in-graph, driven by a `step_fn` callback.

Evaluation, the caption CLI and the exported SavedModel all decode with
`beam_search`. It uses only core TensorFlow ops (`tf.while_loop`,
`tf.math.top_k`, `tf.gather`), so it runs eagerly, inside `tf.function` with an
unknown batch size, and in TF Serving.

The model is reached only through `step_fn(ids, state) -> (log_probs,
new_state)`, so tests can drive it with a fake next-word table.

Semantics, for each image independently (all of it is tested against a
brute-force enumeration and a plain-Python reference):

* Decoding starts from `start_id` and `initial_state`. The first `step_fn`
  call runs once per image (ids [batch], `initial_state` as given: every beam
  would feed `start_id` with the same state, as im2txt's loop knew) and its
  result is repeated for the beams; later calls get [batch * beam_size] rows.
* A hypothesis is the list of words emitted after `<start>`. Its length is the
  number of those words, the end token included. Its log-probability is the sum
  of the log-probabilities of those words; its score is
  `log_prob / length ** length_normalization`.
* A hypothesis is finished when it emits `end_id`, or when it reaches
  `max_length` words without emitting it (a truncated caption, so there is
  always an answer).
* Each step expands every alive hypothesis with every word (or, with
  `words_per_beam` w > 0, with only its w most probable next words, as
  im2txt's CaptionGenerator does with w = beam size: a hypothesis can then
  end only when the end token is among its w best words; with
  `no_repeat_ngram` n > 0, words that would repeat an n-gram of the
  hypothesis are removed first, caption_app/inference/ngram_blocking.py). Of these
  candidates, the `beam_size` best by log-probability that do not end in
  `end_id` stay alive (equal lengths, so this is also the order by score); the
  ones that end in `end_id` (and, at step `max_length`, the alive ones too)
  compete with the finished set, which keeps the `beam_size` best by score.
* The result is the best `num_results` of the finished set, by score.
* The loop stops before `max_length` once, for every image, no alive
  hypothesis can beat the worst kept finished one (see `_is_done`).

Ties are broken by `tf.math.top_k`, which prefers the lower index: the earlier
beam, then the lower word id.

With `trace=True`, `step_fn` returns a third value, a [n, D] row per
hypothesis (the decoder's attention weights over the image's cells), and the
result is a `TracedSearchResult` whose `traces` hold, for each returned
caption, the row of the very step that chose each of its words: the rows are
gathered by the same parent pointers as the words, so they follow each
hypothesis through the beam's reordering. Without it no extra tensor is
carried.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import tensorflow as tf

from caption_app.inference.ngram_blocking import block_repeated_ngrams
from caption_app.inference.settings import DecodeSettings

StepFn = Callable[[tf.Tensor, Any], tuple[tf.Tensor, Any]]

_NEG_INF = float("-inf")


class SearchResult(NamedTuple):
    """The captions a decoding strategy found per image, best first.

    Every strategy (caption_app/inference/strategies.py) returns one; K is its
    `num_results` (beam: the best K finished hypotheses; greedy: 1; sample:
    the K samples, sorted by score).

    Attributes:
      ids: [batch, num_results, max_length] int32, the words after `<start>`,
        the end token included when the caption finished; 0 after it.
      scores: [batch, num_results] float32, `log_probs / lengths ** alpha`;
        the ranking score.
      log_probs: [batch, num_results] float32, the model's log-probability
        of the caption: the sum of the emitted words' log-probabilities as
        `step_fn` gave them (no temperature, no filtering), end token included.
      lengths: [batch, num_results] int32, emitted words, end token included.

    A slot for which no hypothesis with a finite score exists (the model gives
    probability 0 to every continuation, or there are fewer distinct captions
    than `num_results`) has score and log_prob -inf, length 0 and ids 0.
    """

    ids: tf.Tensor
    scores: tf.Tensor
    log_probs: tf.Tensor
    lengths: tf.Tensor

    @property
    def traces(self) -> None:
        """None: a search run with `trace=True` returns a `TracedSearchResult`."""
        return None


class TracedSearchResult(NamedTuple):
    """A `SearchResult` (the same four fields) and, per caption, the rows `step_fn` traced.

    Attributes:
      traces: [batch, num_results, max_length, D] float32, row t the [D] row
        `step_fn` gave with the log-probabilities word t was chosen from (the
        attention weights behind that word); 0 after the caption's last word
        and in empty slots.
    """

    ids: tf.Tensor
    scores: tf.Tensor
    log_probs: tf.Tensor
    lengths: tf.Tensor
    traces: tf.Tensor


BeamSearchResult = SearchResult  # its name before there were other strategies


def beam_search(step_fn: StepFn, initial_state: Any, *, start_id: int, end_id: int,
                beam_size: int = 3, max_length: int = 20, length_normalization: float = 0.0,
                num_results: int | None = None, words_per_beam: int = 0,
                no_repeat_ngram: int = 0, trace: bool = False) -> SearchResult:
    """Decodes the best captions for a batch of images with beam search.

    Args:
      step_fn: `step_fn(ids, state) -> (log_probs, new_state)`, one decoder
        step. `ids`: [n] int32, the previous word of each row (n = batch *
        beam_size). `state`: the structure of `initial_state`, each tensor
        [n, ...]. Returns `log_probs`: [n, vocab] float, log-probabilities of
        the next word (<= 0, e.g. a log-softmax: the early stop relies on it),
        and `new_state` with the same structure and shapes as `state`.
      initial_state: a nested structure of tensors, each [batch, ...]: the
        decoder state after the image was fed. At least one tensor, so that
        the batch size is known.
      start_id: the id fed at the first step.
      end_id: the id that finishes a hypothesis.
      beam_size: alive hypotheses kept per image, and finished ones too.
      max_length: the most words emitted per hypothesis, end token included.
      length_normalization: alpha >= 0; scores are
        `log_prob / length ** alpha` (0 ranks by raw log-probability, 1 by
        the mean per word).
      num_results: how many hypotheses to return per image; defaults to
        `beam_size`, at most `beam_size`.
      words_per_beam: > 0: each alive hypothesis is continued with only its
        this many most probable words (ties: the lower id); 0: every word.
      trace: `step_fn` returns `(log_probs, new_state, trace)`, trace [n, D]
        float (D static), and the result is a `TracedSearchResult`, whose
        `traces` keeps each caption's rows.

    These are a `DecodeSettings`' values (caption_app/inference/settings.py, whose
    `check` validates them here); `Captioner.generate` takes the object itself.

    Returns:
      A `SearchResult` (with `trace`, a `TracedSearchResult`), best first along axis 1.

    Raises:
      ValueError: on an argument out of range or an empty `initial_state`.
    """
    if num_results is None:
        num_results = beam_size
    _check_arguments(beam_size, max_length, length_normalization, num_results, words_per_beam, no_repeat_ngram)
    leaves = tf.nest.flatten(initial_state)
    if not leaves:
        raise ValueError("initial_state has no tensors, so the batch size is unknown; "
                         "pass at least one [batch, ...] tensor (a dummy one will do)")
    leaves = [tf.convert_to_tensor(x) for x in leaves]
    initial_state = tf.nest.pack_sequence_as(initial_state, leaves)

    k, t_max = beam_size, max_length
    batch = tf.shape(leaves[0])[0]
    alpha = float(length_normalization)

    # Only beam 0 is alive at first: the other beams would repeat it.
    alive_logp = tf.tile(  # [batch, beam]
        tf.constant([[0.0] + [_NEG_INF] * (k - 1)], tf.float32), [batch, 1])
    alive_seq = tf.zeros([batch, k, t_max], tf.int32)  # [batch, beam, time]
    fin_seq = tf.zeros([batch, k, t_max], tf.int32)  # [batch, beam, time]
    fin_score = tf.fill([batch, k], _NEG_INF)  # [batch, beam]
    fin_logp = tf.fill([batch, k], _NEG_INF)  # [batch, beam]
    fin_len = tf.zeros([batch, k], tf.int32)  # [batch, beam]

    def cond(t, alive_seq, alive_logp, state, ids, fin_seq, fin_score, fin_logp, fin_len, *traces):
        del alive_seq, state, ids, fin_seq, fin_logp, fin_len, traces
        return tf.logical_and(
            t < t_max, tf.reduce_any(~_is_done(alive_logp, fin_score, t_max, alpha)))

    def body(t, alive_seq, alive_logp, state, ids, fin_seq, fin_score, fin_logp, fin_len, *traces):
        log_probs, new_state, *step_trace = step_fn(ids, state)
        new_state = _check_state(new_state, state)
        return select(t, log_probs, new_state, state, alive_seq, alive_logp, fin_seq, fin_score, fin_logp, fin_len,
                      *step_trace, *traces)

    def select(t, log_probs, new_state, state, alive_seq, alive_logp, fin_seq, fin_score, fin_logp, fin_len,
               step_trace=None, alive_trace=None, fin_trace=None):
        """Step t's choice from its log_probs [batch * beam, vocab] and new_state ([batch * beam, ...];
        it keeps the static shapes of `state`); with `trace`, step_trace [batch * beam, D] and the
        alive and finished hypotheses' traces [batch, beam, time, D]."""
        log_probs = tf.cast(log_probs, tf.float32)  # [batch * beam, vocab]
        vocab = tf.shape(log_probs)[-1]
        with tf.control_dependencies([tf.debugging.assert_less(
                end_id, vocab, message="beam_search: end_id is not below the vocabulary "
                "size of step_fn's log_probs")]):
            if no_repeat_ngram:
                log_probs = block_repeated_ngrams(
                    log_probs, tf.reshape(alive_seq, [batch * k, t_max]), t, no_repeat_ngram)
            if words_per_beam:
                log_probs = _only_top_words(log_probs, words_per_beam)
            log_probs = tf.reshape(log_probs, [batch, k, vocab])  # [batch, beam, vocab]
        # -inf + finite stays -inf, so beams that are not alive stay dead
        # without producing NaN.
        cand_logp = alive_logp[:, :, None] + log_probs  # [batch, beam, vocab]
        length = t + 1
        position = tf.one_hot(t, t_max, dtype=tf.int32)  # [time]

        # Alive: the best non-ended candidates.
        not_end = tf.not_equal(tf.range(vocab), end_id)  # [vocab]
        open_logp = tf.where(not_end, cand_logp, _NEG_INF)
        top_logp, top_index = tf.math.top_k(
            tf.reshape(open_logp, [batch, k * vocab]), k=k)  # [batch, beam]
        parent = top_index // vocab  # [batch, beam]
        word = top_index % vocab  # [batch, beam]
        top_seq = (tf.gather(alive_seq, parent, batch_dims=1)
                   + word[:, :, None] * position)  # [batch, beam, time]

        # Finished candidates: every alive beam followed by end_id ...
        end_logp = cand_logp[:, :, end_id]  # [batch, beam]
        end_seq = alive_seq + end_id * position  # [batch, beam, time]
        # ... and, at the last step, the alive ones, truncated.
        is_last = tf.equal(length, t_max)
        trunc_logp = tf.where(is_last, top_logp, _NEG_INF)  # [batch, beam]
        norm = tf.pow(tf.cast(length, tf.float32), alpha)
        candidates = dict(
            seqs=[fin_seq, end_seq, top_seq],
            scores=[fin_score, end_logp / norm, trunc_logp / norm],
            logps=[fin_logp, end_logp, trunc_logp],
            lengths=[fin_len, tf.fill([batch, k], length), tf.fill([batch, k], length)])
        traces = ()
        if trace:
            # Each beam's trace with this step's row at t (as end_seq), then reordered as top_seq.
            step_trace = tf.reshape(tf.cast(step_trace, tf.float32), [batch, k, -1])  # [batch, beam, D]
            end_trace = alive_trace + step_trace[:, :, None, :] * tf.cast(position, tf.float32)[:, None]
            top_trace = tf.gather(end_trace, parent, batch_dims=1)  # [batch, beam, time, D]
            fin_seq, fin_score, fin_logp, fin_len, fin_trace = _keep_best(
                k, **candidates, traces=[fin_trace, end_trace, top_trace])
            traces = (tf.ensure_shape(top_trace, alive_trace.shape), tf.ensure_shape(fin_trace, alive_trace.shape))
        else:
            fin_seq, fin_score, fin_logp, fin_len = _keep_best(k, **candidates)

        # Each surviving hypothesis continues from its parent's state; the
        # static shapes must not loosen across iterations.
        state = tf.nest.map_structure(
            lambda new, old: tf.ensure_shape(_gather_beams(new, parent, batch, k), old.shape),
            new_state, state)
        ids = tf.reshape(word, [-1])
        return (t + 1, top_seq, top_logp, state, ids, fin_seq, fin_score, fin_logp, fin_len, *traces)

    # Step 0 once per image: [batch] rows, repeated for the beams (each [batch * beam, ...]).
    first_logp, first_state, *first_trace = step_fn(tf.fill([batch], tf.constant(start_id, tf.int32)),
                                                    initial_state)
    first_state = _check_state(first_state, initial_state)
    first_logp = tf.repeat(tf.cast(first_logp, tf.float32), k, axis=0)  # [batch * beam, vocab]
    first_state = tf.nest.map_structure(lambda x: tf.repeat(x, k, axis=0), first_state)
    traces = []
    if trace:
        first_trace = tf.repeat(tf.cast(first_trace[0], tf.float32), k, axis=0)  # [batch * beam, D]
        no_trace = tf.zeros([batch, k, t_max, first_trace.shape[-1]], tf.float32)  # [batch, beam, time, D]
        traces = [first_trace, no_trace, no_trace]
    loop_vars = select(tf.constant(0, tf.int32), first_logp, first_state, first_state, alive_seq, alive_logp,
                       fin_seq, fin_score, fin_logp, fin_len, *traces)
    (_, _, _, _, _, fin_seq, fin_score, fin_logp, fin_len, *traces) = tf.while_loop(
        cond, body, loop_vars, maximum_iterations=t_max)

    # Already sorted best first by top_k.
    seq = fin_seq[:, :num_results]  # [batch, num_results, time]
    score = fin_score[:, :num_results]  # [batch, num_results]
    logp = fin_logp[:, :num_results]
    length = fin_len[:, :num_results]
    valid = score > _NEG_INF  # [batch, num_results]
    result = SearchResult(
        ids=tf.where(valid[:, :, None], seq, 0),
        scores=score,
        log_probs=tf.where(valid, logp, _NEG_INF),
        lengths=tf.where(valid, length, 0))
    return with_traces(result, traces[1][:, :num_results]) if trace else result


def _check_arguments(beam_size, max_length, length_normalization, num_results, words_per_beam, no_repeat_ngram):
    DecodeSettings(beam_size=beam_size, max_length=max_length, length_normalization=length_normalization,
                   num_captions=num_results, words_per_beam=words_per_beam, no_repeat_ngram=no_repeat_ngram).check()


def _only_top_words(log_probs, w):
    """[n, vocab] -> the same with all but each row's w largest set to -inf (top_k: ties keep the lower id)."""
    vocab = tf.shape(log_probs)[-1]
    _, keep = tf.math.top_k(log_probs, k=tf.minimum(w, vocab))  # [n, w]
    kept = tf.reduce_max(tf.one_hot(keep, vocab, dtype=tf.int32), axis=1) > 0  # [n, vocab]
    return tf.where(kept, log_probs, _NEG_INF)


def _is_done(alive_logp, fin_score, max_length, alpha):
    """Whether no alive hypothesis can still enter the finished set.

    A hypothesis alive with log-probability `lp` (<= 0) finishes with some
    `lp' <= lp` and length `L <= max_length`, so its score is
    `lp' / L**alpha <= lp' / max_length**alpha <= lp / max_length**alpha` for
    alpha >= 0. The inequalities hold only because log-probabilities are <= 0
    and more words never raise them.

    Args:
      alive_logp: [batch, beam], sorted best first.
      fin_score: [batch, beam], sorted best first; -inf in empty slots.
    Returns:
      [batch] bool.
    """
    bound = alive_logp[:, 0] / float(max_length) ** alpha  # [batch]
    worst = fin_score[:, -1]  # [batch]; -inf until the finished set is full
    # Strict, so an alive hypothesis that could tie is still played out.
    return tf.logical_or(bound < worst, tf.equal(bound, _NEG_INF))


def _keep_best(k, seqs, scores, logps, lengths, traces=None):
    """Keeps the k best by score of several [batch, m_i(, time(, D))] candidate groups."""
    score = tf.concat(scores, axis=1)  # [batch, m]
    best_score, index = tf.math.top_k(score, k=k)  # [batch, k]
    seq = tf.gather(tf.concat(seqs, axis=1), index, batch_dims=1)  # [batch, k, time]
    logp = tf.gather(tf.concat(logps, axis=1), index, batch_dims=1)
    length = tf.gather(tf.concat(lengths, axis=1), index, batch_dims=1)
    if traces is None:
        return seq, best_score, logp, length
    return seq, best_score, logp, length, tf.gather(tf.concat(traces, axis=1), index, batch_dims=1)


def with_traces(result: SearchResult, traces) -> TracedSearchResult:
    """`result` and its captions' traces [batch, K, time, D], with the rows after each caption's
    last word and every row of an empty slot (length 0) set to 0."""
    within = tf.range(tf.shape(traces)[2])[None, None, :] < result.lengths[:, :, None]  # [batch, K, time]
    return TracedSearchResult(*result, traces=tf.where(within[..., None], traces, 0.0))


def _gather_beams(x, parent, batch, k):
    """[batch * beam, ...] rows reordered by parent [batch, beam] -> [batch * beam, ...]."""
    inner = tf.shape(x)[1:]
    x = tf.reshape(x, tf.concat([[batch, k], inner], axis=0))  # [batch, beam, ...]
    x = tf.gather(x, parent, batch_dims=1)
    return tf.reshape(x, tf.concat([[batch * k], inner], axis=0))


def _check_state(new_state, state):
    """new_state must mirror state, or the while loop fails with a cryptic error."""
    try:
        tf.nest.assert_same_structure(new_state, state)
    except (ValueError, TypeError) as e:
        raise ValueError("beam_search: step_fn must return a new_state with the structure of "
                         f"the state it was given: {e}") from e
    new_leaves = [tf.convert_to_tensor(x) for x in tf.nest.flatten(new_state)]
    for i, (new, old) in enumerate(zip(new_leaves, tf.nest.flatten(state))):
        if not new.shape.is_compatible_with(old.shape) or new.dtype != old.dtype:
            raise ValueError(f"beam_search: step_fn returned state tensor #{i} as "
                             f"{new.dtype.name}{new.shape}, but was given "
                             f"{old.dtype.name}{old.shape}; keep each state tensor's "
                             "dtype and shape")
    return tf.nest.pack_sequence_as(state, new_leaves)
