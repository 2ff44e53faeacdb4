"""Decoding strategies: named, serializable objects that turn a decoder step into captions.

Like KerasHub's samplers, a strategy is chosen once and passed around: `Beam`
(caption_app/inference/beam_search.py), `Greedy` and `Sample`, each with a
`name`, `get_config()` (`from_config` inverts it) and one method,
`search(step_fn, initial_state, ...) -> SearchResult`. `DecodeSettings.to_strategy`
(caption_app/inference/settings.py) is the one place settings become a strategy.

All three run in-graph with core TensorFlow ops only: eagerly, inside
`tf.function` with an unknown batch size, and in TF Serving, a TF1 Session or
TF's C++ SavedModel loader. In particular sampling uses no random op at all:
its uniforms are a counter-based integer hash of (seed, sample, step), so an
image's samples depend only on its own seed, never on the batch it was served
in (TF Serving batches requests together).

The model is reached only through `step_fn(ids, state) -> (log_probs,
new_state)` (see `beam_search`), so tests drive every strategy with a fake
next-word table. With `trace=True` it also returns a [n, D] row per step (the
attention weights), and every strategy gives each caption the rows of the steps
that chose its words (`TracedSearchResult.traces`), from the same search.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import tensorflow as tf

from caption_app.inference.beam_search import SearchResult, StepFn, _check_state, beam_search, with_traces
from caption_app.inference.ngram_blocking import block_repeated_ngrams
from caption_app.inference.settings import DEFAULT_NUM_SAMPLES, DecodeSettings, DecodeSettingsError

__all__ = ["SearchResult", "Strategy", "Beam", "Greedy", "Sample", "STRATEGIES", "get", "from_config"]

_NEG_INF = float("-inf")


class Strategy:
    """A decoding strategy: how the next word is chosen, and how many captions come back.

    Subclasses set `name`, implement `get_config` (its keys are the
    constructor's arguments, plus "name") and `search`.
    """

    name: str = ""

    @property
    def num_results(self) -> int:
        """K: captions returned per image."""
        raise NotImplementedError

    def get_config(self) -> dict:
        """{"name": ..., constructor argument: value}; `from_config` rebuilds the strategy."""
        raise NotImplementedError

    def search(self, step_fn: StepFn, initial_state: Any, *, start_id: int, end_id: int, max_length: int,
               seeds: tf.Tensor | None = None, trace: bool = False) -> SearchResult:
        """Decodes captions for a batch of images.

        Args:
          step_fn: `step_fn(ids, state) -> (log_probs, new_state)`, one decoder
            step on [n] rows (see `beam_search`).
          initial_state: a nested structure of [batch, ...] tensors, at least one.
          start_id: the id fed at the first step.
          end_id: the id that finishes a caption.
          max_length: the most words per caption, <end> included.
          seeds: [batch] int32 or int64, one seed per image (only `Sample`
            uses them; None: its own `seed` for every image).
          trace: `step_fn` returns `(log_probs, new_state, trace [n, D])` and the
            result is a `TracedSearchResult`: its `traces` [batch, K, max_length, D]
            hold each caption's rows.

        Returns:
          A `SearchResult` with `num_results` captions per image, best first.
        """
        raise NotImplementedError

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and other.get_config() == self.get_config()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.get_config().items())))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class Beam(Strategy):
    """Beam search: the `num_results` best captions by score (`beam_search`).

    Args:
      beam_size: hypotheses kept alive (and finished) per image.
      num_results: captions returned per image, <= beam_size (None: beam_size).
      length_normalization: alpha >= 0; score = log_prob / length ** alpha.
      words_per_beam: > 0: each hypothesis continues with only its this many
        most probable words (im2txt); 0: every word.
      no_repeat_ngram: n > 0: no hypothesis repeats one of its n-grams; 0: off.
    """

    name = "beam"

    def __init__(self, beam_size: int = 3, num_results: int | None = None, length_normalization: float = 0.0,
                 words_per_beam: int = 0, no_repeat_ngram: int = 0):
        num_results = beam_size if num_results is None else num_results
        DecodeSettings(strategy="beam", beam_size=beam_size, num_captions=num_results,
                       length_normalization=length_normalization, words_per_beam=words_per_beam,
                       no_repeat_ngram=no_repeat_ngram).check()
        self.beam_size, self._num_results = beam_size, num_results
        self.length_normalization, self.words_per_beam = float(length_normalization), words_per_beam
        self.no_repeat_ngram = no_repeat_ngram

    @property
    def num_results(self) -> int:
        return self._num_results

    def get_config(self) -> dict:
        return {"name": self.name, "beam_size": self.beam_size, "num_results": self.num_results,
                "length_normalization": self.length_normalization, "words_per_beam": self.words_per_beam,
                "no_repeat_ngram": self.no_repeat_ngram}

    def search(self, step_fn, initial_state, *, start_id, end_id, max_length, seeds=None,
               trace=False) -> SearchResult:
        del seeds  # deterministic
        return beam_search(step_fn, initial_state, start_id=start_id, end_id=end_id, beam_size=self.beam_size,
                           max_length=max_length, length_normalization=self.length_normalization,
                           num_results=self.num_results, words_per_beam=self.words_per_beam,
                           no_repeat_ngram=self.no_repeat_ngram, trace=trace)


class Greedy(Strategy):
    """Greedy decoding: the most probable next word at every step, one caption per image.

    Cheaper than `Beam(beam_size=1)` (one row per image, an argmax instead of
    a top-k and gathers), and not always the same caption: beam search also
    keeps the best caption that *ended* along the way, greedy follows its
    path to the end (they agree when the end of the path scores best).
    Ties go to the lower word id.

    Args:
      length_normalization: alpha >= 0; only the reported score uses it.
      no_repeat_ngram: n > 0: never repeat one of the caption's n-grams; 0: off.
    """

    name = "greedy"

    def __init__(self, length_normalization: float = 0.0, no_repeat_ngram: int = 0):
        DecodeSettings(strategy="greedy", num_captions=1, length_normalization=length_normalization,
                       no_repeat_ngram=no_repeat_ngram).check()
        self.length_normalization, self.no_repeat_ngram = float(length_normalization), no_repeat_ngram

    @property
    def num_results(self) -> int:
        return 1

    def get_config(self) -> dict:
        return {"name": self.name, "length_normalization": self.length_normalization,
                "no_repeat_ngram": self.no_repeat_ngram}

    def search(self, step_fn, initial_state, *, start_id, end_id, max_length, seeds=None,
               trace=False) -> SearchResult:
        del seeds  # deterministic

        def choose(t, scores):
            del t
            return tf.argmax(scores, axis=-1, output_type=tf.int32)  # ties: the lower id

        return _row_search(step_fn, initial_state, choose, samples=1, start_id=start_id, end_id=end_id,
                           max_length=max_length, alpha=self.length_normalization,
                           no_repeat_ngram=self.no_repeat_ngram, trace=trace)


class Sample(Strategy):
    """Sampling: `num_samples` captions drawn per image, sorted best first by score.

    Each step divides the log-probabilities by `temperature`, keeps the
    `top_k` most probable words (0: all; words tied with the k-th are kept
    too), then the nucleus: the most probable words whose tempered probability
    (renormalized over what top-k kept) reaches `top_p` (1: all; at least one
    word; words tied with the last one kept are kept too), and draws the next
    word from what is left. A caption ends at `<end>` or at `max_length`
    words. Its `log_probs` are the model's (temperature 1, no filtering).

    The draw inverts the cumulative distribution: the first word (by id)
    whose cumulative probability exceeds u, with u in (0, 1) a hash of
    (s, k, t) for sample k of an image with seed s at step t. So the same
    image and seed give the same captions in any batch, at any position,
    eagerly, in a graph or in TF Serving (as long as the model gives that
    image the same log-probabilities there). One uniform per row and step,
    all made before the loop: a Gumbel-max draw would hash every word of
    every row at every step, and two logarithms each (the first version did;
    its draw cost more than the rest of the loop). Seeds are taken modulo
    2**32.

    Args:
      num_samples: K, captions drawn per image.
      temperature: > 0; < 1 sharpens the distribution, > 1 flattens it.
      top_k: >= 0, 0: off.
      top_p: in (0, 1], 1: off.
      length_normalization: alpha >= 0; score = log_prob / length ** alpha.
      no_repeat_ngram: n > 0: never repeat one of the caption's n-grams; 0: off.
      seed: the seed of every image when `search` is given no `seeds`.
    """

    name = "sample"

    def __init__(self, num_samples: int = DEFAULT_NUM_SAMPLES, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, length_normalization: float = 0.0, no_repeat_ngram: int = 0, seed: int = 0):
        DecodeSettings(strategy="sample", num_captions=num_samples, temperature=temperature, top_k=top_k,
                       top_p=top_p, length_normalization=length_normalization, no_repeat_ngram=no_repeat_ngram,
                       seed=seed).check()
        self.num_samples, self.temperature, self.top_k, self.top_p = num_samples, float(temperature), top_k, \
            float(top_p)
        self.length_normalization, self.no_repeat_ngram, self.seed = float(length_normalization), \
            no_repeat_ngram, seed

    @property
    def num_results(self) -> int:
        return self.num_samples

    def get_config(self) -> dict:
        return {"name": self.name, "num_samples": self.num_samples, "temperature": self.temperature,
                "top_k": self.top_k, "top_p": self.top_p, "length_normalization": self.length_normalization,
                "no_repeat_ngram": self.no_repeat_ngram, "seed": self.seed}

    def search(self, step_fn, initial_state, *, start_id, end_id, max_length, seeds=None,
               trace=False) -> SearchResult:
        k = self.num_samples
        batch = _batch_size(initial_state)
        if seeds is None:
            seeds = tf.fill([batch], tf.constant(self.seed & _MASK32, tf.int64))
        seeds = tf.bitwise.bitwise_and(tf.cast(seeds, tf.int64), _MASK32)  # [batch], modulo 2**32
        with tf.control_dependencies([tf.debugging.assert_equal(
                tf.size(seeds), batch, message="Sample.search: seeds must hold one seed per image")]):
            seeds = tf.identity(seeds)
        uniforms = _uniforms(seeds, k, max_length)  # [batch * K, time]

        def choose(t, scores):
            if self.temperature != 1.0:
                scores = scores / self.temperature
            if self.top_k or self.top_p < 1.0:
                scores = _keep_top(scores, self.top_k, self.top_p)
            return _draw(scores, tf.gather(uniforms, t, axis=1))

        return _row_search(step_fn, initial_state, choose, samples=k, start_id=start_id, end_id=end_id,
                           max_length=max_length, alpha=self.length_normalization,
                           no_repeat_ngram=self.no_repeat_ngram, trace=trace)


STRATEGIES: dict[str, type[Strategy]] = {"beam": Beam, "greedy": Greedy, "sample": Sample}


def get(name: str, **options) -> Strategy:
    """The strategy called `name` ("beam", "greedy", "sample") built with `options`.

    Raises:
      DecodeSettingsError: on an unknown name, or an option out of range.
    """
    if name not in STRATEGIES:
        raise DecodeSettingsError(f"unknown decoding strategy {name!r}; the strategies are "
                                  f"{', '.join(STRATEGIES)} (--strategy)")
    cls = STRATEGIES[name]
    known = set(inspect.signature(cls).parameters)
    if set(options) - known:
        raise DecodeSettingsError(f"strategy {name!r} has no option {', '.join(sorted(set(options) - known))}; "
                                  f"its options are {', '.join(sorted(known))}")
    return cls(**options)


def from_config(config: dict) -> Strategy:
    """The inverse of `Strategy.get_config`: {"name": ..., options...} -> the strategy."""
    options = dict(config)
    if "name" not in options:
        raise DecodeSettingsError(f"a strategy config needs a 'name' ({', '.join(STRATEGIES)}), got {config!r}")
    return get(options.pop("name"), **options)


# ---------------------------------------------------------------- greedy and sample: one row per caption


ChooseFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def _batch_size(initial_state) -> tf.Tensor:
    leaves = tf.nest.flatten(initial_state)
    if not leaves:
        raise ValueError("initial_state has no tensors, so the batch size is unknown; "
                         "pass at least one [batch, ...] tensor (a dummy one will do)")
    return tf.shape(tf.convert_to_tensor(leaves[0]))[0]


def _row_search(step_fn: StepFn, initial_state: Any, choose: ChooseFn, *, samples: int, start_id: int,
                end_id: int, max_length: int, alpha: float, no_repeat_ngram: int, trace: bool = False) -> SearchResult:
    """Decodes `samples` captions per image, one row each, one chosen word per row and step.

    `choose(t, scores)` picks each row's word ([rows] int32) from `scores`
    ([rows, vocab]: the step's log-probabilities with the repeated n-grams
    at -inf). A row is finished once it emitted `end_id`; after that it emits
    0 and its log-probability is frozen. A row whose every word is -inf
    (nothing left to say) finishes with log-probability -inf, and comes back
    as an empty slot (score -inf, length 0, ids 0), as in beam search. The
    loop stops at `max_length` (the unfinished captions are truncated there)
    or when every row has finished.

    `step_fn` runs once per *distinct unfinished prefix*, not once per row:
    rows of one image with the same words so far have the same state and
    log-probabilities, and finished rows need none. The first step runs once
    per image; the samples of a confident model share their first words; and
    rows that ended stop costing anything (bench/strategies.py: with the
    cheaper draw, it took 5 samples from 2.0x a 3-beam search's time to about
    1.5x, which is what the model's calls alone cost). Rows of different
    images never share a prefix, so an image's captions do not depend on the
    others in the batch. `step_fn` must therefore be a function of its
    inputs only (as beam search already assumes of its first step).

    With `trace`, each prefix's [D] row from `step_fn` is copied to the rows that
    share the prefix (the gather by `prefix` their log-probabilities go through),
    at the step where the row emits a word.
    """
    DecodeSettings(max_length=max_length, num_captions=1).check()  # the one range check of max_length
    batch = _batch_size(initial_state)
    leaves = [tf.convert_to_tensor(x) for x in tf.nest.flatten(initial_state)]
    initial_state = tf.nest.pack_sequence_as(initial_state, leaves)
    k, t_max = samples, max_length
    rows = batch * k

    def advance(t, log_probs, seq, logp, done, length):
        """Step t: every unfinished row emits the word `choose` picks from its log_probs [rows, vocab]."""
        scores = block_repeated_ngrams(log_probs, seq, t, no_repeat_ngram)
        word = choose(t, scores)  # [rows]
        # The model's log-probability of the word (temperature 1, unfiltered); -inf where the row had
        # no allowed word (then `word` is any index, and the row dies).
        word_logp = tf.gather(log_probs, word, batch_dims=1)  # [rows]
        allowed = (tf.gather(scores, word, batch_dims=1) if no_repeat_ngram else word_logp) > _NEG_INF  # [rows]
        word_logp = tf.where(allowed, word_logp, _NEG_INF)
        word = tf.where(done | ~allowed, 0, word)
        logp = tf.where(done, logp, logp + word_logp)
        length = tf.where(done | ~allowed, length, t + 1)
        seq = seq + word[:, None] * tf.one_hot(t, t_max, dtype=tf.int32)  # [rows, time]
        done = done | ~allowed | tf.equal(word, end_id)
        return t + 1, seq, logp, done, length, word

    def regroup(prefix, word, done, vocab, state):
        """The distinct unfinished prefixes after this step's words.

        Args:
          prefix: [rows] int32, each row's prefix before the step: an index into `state`'s rows.
          word: [rows] int32, the word each row emitted.
          done: [rows] bool, the rows finished after the step.
          state: each tensor [prefixes, ...], the state after feeding each prefix.
        Returns:
          (prefix [rows] (finished rows: 0), ids [m] (the last word of each new prefix), state [m, ...]).
        """
        live = tf.cast(tf.where(~done)[:, 0], tf.int32)  # [live]
        key = (tf.cast(tf.gather(prefix, live), tf.int64) * tf.cast(vocab, tf.int64)
               + tf.cast(tf.gather(word, live), tf.int64))  # [live]; distinct per (old prefix, word)
        unique, index = tf.unique(key, out_idx=tf.int32)  # [m], [live]
        parent = tf.cast(unique // tf.cast(vocab, tf.int64), tf.int32)  # [m]
        ids = tf.cast(unique % tf.cast(vocab, tf.int64), tf.int32)  # [m]
        state = tf.nest.map_structure(lambda x: tf.gather(x, parent), state)  # each [m, ...]
        prefix = tf.tensor_scatter_nd_update(tf.zeros_like(word), live[:, None], index)  # [rows]
        return prefix, ids, state

    def record(t, traces, step_trace, prefix, length):
        """traces [rows, time, D] with row t set to the step's [m, D] row of each row's prefix where the
        row emitted a word at step t (its length became t + 1)."""
        rows_trace = tf.gather(tf.cast(step_trace, tf.float32), prefix)  # [rows, D]
        at_t = tf.one_hot(t, t_max, dtype=tf.float32)[None, :, None] * rows_trace[:, None, :]  # [rows, time, D]
        return traces + tf.where(tf.equal(length, t + 1)[:, None, None], at_t, 0.0)

    def cond(t, seq, logp, done, length, prefix, ids, state, *traces):
        del seq, logp, length, prefix, ids, state, traces
        return tf.logical_and(t < t_max, tf.reduce_any(~done))

    def body(t, seq, logp, done, length, prefix, ids, state, *traces):
        log_probs, new_state, *step_trace = step_fn(ids, state)  # [m, vocab], the distinct prefixes' rows
        new_state = _check_state(new_state, state)
        # The number of prefixes changes from step to step; the other dimensions must not loosen.
        new_state = tf.nest.map_structure(lambda new, old: tf.ensure_shape(new, [None] + old.shape[1:]),
                                          new_state, state)
        log_probs = tf.cast(log_probs, tf.float32)
        step = t
        t, seq, logp, done, length, word = advance(t, tf.gather(log_probs, prefix), seq, logp, done, length)
        if trace:
            traces = (tf.ensure_shape(record(step, traces[0], step_trace[0], prefix, length), traces[0].shape),)
        return (t, seq, logp, done, length, *regroup(prefix, word, done, tf.shape(log_probs)[-1], new_state),
                *traces)

    # Step 0 once per image: prefix b is image b's <start>, shared by its K rows (row b * K + i).
    first_logp, state, *first_trace = step_fn(tf.fill([batch], tf.constant(start_id, tf.int32)), initial_state)
    state = _check_state(state, initial_state)
    first_logp = tf.cast(first_logp, tf.float32)  # [batch, vocab]
    vocab = tf.shape(first_logp)[-1]
    with tf.control_dependencies([tf.debugging.assert_less(  # once: the vocabulary does not change
            end_id, vocab, message="search: end_id is not below the vocabulary size of step_fn's log_probs")]):
        prefix = tf.range(rows, dtype=tf.int32) // k  # [rows]
    t, seq, logp, done, length, word = advance(
        tf.constant(0, tf.int32), tf.gather(first_logp, prefix),
        tf.zeros(tf.stack([rows, t_max]), tf.int32),  # seq [rows, time]
        tf.zeros([rows], tf.float32),  # logp [rows]
        tf.zeros([rows], tf.bool),  # done [rows]
        tf.zeros([rows], tf.int32))  # length [rows]
    traces = ()
    if trace:  # [rows, time, D]
        no_trace = tf.zeros([rows, t_max, first_trace[0].shape[-1]], tf.float32)
        traces = (record(tf.constant(0, tf.int32), no_trace, first_trace[0], prefix, length),)
    loop_vars = (t, seq, logp, done, length, *regroup(prefix, word, done, vocab, state), *traces)
    _, seq, logp, _, length, _, _, _, *traces = tf.while_loop(cond, body, loop_vars, maximum_iterations=t_max)

    score = logp / tf.pow(tf.cast(tf.maximum(length, 1), tf.float32), float(alpha))  # [rows]
    score, logp, length = (tf.reshape(x, [batch, k]) for x in (score, logp, length))  # [batch, K]
    seq = tf.reshape(seq, [batch, k, t_max])  # [batch, K, time]
    traces = [tf.reshape(x, [batch, k, t_max, -1]) for x in traces]  # [batch, K, time, D]
    if k > 1:  # best first; top_k keeps the lower sample index on ties
        score, order = tf.math.top_k(score, k=k)
        seq, logp, length, *traces = (tf.gather(x, order, batch_dims=1) for x in (seq, logp, length, *traces))
    valid = score > _NEG_INF  # [batch, K]
    result = SearchResult(ids=tf.where(valid[:, :, None], seq, 0), scores=score,
                          log_probs=tf.where(valid, logp, _NEG_INF), lengths=tf.where(valid, length, 0))
    return with_traces(result, traces[0]) if trace else result


# ---------------------------------------------------------------- sampling: filters


def _keep_top(logits, top_k: int, top_p: float):
    """[rows, vocab] -> the same with every word outside each row's top-k and nucleus at -inf.

    top-k (> 0): the k largest logits; words tied with the k-th are kept
    too. top-p (< 1): of those (renormalized), the most probable words, in
    order, while the probability of the words before them is below top_p:
    so at least the most probable word, and the smallest such set whose mass
    reaches top_p; words tied with the least probable one kept are kept
    too. Both end in one threshold per row, so this is one `top_k` (or one
    sort, for top-p alone) and one `where`, with no scatter.
    """
    if top_k:
        ordered = tf.math.top_k(logits, k=tf.minimum(top_k, tf.shape(logits)[-1])).values  # [rows, k], descending
    else:
        ordered = tf.sort(logits, axis=-1, direction="DESCENDING")  # [rows, vocab]
    threshold = ordered[:, -1:]  # [rows, 1]
    if top_p < 1.0:
        weights = tf.exp(ordered - ordered[:, :1])  # unnormalized probabilities, the largest 1
        before = tf.math.cumsum(weights, axis=-1, exclusive=True)  # [rows, k or vocab]
        kept = tf.where(before < top_p * tf.reduce_sum(weights, axis=-1, keepdims=True), ordered, float("inf"))
        threshold = tf.reduce_min(kept, axis=-1, keepdims=True)  # [rows, 1]
    return tf.where(logits >= threshold, logits, _NEG_INF)


# ---------------------------------------------------------------- sampling: counter-based noise
#
# Integers are int64 holding 32-bit values, so that the arithmetic is plain core ops (Mul, BitwiseXor,
# RightShift, LeftShift on int64 all have CPU kernels) and no product can overflow a signed int64:
# `_mul32` multiplies in 16-bit halves.

_MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9  # 2**32 / golden ratio, odd: multiplying by it is a bijection mod 2**32


def _mul32(x, c: int):
    """(x * c) mod 2**32 for int64 x in [0, 2**32) and a constant c in [0, 2**32); products stay < 2**49."""
    lo = tf.bitwise.bitwise_and(x, 0xFFFF) * c  # < 2**16 * 2**32
    hi = tf.bitwise.left_shift(tf.bitwise.right_shift(x, 16) * (c & 0xFFFF), 16)  # < 2**32 * 2**16
    return tf.bitwise.bitwise_and(lo + hi, _MASK32)


def _xor(a, b):
    return tf.bitwise.bitwise_xor(a, b)


def _fmix32(h):
    """murmur3's finalizer: a bijection of 32-bit values in which every input bit flips half the output bits."""
    h = _xor(h, tf.bitwise.right_shift(h, 16))
    h = _mul32(h, 0x85EBCA6B)
    h = _xor(h, tf.bitwise.right_shift(h, 13))
    h = _mul32(h, 0xC2B2AE35)
    return _xor(h, tf.bitwise.right_shift(h, 16))


def _py_fmix32(h: int) -> int:
    """`_fmix32` on a Python int, for constants."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _MASK32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _MASK32
    return h ^ (h >> 16)


def _uniforms(seeds, samples: int, max_length: int):
    """[batch * samples, max_length] float32 in (0, 1): row b * samples + k, column t is a hash of
    (seeds[b], k, t) only.

    Args:
      seeds: [batch] int64 in [0, 2**32).
    """
    batch = tf.shape(seeds)[0]
    row_seed = tf.repeat(seeds, samples)  # [rows]
    row_sample = tf.tile(tf.range(samples, dtype=tf.int64), [batch])  # [rows]
    row_key = _fmix32(_xor(_mul32(_fmix32(row_seed), _GOLDEN), row_sample))  # [rows]
    step_key = tf.constant([_py_fmix32((t + 1) * 0x27D4EB2F & _MASK32) for t in range(max_length)],
                           tf.int64)  # [time]
    bits = _fmix32(_xor(row_key[:, None], step_key[None, :]))  # [rows, time]
    # The top 23 bits: (m + 0.5) / 2**23 is exact in float32 and never 0 or 1.
    return (tf.cast(tf.bitwise.right_shift(bits, 9), tf.float32) + 0.5) * (2.0 ** -23)


def _draw(logits, u):
    """The first word whose cumulative probability (softmax of `logits` [rows, vocab]) exceeds u [rows].

    A word of probability 0 never raises the cumulative sum, so it is never drawn. A row whose logits are
    all -inf (nothing allowed) gets NaN probabilities and word 0, which the caller reads as "nothing to say".
    The probabilities are left unnormalized (u is scaled by their sum instead): exp(logits - max) is a
    third of the cost of a softmax here (bench/strategies.py).
    """
    weights = tf.exp(logits - tf.reduce_max(logits, axis=-1, keepdims=True))  # [rows, vocab]; max 1, no underflow
    cdf = tf.math.cumsum(weights, axis=-1)  # [rows, vocab]
    # u < 1, so u * total rounds to at most total = cdf[:, -1]: the count stays below vocab.
    below = tf.cast(cdf < (u * cdf[:, -1])[:, None], tf.int32)  # [rows, vocab]; 1 before the drawn word
    return tf.reduce_sum(below, axis=-1)  # [rows]
