"""tf.data input pipeline: records -> (inputs, targets) batches.

    parse -> skip records with no usable caption -> decode + resize -> [cache] -> [shuffle] -> caption ids
      -> batch (training: by length bucket) -> [keras-cv augmentation, training only] -> split inputs/targets
      -> prefetch

One element is one image with all (or `captions_per_image`) of its captions,
so the backbone runs once per image per epoch. Records hold raw text; the
tokenizer and vocabulary lookup run here, in-graph. Every map function is a
plain function of tensors (tested eagerly and inside tf.data).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Mapping

import tensorflow as tf

from caption_app.config import PREPROCESS, Config
from caption_app.data import records
from caption_app.data.manifest import Manifest
from caption_app.data.vocabulary import END_ID, PAD_ID, START_ID, TokenizerSettings, Vocabulary, tokenize
from caption_app.model import backbones

AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass(frozen=True)
class TensorSizes:
    """Tensor sizes the data dictates, resolved once from config + manifest."""

    image_size: int  # S
    num_captions: int  # C, captions per image in a batch
    caption_length: int  # T, tokens per caption incl. <start> and <end> (model inputs/targets: T-1)


def resolve_tensor_sizes(config: Config, manifest: Manifest) -> TensorSizes:
    size = backbones.resolve_image_size(config.model.backbone, config.data.image_size)
    num_captions = config.data.captions_per_image or manifest.max_captions_per_image
    length = min(config.data.max_caption_length, manifest.max_caption_words + 2)
    return TensorSizes(size, max(1, num_captions), max(3, length))


def resolve_bucket_lengths(config: Config, manifest: Manifest, caption_length: int) -> tuple[int, ...]:
    """The padded caption lengths of train batches, ascending, the last = T (`caption_length`).

    `data.bucket_lengths` when given (clipped to T); else `data.length_buckets`
    lengths chosen from the manifest's histogram of train images by their longest
    caption (`choose_bucket_lengths`); (T,) -- one length, no buckets -- with
    `data.length_buckets=1` or a manifest written before the histogram was recorded.
    """
    if config.data.bucket_lengths:
        return tuple(sorted({min(n, caption_length) for n in config.data.bucket_lengths} | {caption_length}))
    if config.data.length_buckets <= 1 or not manifest.longest_caption_words:
        return (caption_length,)
    tokens: dict[int, int] = {}
    for words, images in manifest.longest_caption_words.items():  # words -> tokens (<start> and <end>), cut at T
        length = min(words + 2, caption_length)
        tokens[length] = tokens.get(length, 0) + images
    chosen = choose_bucket_lengths(tokens, config.data.length_buckets)
    return tuple(sorted(set(chosen) | {caption_length}))


def describe_buckets(config: Config, manifest: Manifest, caption_length: int) -> str:
    """One line for the training log: the buckets, where they came from, the compiled shapes' bound."""
    lengths = resolve_bucket_lengths(config, manifest, caption_length)
    if config.data.bucket_lengths:
        origin = "data.bucket_lengths"
    elif config.data.length_buckets <= 1:
        origin = "data.length_buckets=1"
    elif not manifest.longest_caption_words:
        origin = "the manifest has no caption length histogram: re-convert the data, or set data.bucket_lengths"
    else:
        origin = f"data.length_buckets={config.data.length_buckets} from the train captions' lengths"
    cut = ""
    if config.data.bucket_caption_rank > 1 and len(lengths) > 1:
        cut = (f"; an image's bucket holds its caption no. {config.data.bucket_caption_rank} by length, "
               "longer captions are cut to it (data.bucket_caption_rank)")
    return (f"length buckets: captions padded to {'/'.join(map(str, lengths))} tokens ({origin}{cut}); "
            f"at most {len(lengths)} train-step shape(s) compiled per phase")


