"""Image bytes from users -> pixels, with memory bounded by the size the header declares.

The one decoder of untrusted bytes: `serving_default` of the export and the
`caption` command both call `decode_images`. Before anything is decoded, the
image's declared size is read from its header, in-graph with core ops only:

    JPEG  tf.image.extract_jpeg_shape (libjpeg's own header reader; allocates no pixels)
    PNG   IHDR width, height (big-endian uint32 at bytes 16, 20)
    GIF   logical screen width, height (little-endian uint16 at bytes 6, 8), and the first
          image descriptor's width, height
    BMP   width, |height| (little-endian int32 at bytes 18, 22), as TensorFlow's decoder reads them

Bytes whose header is none of these four, or whose declared width x height
exceeds `max_pixels`, are not decoded at all. A 388 KB PNG that declares
20000 x 20000 pixels would otherwise make the PNG decoder allocate ~6 GB.

Animated GIFs: TensorFlow's GIF decoder decodes every frame even when only the
first is kept (`expand_animations=False`): 500 frames of 2000 x 2000 cost ~2 GB
and ~12 s. The bytes are therefore cut after the first image's data and
closed with the GIF trailer before decoding, so exactly one frame is decoded,
whatever the frame count. Finding that point walks the GIF's block chain
(extension blocks, and data sub-blocks of at most 255 bytes each) in a
`tf.while_loop` of at most `MAX_GIF_STEPS` steps. Encoders write the image
data in sub-blocks of one size (255 bytes), and a step skips up to
`GIF_LOOKAHEAD` sub-blocks of the same size at once (one vectorized look), so
a 4 MB first frame takes a few dozen steps; a GIF whose chain needs more steps
(sub-blocks of ever-changing sizes, which only a hostile file has) is refused
rather than walked further: each step costs ~0.1 ms.
"""

from __future__ import annotations

import tensorflow as tf

from caption_app import io_utils
from caption_app.config import PREPROCESS
from caption_app.data.pipeline import decode_image, png_has_alpha
from caption_app.errors import CaptionAppError

DEFAULT_MAX_IMAGE_PIXELS = io_utils.DEFAULT_MAX_IMAGE_PIXELS  # the one limit, shared with the converters
MAX_GIF_STEPS = 1024
GIF_LOOKAHEAD = 1024  # sub-blocks of one size skipped per step
# Images decoded at once by one call: its decode memory is at most this many images' worth, whatever
# the core count (a 4-megapixel image takes ~90 MB while it is decoded and resized). Concurrent calls
# (TF Serving runs several) still decode in parallel.
DECODE_PARALLELISM = 1



class ImageLimitError(CaptionAppError, ValueError):
    """A pixel or file-size limit that is not a positive integer."""


def check_pixel_limit(max_pixels, flag: str = "--max-image-pixels") -> int:
    """`max_pixels` when it is a positive integer (the one check of the pixel limit); ImageLimitError otherwise."""
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ImageLimitError(f"{flag} must be a positive integer (width x height), got {max_pixels!r}")
    return max_pixels


# Format codes of `declared_size`.
UNKNOWN, JPEG, PNG, GIF, BMP = 0, 1, 2, 3, 4
FORMAT_NAMES = {UNKNOWN: "unknown", JPEG: "JPEG", PNG: "PNG", GIF: "GIF", BMP: "BMP"}

_HEADER_BYTES = 32


def _header(data: tf.Tensor) -> tf.Tensor:
    """The first 32 bytes of `data` (a scalar string), zero-padded: [32] int64."""
    head = tf.strings.substr(data, 0, _HEADER_BYTES)
    head = tf.strings.substr(tf.strings.join([head, tf.constant(b"\0" * _HEADER_BYTES)]), 0, _HEADER_BYTES)
    return tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64)


def _little(b: tf.Tensor, start: int, size: int) -> tf.Tensor:
    return sum(b[start + i] * (256 ** i) for i in range(size))


def _big(b: tf.Tensor, start: int, size: int) -> tf.Tensor:
    return sum(b[start + i] * (256 ** (size - 1 - i)) for i in range(size))


def _starts_with(b: tf.Tensor, magic: bytes) -> tf.Tensor:
    return tf.reduce_all(tf.equal(b[:len(magic)], tf.constant(list(magic), tf.int64)))


def image_format(data: tf.Tensor) -> tf.Tensor:
    """The format the bytes' signature names: int32 scalar, one of UNKNOWN, JPEG, PNG, GIF, BMP."""
    b = _header(data)
    fmt = tf.constant(UNKNOWN, tf.int32)
    for code, magic in ((BMP, b"BM"), (GIF, b"GIF8"), (PNG, b"\x89PNG\r\n\x1a\n"), (JPEG, b"\xff\xd8\xff")):
        fmt = tf.where(_starts_with(b, magic), tf.constant(code, tf.int32), fmt)
    return fmt


