"""Length buckets: boundaries from the manifest, batches padded to their bucket, the same loss."""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from caption_app.training import budget as budget_lib
from caption_app.data import manifest as manifest_lib
from caption_app.config import ConfigError
from caption_app.data.pipeline import (choose_bucket_lengths, cut_to_bucket, describe_buckets, make_dataset,
                                       resolve_bucket_lengths, resolve_tensor_sizes)
from caption_app.data.vocabulary import END_ID, Vocabulary
from caption_app.model import show_and_tell
from caption_app.model.loss import DatasetNLL, MaskedCrossEntropy
from tests.conftest import NUM_TRAIN, tiny_config


def _padded_tokens(histogram: dict, lengths: tuple) -> int:
    return sum(count * min(n for n in lengths if n >= length) for length, count in histogram.items())


def test_chosen_lengths_are_the_cheapest_choice():
    histogram = {5: 3, 7: 10, 8: 1, 11: 6, 12: 2, 16: 1, 20: 1}
    for k in (1, 2, 3, 4):
        chosen = choose_bucket_lengths(histogram, k)
        assert len(chosen) <= k and chosen[-1] == 20 and list(chosen) == sorted(chosen)
        brute = min(_padded_tokens(histogram, combo + (20,))
                    for combo in itertools.combinations(sorted(histogram)[:-1], k - 1))
        assert _padded_tokens(histogram, chosen) == brute
    assert choose_bucket_lengths(histogram, 1) == (20,)
    assert choose_bucket_lengths({9: 4}, 4) == (9,)  # never more lengths than the data has


def test_manifest_records_the_longest_caption_per_train_image(shapes_data):
    manifest = manifest_lib.load(shapes_data)
    histogram = manifest.longest_caption_words
    assert sum(histogram.values()) == manifest.split("train").num_images
    assert max(histogram) == manifest.max_caption_words


def test_where_the_lengths_come_from(shapes_data, tmp_path):
    manifest = manifest_lib.load(shapes_data)
    t = resolve_tensor_sizes(tiny_config("data.max_caption_length=100"), manifest).caption_length
    auto = resolve_bucket_lengths(tiny_config("data.max_caption_length=100"), manifest, t)
    assert 1 < len(auto) <= 4 and auto[-1] == t
    assert resolve_bucket_lengths(tiny_config("data.length_buckets=1"), manifest, t) == (t,)
    # Explicit lengths win; longer ones are cut to T, and T is always the last.
    assert resolve_bucket_lengths(tiny_config("data.bucket_lengths=12,8,99"), manifest, t) == (8, 12, t)
    # A manifest written before the histogram: one length, as before, and the log says why.
    old = dataclasses.replace(manifest, longest_caption_words=None)
    assert resolve_bucket_lengths(tiny_config(), old, t) == (t,)
    assert "re-convert" in describe_buckets(tiny_config(), old, t)
    raw = {k: v for k, v in manifest.raw.items() if k != "train_longest_caption_words"}
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    for name in os.listdir(shapes_data):
        if name.endswith(".tfrecord") or name == manifest.vocab_file:
            os.symlink(os.path.join(shapes_data, name), old_dir / name)
    (old_dir / manifest_lib.MANIFEST).write_text(json.dumps(raw))
    assert manifest_lib.load(str(old_dir)).longest_caption_words is None


def _ids(*lengths, width=10):
    """Caption rows of `lengths` tokens ([<start>, 3, 4, ..., <end>], 0 = none) -> ids [C, width]."""
    rows = [[1] + list(range(3, n + 1)) + [2] + [0] * (width - n) if n else [0] * width for n in lengths]
    return np.array(rows, np.int32)


@pytest.mark.parametrize("in_tf_data", [False, True])
def test_cut_to_bucket_keeps_the_ranked_caption_whole_and_cuts_the_longer(in_tf_data):
    def cut(ids, rank, buckets=(5, 7, 10)):
        if in_tf_data:
            ds = tf.data.Dataset.from_tensors(ids).map(lambda x: cut_to_bucket(x, buckets, rank))
            return next(iter(ds)).numpy()
        return cut_to_bucket(tf.constant(ids), buckets, rank).numpy()

    ids = _ids(9, 6, 4)
    np.testing.assert_array_equal(cut(ids, 1), ids[:, :9])  # the longest decides: nothing cut
    np.testing.assert_array_equal(cut(ids, 2), ids[:, :7])  # 6 tokens -> bucket 7: the 9 loses <end>
    np.testing.assert_array_equal(cut(ids, 3), ids[:, :5])  # 4 tokens -> bucket 5: two captions cut
    assert 2 not in cut(ids, 3)[0] and 2 not in cut(ids, 3)[1] and 2 in cut(ids, 3)[2]
    # A rank beyond the image's captions (an empty row) is its shortest; an exact fit is not cut.
    np.testing.assert_array_equal(cut(_ids(9, 6, 0), 5), _ids(9, 6, 0)[:, :7])
    np.testing.assert_array_equal(cut(_ids(9, 7), 2), _ids(9, 7)[:, :7])
    # Never longer than the longest caption: the bucket pads the rest.
    np.testing.assert_array_equal(cut(_ids(6, 6, 3), 2, buckets=(8, 10)), _ids(6, 6, 3)[:, :6])


