"""im2txt's way of decoding, for the benchmark only: one image at a time, a Python loop over steps.

im2txt's CaptionGenerator fed one image's live partial captions to the
inference graph per step (a `sess.run` each), took each beam's top words in
NumPy and kept the best `beam_size` partial and complete captions in heaps.
This is that loop over the same step function the in-graph
`caption_app.inference.beam_search` uses, so the benchmark compares the decoding
strategy, not the model. Same semantics as the in-graph search without length
normalization (score = sum of log-probabilities): alive hypotheses are the
best non-ending candidates, finished ones compete with the finished set.
"""

from __future__ import annotations

import heapq

import numpy as np


def python_beam_search(encode, step, image, *, start_id: int, end_id: int, beam_size: int = 3,
                       max_length: int = 20) -> list[tuple[float, list[int]]]:
    """Beam search for ONE image.

    Args:
      encode: images [1, S, S, 3] -> state (list of [1, H] tensors).
      step: (ids [n] int32, state: list of [n, H]) -> (log_probs [n, V], new state).
      image: [S, S, 3] float32.
    Returns:
      The finished captions, best first: [(log_prob, word ids incl. end)], at most beam_size.
    """
    state = [np.asarray(s) for s in encode(image[None])]
    alive = [(0.0, [], [s[0] for s in state])]  # (log_prob, words, per-hypothesis state)
    finished: list[tuple[float, list[int]]] = []
    for t in range(max_length):
        ids = np.array([words[-1] if words else start_id for _, words, _ in alive], np.int32)
        batch_state = [np.stack([h[2][i] for h in alive]) for i in range(len(state))]
        log_probs, new_state = step(ids, batch_state)
        log_probs, new_state = np.asarray(log_probs), [np.asarray(s) for s in new_state]
        candidates = []
        for row, (score, words, _) in enumerate(alive):
            # beam_size + 1 best words per hypothesis (enough for beam_size non-ending ones) and <end>.
            top = set(np.argpartition(-log_probs[row], beam_size)[:beam_size + 1].tolist()) | {end_id}
            for word in sorted(top):
                candidates.append((score + float(log_probs[row, word]), words + [int(word)],
                                   [s[row] for s in new_state]))
        last = t == max_length - 1
        ending = [c for c in candidates if c[1][-1] == end_id or last]
        finished = heapq.nlargest(beam_size, finished + [(c[0], c[1]) for c in ending], key=lambda c: c[0])
        alive = heapq.nlargest(beam_size, [c for c in candidates if c[1][-1] != end_id], key=lambda c: c[0])
        # No alive hypothesis can beat the worst kept finished one (log-probs only fall).
        if not alive or (len(finished) == beam_size and alive[0][0] <= finished[-1][0]):
            break
    return finished
