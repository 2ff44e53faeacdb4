"""The input pipeline: every map function eagerly and inside tf.data, and make_dataset on generated data."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from caption_app.data import manifest as manifest_lib
from caption_app.data.pil_images import to_rgb
from caption_app.data.pipeline import (caption_ids, decode_image, make_dataset, pad_captions, resolve_tensor_sizes,
                                       split_inputs_targets)
from caption_app.data.vocabulary import END_ID, PAD_ID, START_ID, UNK_ID, TokenizerSettings, Vocabulary, tokenize
from caption_app.model import backbones
from tests.conftest import encode_image, tiny_config


def _in_tf_data(fn, *args):
    """Runs fn(*args) as a tf.data map function (graph mode, no eager tensors)."""
    ds = tf.data.Dataset.from_tensors(tuple(tf.convert_to_tensor(a) for a in args)).map(fn)
    (out,) = list(ds)
    return out


def _both(fn, *args):
    """fn(*args) eagerly and inside tf.data; checks both agree and returns the eager result."""
    eager = fn(*(tf.convert_to_tensor(a) for a in args))
    graph = _in_tf_data(fn, *args)
    tf.nest.map_structure(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), eager, graph)
    return eager


# ----------------------------------------------------------------------------- decode_image

def _pixels(h=20, w=28, seed=0) -> np.ndarray:
    """A smooth colour picture with a sharp edge: [h, w, 3] uint8."""
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 / (w - 1), y * 255 / (h - 1), np.where(x < w // 2, 40, 220)], -1)
    return (rgb + np.random.default_rng(seed).integers(-5, 6, rgb.shape)).clip(0, 255).astype(np.uint8)


FORMATS = [  # (name, PIL format, PIL mode, tolerance vs. PIL's own decoding)
    ("jpeg", "JPEG", "RGB", 6.0),  # decoders differ a little in chroma upsampling
    ("png", "PNG", "RGB", 1e-3),
    ("grayscale_png", "PNG", "L", 1e-3),
    ("rgba_png", "PNG", "RGBA", 0.8),  # composited onto white in float; PIL's paste rounds to integers
    ("gif", "GIF", "P", 1e-3),
    ("bmp", "BMP", "RGB", 1e-3),
]


@pytest.mark.parametrize("name,fmt,mode,tol", FORMATS, ids=[f[0] for f in FORMATS])
@pytest.mark.parametrize("size", [32, 17])
def test_decode_image_formats(name, fmt, mode, tol, size):
    pixels = _pixels()
    if mode == "RGBA":
        pixels = np.concatenate([pixels, np.full(pixels.shape[:2] + (1,), 77, np.uint8)], -1)
    data = encode_image(pixels, fmt, mode)
    out = _both(lambda b: decode_image(b, size), data)
    assert out.shape == (size, size, 3)
    assert out.dtype == tf.float32
    values = out.numpy()
    assert values.min() >= 0.0 and values.max() <= 255.0
    # PIL's decoding as the converter stores it (transparency onto white: data/pil_images.py), resized the same way.
    reference = np.asarray(to_rgb(Image.open(io.BytesIO(data))), np.float32)
    expected = tf.clip_by_value(tf.image.resize(reference, [size, size], antialias=True), 0, 255).numpy()
    np.testing.assert_allclose(values, expected, atol=tol)
    assert np.abs(values - expected).mean() <= tol / 4
    if mode == "L":
        np.testing.assert_allclose(values[..., 0], values[..., 1])
        np.testing.assert_allclose(values[..., 0], values[..., 2])
    elif mode != "RGBA":  # a colour picture stays one: left half blue-ish 40, right half 220
        assert values[:, : size // 3, 2].mean() < 100 < values[:, -size // 3:, 2].mean()
    else:  # 30% opaque over white: the blue 40 shows as 0.3 * 40 + 0.7 * 255, not as 40
        assert values[:, : size // 3, 2].mean() == pytest.approx(0.3 * 40 + 0.7 * 255, abs=3)


def test_decode_image_rejects_garbage():
    with pytest.raises(tf.errors.InvalidArgumentError):
        decode_image(tf.constant(b"this is not an image"), 32)


# ----------------------------------------------------------------------------- caption_ids

VOCAB = Vocabulary(["a", "red", "circle", "blue", "square", "and"])
A, RED, CIRCLE, BLUE, SQUARE, AND = range(4, 10)
SETTINGS = TokenizerSettings()


def _caption_ids(captions, num_captions, caption_length, seed=None):
    table = VOCAB.lookup_table()
    return _both(lambda c: caption_ids(c, table, SETTINGS, num_captions, caption_length, seed=seed),
                 tf.constant(captions))


def test_caption_ids_start_end_padding_truncation_and_missing_rows():
    captions = ["A red circle.", "a blue square and a red circle", "a PURPLE circle"]
    ids = _caption_ids(captions, num_captions=4, caption_length=7)
    assert ids.dtype == tf.int32
    np.testing.assert_array_equal(ids.numpy(), [
        [START_ID, A, RED, CIRCLE, END_ID, PAD_ID, PAD_ID],  # padded after <end>
        [START_ID, A, BLUE, SQUARE, AND, A, RED],  # 9 tokens cut to 7: no <end>
        [START_ID, A, UNK_ID, CIRCLE, END_ID, PAD_ID, PAD_ID],  # unknown word
        [PAD_ID] * 7,  # fewer captions than C: an all-padding row
    ])


def test_caption_ids_keeps_the_first_captions_without_seed():
    ids = _caption_ids(["a red circle", "a blue square", "a red square"], num_captions=2, caption_length=5)
    np.testing.assert_array_equal(ids.numpy(), [[START_ID, A, RED, CIRCLE, END_ID],
                                                [START_ID, A, BLUE, SQUARE, END_ID]])


def test_caption_ids_with_seed_draws_distinct_captions():
    captions = ["a", "red", "circle", "blue", "square", "and"]
    rows = {(START_ID, i, END_ID) for i in range(4, 10)}
    table = VOCAB.lookup_table()
    fn = lambda c: caption_ids(c, table, SETTINGS, 3, 3, seed=7)  # noqa: E731
    for out in (fn(tf.constant(captions)), _in_tf_data(fn, tf.constant(captions))):
        got = [tuple(r) for r in out.numpy().tolist()]
        assert len(set(got)) == 3 and set(got) <= rows


def test_pad_captions():
    assert _both(lambda c: pad_captions(c, 4), tf.constant(["x y", "z"])).numpy().tolist() == \
        [b"x y", b"z", b"", b""]
    assert _both(lambda c: pad_captions(c, 1), tf.constant(["x y", "z"])).numpy().tolist() == [b"x y"]
    assert _both(lambda c: pad_captions(c, 2), tf.constant(["x", "y"])).numpy().tolist() == [b"x", b"y"]


@pytest.mark.parametrize("batched", [False, True])
def test_split_inputs_targets(batched):
    ids = np.arange(2 * 3 * 6, dtype=np.int32).reshape(2, 3, 6)
    image = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    if not batched:
        ids, image = ids[0], image[0]
    inputs, targets = _both(split_inputs_targets, image, ids)
    np.testing.assert_array_equal(inputs["image"].numpy(), image)
    np.testing.assert_array_equal(inputs["input_ids"].numpy(), ids[..., :-1])
    np.testing.assert_array_equal(targets.numpy(), ids[..., 1:])
    assert targets.shape[-1] == ids.shape[-1] - 1


# ----------------------------------------------------------------------------- make_dataset

@pytest.fixture(scope="module")
def data(shapes_data):
    manifest = manifest_lib.load(shapes_data)
    return manifest, Vocabulary.load(manifest.vocab_path)


def _raw_captions(data_dir: str) -> dict[str, list[str]]:
    captions: dict[str, list[str]] = {}
    with open(f"{data_dir}/raw/Flickr8k.token.txt") as f:
        for line in f:
            key, caption = line.rstrip("\n").split("\t")
            captions.setdefault(key.split("#")[0], []).append(caption)
    return captions


def test_resolve_shapes_comes_from_the_manifest(data):
    manifest, _ = data
    sizes = resolve_tensor_sizes(tiny_config("data.max_caption_length=100"), manifest)
    assert sizes.caption_length == manifest.max_caption_words + 2
    assert sizes.num_captions == manifest.max_captions_per_image
    assert sizes.image_size == 32
    assert resolve_tensor_sizes(tiny_config("data.max_caption_length=5"), manifest).caption_length == 5
    # Another manifest, other sizes: nothing is a typed count.
    other = dataclasses.replace(manifest, max_caption_words=4, max_captions_per_image=2)
    sizes = resolve_tensor_sizes(tiny_config("data.max_caption_length=100"), other)
    assert (sizes.caption_length, sizes.num_captions) == (6, 2)
    assert resolve_tensor_sizes(tiny_config("data.captions_per_image=3"), other).num_captions == 3
    default = resolve_tensor_sizes(tiny_config("data.image_size=0"), manifest).image_size
    assert default == backbones.get("small_cnn").image_size


def test_make_dataset_training_batches(data):
    manifest, vocab = data
    config = tiny_config("train.batch_size=6", "data.length_buckets=1")  # one length: a finite pass
    sizes = resolve_tensor_sizes(config, manifest)
    num_train = manifest.split("train").num_images
    assert num_train % 6 != 0  # so that dropping the remainder shows
    batches = list(make_dataset(config, manifest, vocab, "train", training=True))
    assert len(batches) == num_train // 6
    c, t = sizes.num_captions, sizes.caption_length
    for inputs, targets in batches:
        assert set(inputs) == {"image", "input_ids"}
        assert inputs["image"].shape == (6, 32, 32, 3) and inputs["image"].dtype == tf.float32
        assert inputs["input_ids"].shape == (6, c, t - 1) and inputs["input_ids"].dtype == tf.int32
        assert targets.shape == (6, c, t - 1) and targets.dtype == tf.int32
        x, y = inputs["input_ids"].numpy(), targets.numpy()
        np.testing.assert_array_equal(x[..., 1:], y[..., :-1])  # targets are inputs shifted by one
        assert (x[..., 0] == START_ID).all()  # every shapes image has C captions
        assert ((y == END_ID).sum(-1) <= 1).all()
        assert 0.0 <= inputs["image"].numpy().min() and inputs["image"].numpy().max() <= 255.0


def test_make_dataset_evaluation_keeps_the_remainder_and_yields_ids(data, shapes_data):
    manifest, vocab = data
    config = tiny_config()
    sizes = resolve_tensor_sizes(config, manifest)
    raw = _raw_captions(shapes_data)
    batches = list(make_dataset(config, manifest, vocab, "test", training=False, batch_size=8, with_ids=True))
    num_test = manifest.split("test").num_images
    assert [len(b[1]) for b in batches] == [8] * (num_test // 8) + ([num_test % 8] if num_test % 8 else [])
    seen = []
    t = sizes.caption_length
    for inputs, targets, meta in batches:
        b = len(targets)
        assert meta["image_id"].shape == (b,) and meta["captions"].shape == (b, manifest.max_captions_per_image)
        ids = np.concatenate([inputs["input_ids"].numpy()[..., :1], targets.numpy()], -1)  # [B, C, T]
        assert ids.shape == (b, manifest.max_captions_per_image, t)
        for image_id, refs, rows in zip(meta["image_id"].numpy(), meta["captions"].numpy(), ids):
            name = image_id.decode()
            seen.append(name)
            refs = [r.decode() for r in refs if r]
            assert refs == raw[name]  # the references are the raw captions
            words = tokenize(tf.constant(refs)).to_list()
            for row, ref_words in zip(rows, words):
                expected = [w.decode() if vocab.word_to_id(w.decode()) != UNK_ID else "<unk>" for w in ref_words]
                assert vocab.decode(row) == " ".join(expected[: t - 1])  # cut captions lose their <end>
    with open(f"{shapes_data}/raw/Flickr_8k.testImages.txt") as f:
        assert seen == f.read().split()  # all images, once, in file order


def test_images_with_fewer_captions_get_padding_rows(tmp_path):
    from tfrecords_tools import writer

    items = []
    for i in range(6):
        path = tmp_path / f"{i}.png"
        path.write_bytes(encode_image(_pixels(seed=i), "PNG"))
        captions = tuple("a red circle" + " and a blue square" * j for j in range(1 + i % 3))  # 1-3 captions
        items.append(writer.Item(f"{i}.png", str(path), captions))
    out = tmp_path / "data"
    writer.write_dataset(out, {"train": items, "val": items[:2], "test": items[:3]}, source="test",
                         min_word_count=1, progress=False, verbose=False)
    manifest = manifest_lib.load(str(out))
    vocab = Vocabulary.load(manifest.vocab_path)
    assert manifest.max_captions_per_image == 3
    config = tiny_config("data.captions_per_image=2", "data.length_buckets=1")  # one length: a finite pass
    (inputs, targets), = list(make_dataset(config, manifest, vocab, "train", training=True, batch_size=6))
    assert targets.shape[:2] == (6, 2)
    # Per image min(n, 2) real rows, whatever rows were drawn.
    real = (inputs["input_ids"].numpy()[..., 0] == START_ID).sum(-1)
    assert sorted(real.tolist()) == sorted(min(1 + i % 3, 2) for i in range(6))
    inputs, targets, meta = next(iter(make_dataset(config, manifest, vocab, "train", training=False,
                                                   batch_size=6, with_ids=True)))
    assert targets.shape[:2] == (6, 3)  # evaluation keeps every caption
    for i in range(6):
        n = 1 + i % 3
        assert (inputs["input_ids"].numpy()[i, :n, 0] == START_ID).all()
        assert (targets.numpy()[i, n:] == PAD_ID).all() and (inputs["input_ids"].numpy()[i, n:] == PAD_ID).all()
        assert [c.decode() for c in meta["captions"].numpy()[i]] == list(items[i].captions) + [""] * (3 - n)


def test_unknown_augmentation_is_a_clear_error(data):
    manifest, vocab = data
    with pytest.raises(ValueError) as err:
        make_dataset(tiny_config("data.augment=flip,sparkle"), manifest, vocab, "train", training=True)
    message = str(err.value)
    assert "sparkle" in message and "data.augment" in message
    for name in ("flip", "color", "crop"):
        assert name in message


def test_flip_augmentation_runs_in_training_only(data):
    manifest, vocab = data
    kwargs = dict(batch_size=8)
    # One shard, no shuffle buffer, one length (no buckets): file order.
    plain = tiny_config("data.shuffle_buffer=1", "data.length_buckets=1")
    flip = tiny_config("data.shuffle_buffer=1", "data.augment=flip", "data.length_buckets=1")
    original = np.concatenate([b[0]["image"].numpy() for b in
                               make_dataset(plain, manifest, vocab, "train", training=False, **kwargs)])
    # Not in evaluation: same images with or without the setting.
    no_aug = np.concatenate([b[0]["image"].numpy() for b in
                             make_dataset(flip, manifest, vocab, "train", training=False, **kwargs)])
    np.testing.assert_array_equal(no_aug, original)
    augmented = np.concatenate([b[0]["image"].numpy() for b in
                                make_dataset(flip, manifest, vocab, "train", training=True, **kwargs)])
    assert augmented.shape == original.shape and augmented.dtype == np.float32
    same = [np.allclose(a, o, atol=1e-3) for a, o in zip(augmented, original)]
    flipped = [np.allclose(a, o[:, ::-1], atol=1e-3) for a, o in zip(augmented, original)]
    assert all(s or f for s, f in zip(same, flipped))  # each image is itself or its mirror image
    # 40 images, each flipped with probability 1/2: some of each.
    assert any(f and not s for s, f in zip(same, flipped)) and any(s and not f for s, f in zip(same, flipped))


@pytest.mark.parametrize("name", ["color", "crop"])
def test_other_augmentations_run(data, name):
    manifest, vocab = data
    config = tiny_config(f"data.augment={name}")
    inputs, targets = next(iter(make_dataset(config, manifest, vocab, "train", training=True, batch_size=8)))
    images = inputs["image"].numpy()
    assert images.shape == (8, 32, 32, 3) and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 255 and np.isfinite(images).all()