def test_cutting_respects_the_bucket_and_keeps_images_together(shapes_data):
    """data.bucket_caption_rank=3: each train image pads to the bucket of its third-longest caption,
    its longer captions are cut to it (prefixes of the originals), its captions stay in one batch
    row, and validation batches are not cut."""
    config = tiny_config("data.bucket_lengths=9,13", "data.bucket_caption_rank=3")
    manifest, vocab, batches = _train_batches(config, shapes_data, 30)
    sizes = resolve_tensor_sizes(config, manifest)
    lengths = resolve_bucket_lengths(config, manifest, sizes.caption_length)
    assert lengths == (9, 13, 16) and "cut" in describe_buckets(config, manifest, sizes.caption_length)
    full = {}  # image id -> its caption rows as tokens (targets without padding), uncut
    for _, targets, extras in make_dataset(config, manifest, vocab, "train", training=False, with_ids=True):
        for image_id, rows in zip(extras["image_id"].numpy(), targets.numpy()):
            full[image_id] = [tuple(r[r != 0]) for r in rows if r.any()]
    cut_rows = rows_seen = 0
    for _, targets, extras in batches:
        bucket = targets.shape[-1] + 1
        assert bucket in lengths
        previous = max([0] + [n for n in lengths if n < bucket])
        for image_id, rows in zip(extras["image_id"].numpy(), targets.numpy()):
            originals = full[image_id]
            ranked = sorted((len(r) + 1 for r in originals), reverse=True)[2]  # tokens, <start> included
            assert previous < ranked <= bucket  # the first bucket that holds the third-longest
            got = sorted(tuple(r[r != 0]) for r in rows if r.any())
            assert got == sorted(r[:bucket - 1] for r in originals)  # the same image's captions, cut to the bucket
            cut = sum(len(r) + 1 > bucket for r in originals)
            assert cut <= 2  # only captions longer than the third-longest
            cut_rows += cut
            rows_seen += len(originals)
    assert 0 < cut_rows < rows_seen
    # Validation is never cut: T-long rows, each caption whole.
    for _, targets in make_dataset(config, manifest, vocab, "val", training=False):
        assert targets.shape[-1] == sizes.caption_length - 1


@pytest.mark.parametrize("assignment", ["data.bucket_caption_rank=0", "data.bucket_caption_rank=-2",
                                        "data.bucket_caption_rank=6"])
def test_bad_bucket_caption_ranks_are_one_clear_error(assignment):
    config = tiny_config(assignment, "data.captions_per_image=5")
    with pytest.raises(ConfigError, match=r"^data.bucket_caption_rank must be >= 1 .*<= data.captions_per_image"):
        config.validate()
    assert tiny_config("data.bucket_caption_rank=9").validate()  # captions_per_image=0: the image's shortest
    assert tiny_config("data.bucket_caption_rank=5", "data.captions_per_image=5").validate()


def _train_batches(config, data, steps):
    manifest = manifest_lib.load(data)
    vocab = Vocabulary.load(manifest.vocab_path)
    ds = make_dataset(config, manifest, vocab, "train", training=True, with_ids=True)
    return manifest, vocab, list(ds.take(steps))


