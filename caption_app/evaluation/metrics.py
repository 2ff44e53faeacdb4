"""COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr) and perplexity.

A thin wrapper over pycocoevalcap, whose numbers are the ones papers report.
With `java` on PATH, captions are tokenized with its Stanford PTBTokenizer
and METEOR runs. Without java, a Python tokenizer stands in (lower-case,
punctuation to spaces, whitespace split, as the vocabulary does) and METEOR is
skipped; the returned notes say so, since such numbers are close to, but not
exactly, the official ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import re
import shutil
import subprocess
from typing import Mapping, Sequence

METRIC_KEYS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")

NO_JAVA_NOTE = ("METEOR skipped: java not found on PATH "
                "(install a JRE, e.g. apt-get install default-jre-headless)")

# Letters, digits, apostrophes and whitespace survive; the rest splits words.
_PUNCTUATION = re.compile(r"[^\w\s']|_")


@dataclasses.dataclass(frozen=True)
class CaptionScores:
    """What `score_captions` returns: the corpus metrics, the notes, and each image's CIDEr."""
    metrics: dict  # every name in METRIC_KEYS -> a float, or None when it could not be computed
    notes: list  # sentences saying what was skipped or substituted, and why
    per_image_cider: dict  # image id -> its CIDEr (the corpus CIDEr is their mean)


def caption_metrics(references: Mapping[str, Sequence[str]], candidates: Mapping[str, str], *,
                    use_java: bool | None = None) -> tuple[dict, list[str]]:
    """`(metrics, notes)` of `score_captions` (see there)."""
    scores = score_captions(references, candidates, use_java=use_java)
    return scores.metrics, scores.notes


def score_captions(references: Mapping[str, Sequence[str]], candidates: Mapping[str, str], *,
                   use_java: bool | None = None) -> CaptionScores:
    """Scores one candidate caption per image against its reference captions.

    Args:
      references: image id -> its reference captions (at least one each), raw text.
      candidates: image id -> the generated caption, raw text (may be empty).
        Must have exactly the keys of `references`.
      use_java: True runs pycocoevalcap's PTBTokenizer and METEOR (java must be
        on PATH); False uses the Python tokenizer and skips METEOR; None (the
        default) picks True when `java` is on PATH.

    Returns:
      CaptionScores: metrics maps every name in `METRIC_KEYS` to a corpus
      score (a float) or None when it could not be computed; notes are
      sentences saying what was skipped or substituted, and why;
      per_image_cider maps each image id to its own CIDEr (one tokenization
      serves all of them).

    Raises:
      ValueError: the inputs are empty, malformed, or cover different images.
      RuntimeError: use_java=True but java is not on PATH.
    """
    _check_inputs(references, candidates)
    java = shutil.which("java")
    if use_java is None:
        use_java = java is not None
    elif use_java and java is None:
        raise RuntimeError("use_java=True but java is not on PATH; install a JRE "
                           "(e.g. apt-get install default-jre-headless) or pass use_java=False")
    notes: list[str] = []
    keys = list(references)
    gts = {k: list(references[k]) for k in keys}
    res = {k: [candidates[k]] for k in keys}
    if use_java:
        try:
            gts, res = _ptb_tokenize(gts, res)
        except Exception as e:  # pylint: disable=broad-except
            notes.append(f"PTB tokenization failed ({type(e).__name__}: {e}); used the Python "
                         "tokenizer instead, so scores may differ slightly from the official ones")
            gts, res = _python_tokenize(gts), _python_tokenize(res)
    else:
        gts, res = _python_tokenize(gts), _python_tokenize(res)
        notes.append("captions tokenized in Python instead of with the PTB tokenizer (java), "
                     "so scores may differ slightly from the official ones")

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    metrics: dict = dict.fromkeys(METRIC_KEYS)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocoevalcap prints progress
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        rouge, _ = Rouge().compute_score(gts, res)
        cider, cider_per_image = Cider().compute_score(gts, res)
    for n, value in enumerate(bleu, 1):
        metrics[f"BLEU-{n}"] = float(value)
    metrics["ROUGE-L"] = float(rouge)
    metrics["CIDEr"] = float(cider)
    if use_java:
        metrics["METEOR"] = _meteor(gts, res, notes)
    else:
        notes.append(NO_JAVA_NOTE)
    # Cider scores the images in the order of gts' keys.
    per_image = {k: float(v) for k, v in zip(gts, cider_per_image)}
    return CaptionScores(metrics, notes, per_image)


