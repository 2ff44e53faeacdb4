"""caption_metrics and perplexity: hand-computed values, the java and no-java paths."""

import math
import shutil

import pytest

from caption_app.evaluation import metrics
from caption_app.evaluation.metrics import METRIC_KEYS, NO_JAVA_NOTE, caption_metrics, perplexity

REFERENCES = {
    "1": ["a brown dog runs across the green grass", "a dog running on a lawn"],
    "2": ["two children play soccer in the park", "kids kicking a ball in a park"],
    "3": ["a man rides a red bicycle down the street", "a cyclist on a city road"],
}
RIGHT = {"1": "A brown dog runs across the green grass.",
         "2": "Two children play soccer in the park!",
         "3": "a man rides a red bicycle down the street"}
WRONG = {"1": "an airplane parked at the airport gate",
         "2": "a plate of food with broccoli",
         "3": "a cat sleeping on a sofa"}

NEEDS_JAVA = pytest.mark.skipif(shutil.which("java") is None,
                                reason="java is not on PATH; the PTB tokenizer and METEOR need it")


def test_identical_captions_score_perfectly():
    scores, _ = caption_metrics(REFERENCES, RIGHT, use_java=False)
    assert list(scores) == list(METRIC_KEYS)
    assert scores["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert scores["BLEU-1"] == pytest.approx(1.0, abs=1e-6)
    assert scores["ROUGE-L"] == pytest.approx(1.0)
    # CIDEr weighs n-grams by IDF over the images, so it needs several to be > 0.
    assert scores["CIDEr"] > 1.0


def test_wrong_captions_score_lower_on_every_metric():
    right, _ = caption_metrics(REFERENCES, RIGHT, use_java=False)
    wrong, _ = caption_metrics(REFERENCES, WRONG, use_java=False)
    for key in METRIC_KEYS:
        if key != "METEOR":
            assert wrong[key] < right[key], key


def test_bleu_1_by_hand():
    references = {"x": ["a dog runs", "one dog"], "y": ["a black cat sits"]}
    candidates = {"x": "a dog a dog", "y": "cat"}
    # Clipped unigram matches: x: "a" and "dog" count at most once each (their
    # most in one reference) -> 2 of 4; y: "cat" -> 1 of 1. Corpus precision
    # p1 = 3 / 5. Reference lengths, closest to each candidate: x (4 words)
    # -> 3, y (1 word) -> 4; r = 7, c = 5. Brevity penalty exp(1 - r / c)
    # = exp(-0.4). BLEU-1 = 0.6 * exp(-0.4) = 0.402192...
    scores, _ = caption_metrics(references, candidates, use_java=False)
    assert scores["BLEU-1"] == pytest.approx(0.6 * math.exp(-0.4), abs=1e-6)


def test_without_java_meteor_is_none_with_a_note():
    scores, notes = caption_metrics(REFERENCES, RIGHT, use_java=False)
    assert scores["METEOR"] is None
    assert NO_JAVA_NOTE in notes
    assert all(isinstance(scores[k], float) for k in METRIC_KEYS if k != "METEOR")


def test_java_is_auto_detected(monkeypatch):
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)
    scores, notes = caption_metrics(REFERENCES, RIGHT)
    assert scores["METEOR"] is None and NO_JAVA_NOTE in notes
    with pytest.raises(RuntimeError, match="java is not on PATH"):
        caption_metrics(REFERENCES, RIGHT, use_java=True)


def test_empty_candidates_do_not_crash():
    candidates = dict(RIGHT, **{"2": ""})
    scores, _ = caption_metrics(REFERENCES, candidates, use_java=False)
    assert 0.0 < scores["BLEU-1"] < 1.0
    all_empty, _ = caption_metrics(REFERENCES, dict.fromkeys(REFERENCES, ""), use_java=False)
    assert all(all_empty[k] == pytest.approx(0.0) for k in METRIC_KEYS if k != "METEOR")


@NEEDS_JAVA
@pytest.mark.slow  # starts METEOR's JVM twice, ~10 s each (it loads a paraphrase table)
def test_java_path_computes_meteor():
    # One empty candidate, to check METEOR and the PTB tokenizer take it too.
    right, right_notes = caption_metrics(
        dict(REFERENCES, **{"4": ["a bowl of soup"]}), dict(RIGHT, **{"4": ""}), use_java=True)
    wrong, _ = caption_metrics(
        dict(REFERENCES, **{"4": ["a bowl of soup"]}), dict(WRONG, **{"4": ""}), use_java=True)
    assert right_notes == []
    assert isinstance(right["METEOR"], float) and 0.0 < right["METEOR"] <= 1.0
    for key in METRIC_KEYS:
        assert wrong[key] < right[key], key


@NEEDS_JAVA
def test_a_crashing_meteor_gives_none_and_the_reason(monkeypatch):
    from pycocoevalcap.meteor import meteor as meteor_module

    monkeypatch.setattr(meteor_module, "METEOR_JAR", "no-such-meteor.jar")
    scores, notes = caption_metrics(REFERENCES, RIGHT, use_java=True)
    assert scores["METEOR"] is None
    assert any(n.startswith("METEOR failed") and "no-such-meteor.jar" in n for n in notes), notes
    assert scores["BLEU-4"] == pytest.approx(1.0, abs=1e-6)


def test_mismatched_keys_raise():
    with pytest.raises(ValueError, match=r"1 only in references \['3'\], 1 only in candidates"):
        caption_metrics(REFERENCES, {"1": "a", "2": "b", "4": "c"}, use_java=False)


@pytest.mark.parametrize("references,candidates,message", [
    ({}, {}, "no references"),
    ({"1": []}, {"1": "a dog"}, "non-empty list of strings"),
    ({"1": "a dog"}, {"1": "a dog"}, "non-empty list of strings"),
    ({"1": ["a dog"]}, {"1": ["a dog"]}, "must be a string"),
])
def test_malformed_inputs_raise(references, candidates, message):
    with pytest.raises(ValueError, match=message):
        caption_metrics(references, candidates, use_java=False)


def test_perplexity():
    # 3 tokens with probabilities 1/2, 1/4, 1/8: nll = ln 2 + ln 4 + ln 8 = 6 ln 2;
    # per token 2 ln 2, so perplexity = e^(2 ln 2) = 4.
    assert perplexity(6 * math.log(2), 3) == pytest.approx(4.0)
    assert perplexity(0.0, 10) == 1.0
    assert perplexity(1e6, 1) == math.inf
    with pytest.raises(ValueError, match="at least one token"):
        perplexity(1.0, 0)


def test_per_image_cider_ranks_the_wrong_caption_last():
    mixed = {**RIGHT, "2": WRONG["2"]}
    scores = metrics.score_captions(REFERENCES, mixed, use_java=False)
    per_image = scores.per_image_cider
    assert list(per_image) == list(REFERENCES)
    assert sum(per_image.values()) / len(per_image) == pytest.approx(scores.metrics["CIDEr"])
    assert per_image["2"] == min(per_image.values()) and per_image["1"] > 0
    assert (scores.metrics, scores.notes) == caption_metrics(REFERENCES, mixed, use_java=False)