def test_batches_pad_to_their_bucket_and_every_image_keeps_coming(shapes_data):
    config = tiny_config()
    manifest, vocab, _ = _train_batches(config, shapes_data, 0)
    sizes = resolve_tensor_sizes(config, manifest)
    lengths = resolve_bucket_lengths(config, manifest, sizes.caption_length)
    assert len(lengths) == 2  # the tiny data's captions: two lengths worth a bucket each
    steps = budget_lib.budget_for(config, manifest).steps_per_epoch
    assert steps == NUM_TRAIN // config.train.batch_size
    _, _, batches = _train_batches(config, shapes_data, 3 * steps)  # three epochs of steps

    # Every image's caption rows, stripped of padding, from the unbucketed evaluation pipeline.
    rows = {}
    for _, targets, extras in make_dataset(config, manifest, vocab, "train", training=False, with_ids=True):
        for image_id, caption_rows in zip(extras["image_id"].numpy(), targets.numpy()):
            rows[image_id] = {tuple(r[r != 0]) for r in caption_rows}
    seen, shapes = collections.Counter(), set()
    real = computed = 0
    for inputs, targets, extras in batches:
        assert targets.shape[0] == config.train.batch_size  # every batch is full
        assert targets.shape[-1] + 1 in lengths  # padded to its bucket, no longer
        shapes.add(tuple(targets.shape))
        longest = max(int(np.count_nonzero(r)) for r in targets.numpy().reshape(-1, targets.shape[-1]))
        assert inputs["input_ids"].shape == targets.shape
        for image_id, caption_rows in zip(extras["image_id"].numpy(), targets.numpy()):
            seen[image_id] += 1
            # Nothing was cut: the same rows as padded to T.
            assert {tuple(r[r != 0]) for r in caption_rows} == rows[image_id]
        # The bucket is the first length that holds the batch's longest caption (in tokens: targets + 1).
        bucket = lengths.index(targets.shape[-1] + 1)
        assert (lengths[bucket - 1] if bucket else 0) < longest + 1 <= lengths[bucket]
        real += int(np.count_nonzero(targets))
        computed += targets.numpy().size
    assert len(shapes) <= len(lengths)  # one compiled shape per bucket, at most
    # Three epochs of steps take 3 x 13 x 3 images: no image starves, none is dropped for good.
    assert sum(seen.values()) == 3 * steps * config.train.batch_size
    assert set(seen) == set(rows) and max(seen.values()) <= 4
    padded_to_t = len(batches) * config.train.batch_size * sizes.num_captions * (sizes.caption_length - 1)
    assert computed < padded_to_t


@pytest.mark.parametrize("rank", [1, 3])
def test_same_batch_padded_two_ways_gives_the_same_loss_and_perplexity(shapes_data, rank):
    """Padding adds nothing to the loss: a batch padded to its bucket and to T, uncut (rank 1) or cut
    to its bucket (rank 3: the cut captions padded to T, not the uncut ones)."""
    config = tiny_config(*(["data.bucket_lengths=9,13", f"data.bucket_caption_rank={rank}"] if rank > 1 else []))
    manifest, vocab, batches = _train_batches(config, shapes_data, 6)
    sizes = resolve_tensor_sizes(config, manifest)
    keras.utils.set_random_seed(0)
    model = show_and_tell.build_model(config, vocab.size)
    loss = MaskedCrossEntropy()
    short, long = [], []
    for inputs, targets, _ in batches:
        pad = [[0, 0], [0, 0], [0, sizes.caption_length - 1 - targets.shape[-1]]]
        padded = ({"image": inputs["image"], "input_ids": tf.pad(inputs["input_ids"], pad)}, tf.pad(targets, pad))
        short.append((inputs, targets))
        long.append(padded)
        a = float(loss(targets, model(inputs, training=False)))
        b = float(loss(padded[1], model(padded[0], training=False)))
        assert a == pytest.approx(b, rel=1e-6)
    assert any(t.shape[-1] < sizes.caption_length - 1 for _, t in short)  # some batch was really shorter
    # Rank 3 cut captions at a bucket shorter than T: full rows without <end> (rank 1 cuts only at T).
    cut_at_a_bucket = any(r.all() and END_ID not in r for _, t in short if t.shape[-1] < sizes.caption_length - 1
                          for r in t.numpy().reshape(-1, t.shape[-1]))
    assert cut_at_a_bucket == (rank > 1)
    nll = DatasetNLL(model)
    (nll_short, tokens_short), (nll_long, tokens_long) = nll(short), nll(long)
    assert tokens_short == tokens_long
    assert np.exp(nll_short / tokens_short) == pytest.approx(np.exp(nll_long / tokens_long), rel=1e-6)


def test_the_cached_features_dataset_is_bucketed_too(shapes_data, tmp_path):
    from caption_app.training import feature_cache
    from caption_app.runs import context as run_context

    config = tiny_config("train.feature_cache=true", "train.freeze_backbone=true")
    ctx = run_context.RunContext.create(config, shapes_data, str(tmp_path / "run"))
    try:
        cache = feature_cache.ensure_cache(ctx, verbose=False)
        lengths = resolve_bucket_lengths(config, ctx.manifest, ctx.sizes.caption_length)
        ds = feature_cache.make_cached_dataset(ctx, cache, "train", training=True)
        shapes = {tuple(targets.shape) for _, targets in ds.take(20)}
        assert {s[-1] + 1 for s in shapes} <= set(lengths) and len(shapes) > 1
        assert all(s[0] == config.train.batch_size for s in shapes)
    finally:
        ctx.release()