def declared_size(data: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(format int32, height int64, width int64) from the header of one image's bytes, nothing decoded.

    Height and width are -1 for an unknown format. A JPEG whose header libjpeg
    cannot read raises InvalidArgumentError (inside `decode_images` that image
    is then reported as not decodable).
    """
    b = _header(data)
    fmt = image_format(data)

    def jpeg():
        shape = tf.cast(tf.image.extract_jpeg_shape(data), tf.int64)
        return shape[0], shape[1]

    def other():
        # BMP: TensorFlow's decoder reads signed int32 width/height; a negative height means top-down.
        def signed32(v):
            return tf.where(v >= 2 ** 31, v - 2 ** 32, v)

        sizes = {PNG: (_big(b, 20, 4), _big(b, 16, 4)),
                 GIF: (_little(b, 8, 2), _little(b, 6, 2)),
                 BMP: (tf.abs(signed32(_little(b, 22, 4))), tf.abs(signed32(_little(b, 18, 4))))}
        height = width = tf.constant(-1, tf.int64)
        for code, (h, w) in sizes.items():
            height = tf.where(tf.equal(fmt, code), h, height)
            width = tf.where(tf.equal(fmt, code), w, width)
        return height, width

    height, width = tf.cond(tf.equal(fmt, JPEG), jpeg, other)
    return fmt, height, width


def within_limit(height: tf.Tensor, width: tf.Tensor, max_pixels: int) -> tf.Tensor:
    """0 < height, 0 < width and height * width <= max_pixels, without int64 overflow: bool scalar."""
    positive = tf.logical_and(height > 0, width > 0)
    return tf.logical_and(positive, width <= tf.constant(max_pixels, tf.int64) // tf.maximum(height, 1))


def first_gif_frame(data: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """A GIF's bytes cut after its first image and closed with the trailer (0x3B).

    Args:
      data: a scalar string holding a GIF.
    Returns:
      (bytes, frame height, frame width): the cut GIF and its first image
      descriptor's size (int64). The size is -1 when no complete first image was
      found within MAX_GIF_STEPS steps: truncated, malformed or too fragmented
      (then `bytes` is empty, which no decoder accepts).
    """
    b = tf.io.decode_raw(data, tf.uint8)  # [n]
    n = tf.cast(tf.size(b), tf.int64)
    padded = tf.concat([tf.cast(b, tf.int64), [0]], 0)  # [n + 1]: reads past the end give 0

    def at(pos):  # the byte at `pos` as int64, 0 outside the data
        pos = tf.convert_to_tensor(pos, tf.int64)
        return tf.gather(padded, tf.where(tf.logical_and(pos >= 0, pos < n), pos, n))

    def table(packed):  # a colour table's bytes from its descriptor's packed field
        return tf.where(packed >= 128, 3 * tf.bitwise.left_shift(tf.constant(2, tf.int64), packed % 8),
                        tf.constant(0, tf.int64))

    # State: pos, mode (0: at a block start, 1: in an extension's sub-blocks, 2: in the image's
    # sub-blocks), end (the cut: one past the image data's terminator; 0 while searching, -1 failed),
    # frame height, width.
    start = 13 + table(at(10))
    minus_one = tf.constant(-1, tf.int64)

    def step(pos, mode, end, height, width):
        byte = at(pos)
        # At a block start: 0x21 extension (label, then sub-blocks), 0x2C image descriptor (9 bytes,
        # a local colour table, the LZW code size byte, then sub-blocks); anything else ends the walk.
        is_ext = tf.logical_and(tf.equal(mode, 0), tf.equal(byte, 0x21))
        is_image = tf.logical_and(tf.equal(mode, 0), tf.equal(byte, 0x2C))
        image_data = pos + 10 + table(at(pos + 9)) + 1
        # In sub-blocks: a size byte, 0 terminates the chain. Encoders write sub-blocks of one size
        # (255 bytes): the run of following sub-blocks of this one's size is skipped in the same step.
        in_blocks = mode > 0
        terminator = tf.logical_and(in_blocks, tf.equal(byte, 0))
        following = pos + (byte + 1) * lookahead  # [K] the next K sub-blocks' starts if all had this size
        same = tf.cast(tf.equal(at(following), byte), tf.int64)
        run = tf.reduce_sum(tf.math.cumprod(same))  # how many of them do
        new_pos = tf.where(is_ext, pos + 2, tf.where(is_image, image_data, tf.where(
            terminator, pos + 1, pos + (byte + 1) * (run + 1))))
        new_mode = tf.where(is_ext, tf.constant(1, tf.int64), tf.where(is_image, tf.constant(2, tf.int64), tf.where(
            terminator, tf.constant(0, tf.int64), mode)))
        done = tf.logical_and(terminator, tf.equal(mode, 2))
        bad = tf.logical_or(tf.logical_and(tf.equal(mode, 0), tf.logical_not(tf.logical_or(is_ext, is_image))),
                            pos >= n)
        new_end = tf.where(bad, minus_one, tf.where(done, pos + 1, end))
        new_height = tf.where(is_image, at(pos + 7) + 256 * at(pos + 8), height)
        new_width = tf.where(is_image, at(pos + 5) + 256 * at(pos + 6), width)
        return new_pos, new_mode, new_end, new_height, new_width

    lookahead = tf.range(1, GIF_LOOKAHEAD + 1, dtype=tf.int64)  # [K]
    zero = tf.constant(0, tf.int64)
    _, _, end, height, width = tf.while_loop(
        lambda pos, mode, end, height, width: tf.equal(end, 0), step,
        (start, zero, zero, minus_one, minus_one), maximum_iterations=MAX_GIF_STEPS)
    found = end > 0
    cut = tf.cond(found, lambda: tf.strings.join([tf.strings.substr(data, tf.constant(0, tf.int64), end), b"\x3b"]),
                  lambda: tf.constant(b""))
    return cut, tf.where(found, height, minus_one), tf.where(found, width, minus_one)


def decode_bounded(data: tf.Tensor, image_size: int, max_pixels: int, preprocess: str = PREPROCESS[0],
                   has_alpha: tf.Tensor | None = None) -> tf.Tensor:
    """One image's bytes -> [S, S, 3] float32 0-255, as `pipeline.decode_image`, or an error.

    Fails (InvalidArgumentError, before anything is decoded) when the format is
    not JPEG/PNG/GIF/BMP or the declared size is over `max_pixels`; a GIF is cut
    to its first image first (its descriptor's size is checked too).
    """
    fmt, height, width = declared_size(data)
    ok = tf.logical_and(tf.not_equal(fmt, UNKNOWN), within_limit(height, width, max_pixels))

    def gif():
        cut, frame_height, frame_width = first_gif_frame(data)
        return cut, within_limit(frame_height, frame_width, max_pixels)

    data, frame_ok = tf.cond(tf.logical_and(ok, tf.equal(fmt, GIF)), gif, lambda: (data, tf.constant(True)))
    check = tf.debugging.Assert(tf.logical_and(ok, frame_ok), ["image refused before decoding: unknown format, "
                                                               "or larger than the pixel limit"])
    with tf.control_dependencies([check]):
        data = tf.identity(data)
    return decode_image(data, image_size, preprocess, has_alpha)


def decode_images(image_bytes: tf.Tensor, image_size: int, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                  preprocess: str = PREPROCESS[0]) -> tuple[tf.Tensor, tf.Tensor]:
    """Decodes what decodes within the limit, and reports which did.

    One bad image does not fail its batch: a decode op that fails aborts the
    whole call, and header checks cannot prove that a JPEG decodes (a truncated
    or corrupt one passes them), so the images are decoded through `tf.data`
    with `ignore_errors()`, `DECODE_PARALLELISM` at a time. The dataset is built
    per call (~10 ms on CPU, whatever the batch size).

    Args:
      image_bytes: [B] string, encoded JPEG/PNG/GIF/BMP.
      image_size: S.
      max_pixels: images whose header declares more pixels are not decoded.
      preprocess: the run's `data.preprocess` (how images are resized to S x S).
    Returns:
      (images [M, S, S, 3] float32 0-255, index [M] int32): the M images that
      decoded, with their positions in `image_bytes`, ascending.
    """
    n = tf.shape(image_bytes)[0]
    # Transparency is read from the headers of the whole batch here: the per-image function below is
    # instantiated anew with each call's dataset, and its cost grows with its size.
    has_alpha = png_has_alpha(image_bytes)  # [B]
    ds = tf.data.Dataset.from_tensor_slices((tf.range(n), image_bytes, has_alpha))
    ds = ds.map(lambda i, data, alpha: (i, decode_bounded(data, image_size, max_pixels, preprocess, alpha)),
                num_parallel_calls=DECODE_PARALLELISM, deterministic=True)
    ds = ds.ignore_errors()
    # Skip the graph rewrites and the autotuner, which cost ~5 ms per call and tune nothing in a
    # one-batch pipeline.
    options = tf.data.Options()
    options.autotune.enabled = False
    options.experimental_optimization.apply_default_optimizations = False
    ds = ds.with_options(options)
    ds = ds.batch(tf.cast(tf.maximum(n, 1), tf.int64))  # one batch, or none when nothing decoded
    initial = (tf.zeros([0], tf.int32), tf.zeros([0, image_size, image_size, 3], tf.float32))
    index, images = ds.reduce(initial, lambda _, batch: batch)
    return images, index