def choose_bucket_lengths(histogram: Mapping[int, int], num_buckets: int) -> tuple[int, ...]:
    """At most `num_buckets` padded lengths (ascending, the last = the longest length) that
    minimize the tokens computed for `histogram` (length -> images): each image pads to the
    first length >= its own. Exact dynamic programming over the distinct lengths."""
    lengths = sorted(n for n, count in histogram.items() if count > 0)
    if not lengths:
        raise ValueError("no caption lengths to choose length buckets from")
    counts = [histogram[n] for n in lengths]
    m = len(lengths)
    # best[k][i]: (cost, chosen lengths) covering lengths[i:] with at most k buckets.
    best = [[(0, ()) if i == m else (float("inf"), ()) for i in range(m + 1)] for _ in range(num_buckets + 1)]
    for k in range(1, num_buckets + 1):
        for i in range(m - 1, -1, -1):
            images = 0
            for j in range(i, m):  # the bucket padding lengths[i..j] to lengths[j]
                images += counts[j]
                rest_cost, rest = best[k - 1][j + 1]
                cost = images * lengths[j] + rest_cost
                if cost < best[k][i][0]:
                    best[k][i] = (cost, (lengths[j],) + rest)
    return best[num_buckets][0][1]


def decode_image(encoded: tf.Tensor, image_size: int, preprocess: str = PREPROCESS[0],
                 has_alpha: tf.Tensor | None = None) -> tf.Tensor:
    """Encoded JPEG/PNG/GIF/BMP bytes -> [S, S, 3] float32 in 0-255 (`resize_image` with `preprocess`).

    Grayscale images become 3 channels; GIFs give their first frame. A PNG with transparency
    (RGBA, grey+alpha, or a tRNS chunk: palette or colour key) is composited onto white, as the
    converter stores such images (caption_app/data/pil_images.py), so served bytes and training
    records give the same pixels. JPEGs decode with TensorFlow's default DCT method (im2txt's
    decoder too). `has_alpha`: `png_has_alpha(encoded)`, when the caller has it already (the serving
    decoder asks it of a whole batch at once, outside its per-image function).
    """

    def opaque():
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)  # [h, w, 3] uint8
        image.set_shape([None, None, 3])
        return tf.cast(image, tf.float32)

    def on_white():
        rgba = tf.cast(tf.io.decode_png(encoded, channels=4), tf.float32)  # [h, w, 4]
        alpha = rgba[:, :, 3:] / 255.0
        return rgba[:, :, :3] * alpha + 255.0 * (1.0 - alpha)

    image = tf.cond(png_has_alpha(encoded) if has_alpha is None else has_alpha, on_white, opaque)
    return resize_image(image, image_size, preprocess)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_has_alpha(encoded: tf.Tensor) -> tf.Tensor:
    """Whether bytes are a PNG with transparency: colour type 4 or 6 (grey or RGB with alpha), or a tRNS
    chunk before the image data (palette or colour-key transparency). encoded: string of any shape ->
    bool of that shape; core ops only.

    Asked of the header, not of a 4-channel decode: TensorFlow fills the alpha of a palette PNG
    without tRNS with the bit depth's maximum (15 for 16 colours), not with opaque. The tRNS test
    looks at the first `_PNG_HEAD` bytes for "tRNS" before the first "IDAT" (the chunks before the
    image data are small; "tRNS" by chance inside a compressed chunk before the image data would
    be a wrong answer).
    """
    flat = tf.reshape(encoded, [-1])  # [n]
    head = tf.strings.substr(tf.strings.join([flat, tf.constant(b"\0" * _PNG_HEAD)]), 0, _PNG_HEAD)
    b = tf.reshape(tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int32), [-1, _PNG_HEAD])  # [n, _PNG_HEAD]
    is_png = tf.reduce_all(tf.equal(b[:, :8], tf.constant(list(_PNG_SIGNATURE), tf.int32)), axis=1)  # [n]
    with_alpha = tf.logical_or(tf.equal(b[:, 25], 4), tf.equal(b[:, 25], 6))  # IHDR's colour type

    def at(word: bytes) -> tf.Tensor:  # [n, _PNG_HEAD - 3] bool: where `word` starts
        m = _PNG_HEAD - 3
        return tf.reduce_all(tf.stack([tf.equal(b[:, i:i + m], c) for i, c in enumerate(word)]), axis=0)

    positions = tf.range(_PNG_HEAD - 3)
    never = tf.constant(_PNG_HEAD)
    first_idat = tf.reduce_min(tf.where(at(b"IDAT"), positions, never), axis=1)  # [n]
    first_trns = tf.reduce_min(tf.where(at(b"tRNS"), positions, never), axis=1)
    flags = tf.logical_and(is_png, tf.logical_or(with_alpha, first_trns < first_idat))
    return tf.reshape(flags, tf.shape(encoded))


