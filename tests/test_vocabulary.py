"""The one vocabulary: build, save/load, special ids, encode/decode, in-graph tokenize and decode."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import tensorflow as tf

from caption_app.data import vocabulary as vocab_lib
from caption_app.data.vocabulary import (END_ID, PAD_ID, START_ID, UNK_ID, TokenizerSettings, Vocabulary,
                                         count_words, split_words, tokenize)

CAPTIONS = [
    "A dog runs on the grass.",
    "Two DOGS, running!",
    "a dog's ball: red",
    "THE dog  runs\tfast",
]


def _vocab() -> Vocabulary:
    return Vocabulary.build(count_words(CAPTIONS), min_word_count=1)


def test_special_token_ids():
    v = Vocabulary(["dog", "cat"])
    assert (PAD_ID, START_ID, END_ID, UNK_ID) == (0, 1, 2, 3)
    assert [v.id_to_word(i) for i in range(4)] == ["<pad>", "<start>", "<end>", "<unk>"]
    assert v.word_to_id("<pad>") == 0 and v.word_to_id("<start>") == 1
    assert v.word_to_id("<end>") == 2 and v.word_to_id("<unk>") == 3
    assert v.word_to_id("dog") == 4 and v.word_to_id("cat") == 5
    assert v.size == len(v) == 6


def test_words_may_not_collide_with_special_tokens_or_repeat():
    with pytest.raises(ValueError, match="<end>"):
        Vocabulary(["dog", "<end>"])
    with pytest.raises(ValueError, match="duplicate"):
        Vocabulary(["dog", "cat", "dog"])


def test_build_keeps_frequent_words_most_frequent_first_ties_alphabetical():
    counts = collections.Counter({"zebra": 5, "apple": 3, "mango": 3, "kiwi": 5, "banana": 1, "fig": 2,
                                  "date": 2})
    v = Vocabulary.build(counts, min_word_count=2)
    assert v.words == ["kiwi", "zebra", "apple", "mango", "date", "fig"]
    assert v.counts == [5, 5, 3, 3, 2, 2]
    assert v.word_to_id("banana") == UNK_ID
    assert Vocabulary.build(counts, min_word_count=4).words == ["kiwi", "zebra"]
    assert Vocabulary.build(counts, min_word_count=1).words[-1] == "banana"
    assert Vocabulary.build(counts, min_word_count=6).words == []


def test_count_words_uses_the_tokenizer():
    counts = count_words(CAPTIONS, chunk_size=3)  # chunking must not change the counts
    assert counts == count_words(CAPTIONS)
    assert counts["dog"] == 2  # "A dog", "THE dog"; "dog's" is one word of its own
    assert counts["a"] == 2 and counts["the"] == 2 and counts["runs"] == 2
    assert counts["dog's"] == 1 and counts["dogs"] == 1
    assert "A" not in counts and "dog," not in counts and "grass." not in counts


def test_save_load_round_trip(tmp_path):
    v = _vocab()
    path = str(tmp_path / "vocab.txt")
    v.save(path)
    lines = open(path).read().splitlines()
    assert lines == [f"{w} {c}" for w, c in zip(v.words, v.counts)]
    # Four words seen twice, in alphabetical order, before those seen once.
    assert lines[:4] == ["a 2", "dog 2", "runs 2", "the 2"] and lines[4].endswith(" 1")
    for line in lines:
        word, count = line.split(" ")
        assert int(count) >= 1 and word == word.lower()
    loaded = Vocabulary.load(path)
    assert loaded.tokens == v.tokens
    assert loaded.counts == v.counts
    assert not (tmp_path / "vocab.txt.tmp").exists()


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        Vocabulary.load(str(tmp_path / "missing.txt"))
    bad = tmp_path / "bad.txt"
    bad.write_text("dog 3\ncat many\n")
    with pytest.raises(ValueError, match=r"bad.txt:2"):
        Vocabulary.load(str(bad))


def test_encode_decode():
    v = _vocab()
    ids = v.encode("The dog runs to the MOON!")
    assert ids[0] == START_ID and ids[-1] == END_ID
    assert ids[1:-1] == [v.word_to_id(w) for w in ["the", "dog", "runs"]] + [UNK_ID, v.word_to_id("the"), UNK_ID]
    assert v.decode(ids) == "the dog runs <unk> the <unk>"
    # Decoding stops at <end> and drops <pad>/<start>.
    dog, runs = v.word_to_id("dog"), v.word_to_id("runs")
    assert v.decode([START_ID, dog, PAD_ID, runs, END_ID, dog, dog]) == "dog runs"
    assert v.decode([END_ID, dog]) == ""
    assert v.decode(np.array([dog, runs], np.int64)) == "dog runs"


def test_unknown_words_map_to_unk_in_python_and_in_graph():
    v = _vocab()
    assert v.word_to_id("elephant") == UNK_ID
    table = v.lookup_table()
    got = table.lookup(tf.constant(["dog", "elephant", "<end>", ""])).numpy().tolist()
    assert got == [v.word_to_id("dog"), UNK_ID, END_ID, UNK_ID]


EXPECTED_WORDS = [
    ["a", "dog", "runs", "on", "the", "grass"],
    ["two", "dogs", "running"],
    ["a", "dog's", "ball", "red"],
    ["the", "dog", "runs", "fast"],
]


def _joined(ragged: tf.RaggedTensor) -> list[list[str]]:
    return [[w.decode("utf-8") for w in row] for row in ragged.to_list()]


def test_tokenize_normalizes_case_and_punctuation_eagerly():
    assert _joined(tokenize(tf.constant(CAPTIONS))) == EXPECTED_WORDS
    assert _joined(tokenize(tf.constant(["Ünïcode CAFÉ, 3 cats."]))) == [["ünïcode", "café", "3", "cats"]]
    # The settings switch each normalization off.
    raw = TokenizerSettings(lowercase=False, strip_punctuation=False)
    assert _joined(tokenize(tf.constant(["A dog, running!"]), raw)) == [["A", "dog,", "running!"]]


def test_tokenize_in_graph_and_inside_tf_data_match_eager():
    captions = tf.constant(CAPTIONS)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def joined(c):
        return tf.strings.reduce_join(tokenize(c), axis=-1, separator=" ")

    expected = [" ".join(words) for words in EXPECTED_WORDS]
    assert [s.decode() for s in joined(captions).numpy()] == expected
    ds = tf.data.Dataset.from_tensor_slices(captions).map(
        lambda c: tf.strings.reduce_join(tokenize(c[None])[0], separator=" "))
    assert [s.decode() for s in ds.as_numpy_iterator()] == expected
    ragged = tf.data.Dataset.from_tensor_slices(captions).batch(4).map(lambda c: tokenize(c))
    assert _joined(next(iter(ragged))) == EXPECTED_WORDS


def test_ids_to_text_in_graph_equals_python_decode():
    v = _vocab()
    rng = np.random.default_rng(0)
    # Random ids over the whole vocabulary: <pad>, <start>, <end> and <unk> anywhere.
    ids = rng.integers(0, v.size, size=(64, 9)).astype(np.int32)
    ids[:5] = 0  # all padding
    ids[5, :] = [START_ID] + [v.word_to_id("dog")] * 8  # no <end>
    ids[6, 0] = END_ID
    expected = [v.decode(row) for row in ids]
    assert any(" " in e for e in expected) and "" in expected and any("<unk>" in e for e in expected)

    eager = [t.decode("utf-8") for t in v.ids_to_text(tf.constant(ids)).numpy()]
    assert eager == expected
    graph = tf.function(v.ids_to_text, input_signature=[tf.TensorSpec([None, None], tf.int64)])
    assert [t.decode("utf-8") for t in graph(tf.constant(ids, tf.int64)).numpy()] == expected
    ds = tf.data.Dataset.from_tensor_slices(ids).map(v.ids_to_text)
    assert [t.decode("utf-8") for t in ds.as_numpy_iterator()] == expected
    # Higher rank: [2, 32, 9] -> [2, 32].
    assert v.ids_to_text(tf.constant(ids.reshape(2, 32, 9))).numpy().reshape(-1).tolist() == \
        [e.encode() for e in expected]


def test_vocab_path():
    assert vocab_lib.vocab_path("/data/x") == "/data/x/vocab.txt"


def test_split_words_matches_the_in_graph_tokenizer_caption_by_caption():
    expected = [[w.decode("utf-8") for w in ws] for ws in tokenize(CAPTIONS).to_list()]
    assert list(split_words(CAPTIONS, chunk_size=2)) == expected  # chunks keep the order
    assert list(split_words(["", " ,. ", "Two  words"])) == [[], [], ["two", "words"]]