def perplexity(total_nll: float, total_tokens: int) -> float:
    """exp(mean negative log-likelihood per token).

    Args:
      total_nll: the summed negative log-likelihood (natural log) of the tokens.
      total_tokens: how many tokens that sum covers.

    Returns:
      The perplexity; inf if it overflows a float.

    Raises:
      ValueError: total_tokens is not positive.
    """
    if total_tokens <= 0:
        raise ValueError(f"perplexity needs at least one token, got total_tokens={total_tokens}; "
                         "is the evaluation split empty, or every caption padding?")
    try:
        return math.exp(total_nll / total_tokens)
    except OverflowError:
        return math.inf


def _check_inputs(references, candidates):
    if not references:
        raise ValueError("no references given; there is nothing to score")
    ref_keys, cand_keys = set(references), set(candidates)
    if ref_keys != cand_keys:
        only_ref = sorted(map(str, ref_keys - cand_keys))
        only_cand = sorted(map(str, cand_keys - ref_keys))
        raise ValueError(
            "candidates and references must have the same image ids: "
            f"{len(only_ref)} only in references {only_ref[:5]}, "
            f"{len(only_cand)} only in candidates {only_cand[:5]}")
    for key in references:
        refs = references[key]
        if isinstance(refs, str) or not refs or not all(isinstance(r, str) for r in refs):
            raise ValueError(f"references[{key!r}] must be a non-empty list of strings, "
                             f"got {refs!r}")
        if not isinstance(candidates[key], str):
            raise ValueError(f"candidates[{key!r}] must be a string, got {candidates[key]!r}")


def _single_line(text: str) -> str:
    # The PTB tokenizer and METEOR talk one caption per line.
    return " ".join(text.split())


def _ptb_tokenize(gts, res):
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # One java run for both sides; keys are tagged to keep them apart.
    both = {("ref", k): [{"caption": _single_line(c)} for c in v] for k, v in gts.items()}
    both.update({("cand", k): [{"caption": _single_line(c)} for c in v] for k, v in res.items()})
    tokenized = PTBTokenizer().tokenize(both)
    if set(tokenized) != set(both) or any(len(tokenized[k]) != len(both[k]) for k in both):
        raise RuntimeError("the PTB tokenizer returned a different number of captions "
                           "than it was given")
    return ({k: tokenized[("ref", k)] for k in gts}, {k: tokenized[("cand", k)] for k in res})


def _python_tokenize(captions):
    return {k: [" ".join(_PUNCTUATION.sub(" ", c.lower()).split()) for c in v]
            for k, v in captions.items()}


def _meteor(gts, res, notes):
    """METEOR, or None with the reason in notes; never raises."""
    from pycocoevalcap.meteor.meteor import Meteor

    # '|||' separates fields in METEOR's protocol; pycocoevalcap strips it
    # from candidates only.
    gts = {k: [r.replace("|||", " ") for r in v] for k, v in gts.items()}
    try:
        scorer = Meteor()
    except OSError as e:
        notes.append(f"METEOR skipped: could not start java ({e})")
        return None
    try:
        score, _ = scorer.compute_score(gts, res)
        return float(score)
    except Exception as e:  # pylint: disable=broad-except
        reason = f"{type(e).__name__}: {e}"
        process = scorer.meteor_p
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)  # when java died, its exit may lag its closed stdout
        if process.returncode is not None:  # its stderr says why
            stderr = process.stderr.read().decode(errors="replace").strip()
            reason += f"; java exited with {process.returncode}: {stderr[-500:]}"
        notes.append(f"METEOR failed ({reason}). If java could not reserve its 2 GB heap, "
                     "set _JAVA_OPTIONS=-Xmx1g and retry")
        return None
    finally:
        _close_meteor(scorer)


def _close_meteor(scorer):
    # compute_score leaves its lock held when it raises, and Meteor.__del__
    # takes that lock: release it, and stop java now rather than at GC.
    if scorer.lock.locked():
        scorer.lock.release()
    process = scorer.meteor_p
    with contextlib.suppress(OSError, ValueError):
        process.stdin.close()
    if process.poll() is None:
        process.kill()
    process.wait()
    with contextlib.suppress(OSError, ValueError):
        process.stdout.close()
        process.stderr.close()