_PNG_HEAD = 4096


def resize_image(image: tf.Tensor, image_size: int, preprocess: str = PREPROCESS[0]) -> tf.Tensor:
    """[..., h, w, 3] float32 0-255 (any size) -> [..., S, S, 3] float32 in 0-255.

    "default": an antialiased resize; an image already S x S passes unchanged
    (what the resize gives it too, bit for bit, without the ~2 ms per 299 px
    image the antialiased resize costs on CPU). "im2txt": `im2txt_resize`.
    """
    if preprocess == "im2txt":
        return im2txt_resize(image, image_size)
    if preprocess != PREPROCESS[0]:
        raise ValueError(f"unknown data.preprocess {preprocess!r}; choose one of: {', '.join(PREPROCESS)}")
    shape = tf.shape(image)
    same = tf.logical_and(tf.equal(shape[-3], image_size), tf.equal(shape[-2], image_size))
    resized = tf.cond(same, lambda: image,
                      lambda: tf.image.resize(image, [image_size, image_size], antialias=True))
    resized = tf.ensure_shape(resized, image.shape[:-3].concatenate([image_size, image_size, image.shape[-1]]))
    return tf.clip_by_value(resized, 0.0, 255.0)


def im2txt_resize(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """im2txt's inference preprocessing (ops/image_processing.py, is_training=False), in 0-255.

    [..., h, w, 3] -> TF1's bilinear resize (align_corners=False, half_pixel_centers=False) to R x R,
    aspect ratio not kept, R = round(S * 346 / 299) (346 for im2txt's 299) -> the central S x S crop
    (rows and columns 23..321 at 299). im2txt then scales to [-1, 1], which the inception
    backbones' own preprocessing does here.
    """
    outer = int(round(image_size * 346 / 299))
    resized = tf.compat.v1.image.resize_images(image, [outer, outer], tf.compat.v1.image.ResizeMethod.BILINEAR,
                                               align_corners=False)
    offset = (outer - image_size) // 2
    cropped = resized[..., offset:offset + image_size, offset:offset + image_size, :]
    return tf.ensure_shape(cropped, image.shape[:-3].concatenate([image_size, image_size, image.shape[-1]]))


def caption_ids(captions: tf.Tensor, table: tf.lookup.StaticHashTable, settings: TokenizerSettings,
                num_captions: int, caption_length: int, seed: int | None = None) -> tf.Tensor:
    """Raw captions [n] string -> ids [C, T] int32: `<start> words <end>`, 0-padded.

    With `seed`, C captions are drawn at random when the image has more than C
    (training); without, the first C are kept. Images with fewer than C
    captions get all-padding rows, which the loss ignores. Captions longer than
    T tokens are cut (their `<end>` is lost).
    """
    if seed is not None:
        captions = tf.random.shuffle(captions, seed=seed)
    captions = captions[:num_captions]
    words = tokenize(captions, settings)  # [c, (w)] string
    ids = tf.cast(table.lookup(words), tf.int32)  # [c, (w)]
    column = tf.ones([ids.nrows(), 1], tf.int32)
    starts = tf.RaggedTensor.from_tensor(column * START_ID)
    ends = tf.RaggedTensor.from_tensor(column * END_ID)
    ids = tf.concat([starts, ids, ends], axis=1)  # [c, (w + 2)]
    return ids.to_tensor(default_value=PAD_ID, shape=[num_captions, caption_length])


def has_usable_caption(captions: tf.Tensor, image_id: tf.Tensor, settings: TokenizerSettings) -> tf.Tensor:
    """Whether any of an image's raw captions [n] has a word after tokenization (scalar bool).

    A record without one would train on `<start><end>` alone: the pipeline
    skips it, printing one line per skipped record (to stderr, with its id).
    """
    usable = tf.reduce_any(tokenize(captions, settings).row_lengths() > 0)

    def report():
        tf.print("skipped record", image_id, "(no usable caption: every caption is empty after tokenization)",
                 output_stream=sys.stderr)
        return usable

    return tf.cond(usable, lambda: usable, report)


def pad_captions(captions: tf.Tensor, num_captions: int) -> tf.Tensor:
    """Raw captions [n] string -> [num_captions] string, padded with "" (batchable references)."""
    captions = captions[:num_captions]
    return tf.pad(captions, [[0, num_captions - tf.shape(captions)[0]]], constant_values="")


def split_inputs_targets(image: tf.Tensor, ids: tf.Tensor):
    """image [..., S, S, 3], ids [..., C, T] -> ({"image", "input_ids" [..., C, T-1]}, targets [..., C, T-1])."""
    inputs = ids[..., :-1]
    targets = ids[..., 1:]
    # A cut caption may end on a real word; a caption's trailing input token
    # past its <end> is padding either way.
    return {"image": image, "input_ids": inputs}, targets


def cut_to_bucket(ids: tf.Tensor, bucket_lengths: tuple[int, ...], caption_rank: int = 1) -> tf.Tensor:
    """One image's caption ids [C, T] (0-padded rows) -> [C, L], L = the tokens its train batch needs.

    caption_rank 1: L = its longest caption's tokens; nothing is cut. caption_rank k > 1: the
    image's bucket is the first of `bucket_lengths` (ascending, the last = T) that holds its k-th
    longest caption (its shortest when it has fewer than k), L = min(that bucket, its longest
    caption's tokens), and longer captions are cut to L tokens by the rule `caption_ids` applies
    at T: `<start>` and the first L - 1 tokens are kept, so a cut caption loses its `<end>`.
    """
    lengths = tf.reduce_sum(tf.cast(tf.not_equal(ids, PAD_ID), tf.int32), axis=-1)  # [C]
    length = tf.reduce_max(lengths)
    if caption_rank > 1:
        captions = tf.reduce_sum(tf.cast(lengths > 0, tf.int32))
        ranked = tf.sort(lengths, direction="DESCENDING")[tf.minimum(caption_rank, captions) - 1]
        buckets = tf.constant(bucket_lengths, tf.int32)
        bucket = tf.gather(buckets, tf.searchsorted(buckets, ranked[None])[0])  # the first >= ranked
        length = tf.minimum(bucket, length)
    return ids[:, :length]


def batch_by_length(ds: tf.data.Dataset, batch_size: int, bucket_lengths: tuple[int, ...], *,
                    training: bool, caption_rank: int = 1) -> tf.data.Dataset:
    """Elements {..., "ids": [C, T]} -> batches {..., "ids": [B, C, L]} of `batch_size` images.

    Not training, or one length: plain batches, L = T (the last partial batch
    dropped when training). Training with several `bucket_lengths`: an image
    goes to the bucket of its longest caption (the first length that holds it;
    no caption is cut beyond the T rule), or with `caption_rank` k > 1 of its
    k-th longest, its longer captions cut to the bucket (`cut_to_bucket`); a
    bucket's batch pads to its length. The stream is repeated first, so an
    image left in a bucket when a pass ends waits for the next pass's images:
    no image is dropped, every batch holds B images, and the dataset is
    infinite (an epoch is the budget's `steps_per_epoch` steps of B images, as
    without buckets).
    """
    if not training or len(bucket_lengths) <= 1:
        return ds.batch(batch_size, drop_remainder=training)

    def trim(r):  # ids [C, T] -> [C, L]
        return {**r, "ids": cut_to_bucket(r["ids"], bucket_lengths, caption_rank)}

    def static_batch(r):  # group_by_window leaves the batch size unknown; under a strategy it must show
        return {k: tf.ensure_shape(v, [batch_size] + [None] * (v.shape.rank - 1)) for k, v in r.items()}

    # Bucket i holds lengths below boundary i, padded to boundary - 1 = bucket_lengths[i].
    ds = ds.repeat().map(trim, num_parallel_calls=AUTOTUNE).bucket_by_sequence_length(
        lambda r: tf.shape(r["ids"])[-1], [n + 1 for n in bucket_lengths],
        [batch_size] * (len(bucket_lengths) + 1), pad_to_bucket_boundary=True, drop_remainder=True)
    return ds.map(static_batch, num_parallel_calls=AUTOTUNE)


def make_augmenter(names: tuple[str, ...], image_size: int, seed: int):
    """Training-time keras-cv augmentation of a batch [B, S, S, 3] (0-255), or None."""
    if not names:
        return None
    import keras_cv  # imported lazily: it is slow to import and only training uses it

    known = {
        "flip": lambda: keras_cv.layers.RandomFlip("horizontal", seed=seed),
        # im2txt's distort_image: brightness 32/255, saturation and contrast 0.5-1.5, small hue.
        "color": lambda: keras_cv.layers.RandomColorJitter(
            value_range=(0, 255), brightness_factor=0.125, contrast_factor=0.5,
            saturation_factor=(0.25, 0.75), hue_factor=0.03, seed=seed),
        "crop": lambda: keras_cv.layers.RandomCropAndResize(
            target_size=(image_size, image_size), crop_area_factor=(0.75, 1.0),
            aspect_ratio_factor=(3 / 4, 4 / 3), seed=seed),
    }
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown augmentation {unknown}; choose from {sorted(known)} (data.augment)")
    layers = [known[n]() for n in names]

    def augment(images):
        for layer in layers:
            images = layer(images, training=True)
        return tf.clip_by_value(tf.cast(images, tf.float32), 0.0, 255.0)

    return augment


def make_dataset(config: Config, manifest: Manifest, vocab: Vocabulary, split: str, *, training: bool,
                 batch_size: int | None = None, sizes: TensorSizes | None = None,
                 with_ids: bool = False) -> tf.data.Dataset:
    """The batched dataset of one split.

    Args:
      training: shuffle, draw captions at random, augment, batch by length
        bucket (`batch_by_length`: then the dataset is infinite), drop the last
        partial batch (static shapes for XLA).
      batch_size: images per batch (default config.train.batch_size).
      with_ids: also yield the image ids and raw captions (for evaluation).
    Returns:
      (inputs, targets) batches: inputs {"image": [B, S, S, 3] float32,
      "input_ids": [B, C, T-1] int32}, targets [B, C, T-1] int32 (training: T is the
      batch's length bucket); with_ids adds
      a third element {"image_id": [B] string, "captions": [B, n] string,
      "" where an image has fewer than n}.
    """
    sizes = sizes or resolve_tensor_sizes(config, manifest)
    batch_size = batch_size or config.train.batch_size
    files = manifest.files(split)
    if not files:
        raise ValueError(f"split {split!r} of {manifest.data_dir} has no images")
    table = vocab.lookup_table()
    seed = config.train.seed

    ds = tf.data.Dataset.from_tensor_slices(files)
    if training:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(4, len(files)), num_parallel_calls=AUTOTUNE,
                       deterministic=not training)
    ds = ds.map(records.parse_example, num_parallel_calls=AUTOTUNE)
    ds = ds.filter(lambda r: has_usable_caption(r["captions"], r["image_id"], manifest.tokenizer))
    preprocess = config.data.preprocess
    # Records hold no transparency (the converter composites it: tfrecords_tools/images.py), so the
    # per-image PNG header check of bytes from outside is skipped on this hot path.
    no_alpha = tf.constant(False)
    ds = ds.map(lambda r: {"image": decode_image(r["encoded"], sizes.image_size, preprocess, no_alpha),
                           "captions": r["captions"],
                           "image_id": r["image_id"]}, num_parallel_calls=AUTOTUNE)
    if training and config.data.cache:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(config.data.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)

    num_captions = sizes.num_captions if training else manifest.max_captions_per_image

    def to_ids(r):
        ids = caption_ids(r["captions"], table, manifest.tokenizer, num_captions, sizes.caption_length,
                          seed=seed if training else None)
        out = {"image": r["image"], "image_id": r["image_id"], "ids": ids}
        if with_ids:  # raw captions vary in number per image: padded to batch, else dropped
            out["captions"] = pad_captions(r["captions"], manifest.max_captions_per_image)
        return out

    ds = ds.map(to_ids, num_parallel_calls=AUTOTUNE)
    buckets = resolve_bucket_lengths(config, manifest, sizes.caption_length) if training else ()
    ds = batch_by_length(ds, batch_size, buckets, training=training, caption_rank=config.data.bucket_caption_rank)
    augment = make_augmenter(config.data.augment, sizes.image_size, seed) if training else None
    if augment is not None:
        ds = ds.map(lambda r: {**r, "image": augment(r["image"])}, num_parallel_calls=AUTOTUNE)

    def finish(r):
        inputs, targets = split_inputs_targets(r["image"], r["ids"])
        if with_ids:
            return inputs, targets, {"image_id": r["image_id"], "captions": r["captions"]}
        return inputs, targets

    return ds.map(finish, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
