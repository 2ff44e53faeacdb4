"""caption_files(run_dir, paths): beam-search captions for image files.

Accepts files, folders (their images, sorted) and globs, local or on any
TensorFlow file system (gs://...: caption_app/io_utils.py). Every problem is
reported in plain words in its own result's "error" and does not stop the
others: a path that does not exist, a folder without images, a pattern that
matches nothing, a symlink loop, something that is not a regular file, an
unreadable file, bytes that are not a JPEG/PNG/GIF/BMP image or do not decode,
an image whose header declares more pixels than `max_image_pixels` (not
decoded at all: caption_app/data/image_bytes.py, the decoder the export's
`serving_default` uses too).
"""

from __future__ import annotations

import errno
import os
import stat

import tensorflow as tf

from caption_app import io_utils
from caption_app.runs import loader as run_loader
from caption_app.data import image_bytes
from caption_app.model.show_and_tell import Captioner

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
_GLOB_CHARS = ("*", "?", "[")


def expand_paths(patterns: list[str]) -> list[tuple[str, str | None]]:
    """Files, folders and globs -> (path, problem) pairs, in a stable order.

    `problem` is None for a path to caption, else why the pattern gives
    nothing to caption (then `path` is the pattern itself).
    """
    found: list[tuple[str, str | None]] = []
    for pattern in patterns:
        if io_utils.isdir(pattern):
            try:
                names = sorted(f for f in io_utils.listdir(pattern) if f.lower().endswith(IMAGE_EXTENSIONS))
            except OSError as err:
                found.append((pattern, f"cannot list this folder: {_plain(err)}"))
                continue
            if not names:
                found.append((pattern, f"no images in this folder (looked for {', '.join(IMAGE_EXTENSIONS)})"))
            found += [(os.path.join(pattern, name), None) for name in names]
        elif io_utils.lexists(pattern):  # a file, or a link that may not resolve (reported when read)
            found.append((pattern, None))
        elif any(c in pattern for c in _GLOB_CHARS):
            files = [m for m in sorted(io_utils.glob(pattern)) if not io_utils.isdir(m)]
            if not files:
                found.append((pattern, "no file matches this pattern"))
            found += [(m, None) for m in files]
        else:
            found.append((pattern, "no such file or folder"))
    return found


def _plain(err: OSError) -> str:
    """An OSError in words, without the path (the result names it)."""
    if err.errno == errno.ELOOP:
        return "a symlink loop"
    return (err.strerror or str(err)).lower()


def read_image_file(path: str) -> bytes:
    """The bytes of a regular file; OSError with a plain reason otherwise (never blocks on a FIFO)."""
    if io_utils.is_remote(path):  # tf.io.gfile: no symlinks or FIFOs there
        if io_utils.isdir(path):
            raise OSError(errno.EISDIR, "a folder")
        try:
            return io_utils.read_bytes(path)
        except tf.errors.OpError as err:
            raise OSError(errno.EIO, (err.message or type(err).__name__).strip().splitlines()[0]) from None
    try:
        info = os.stat(path)
    except OSError as err:
        if err.errno == errno.ENOENT and os.path.islink(path):
            raise OSError(err.errno, "a broken symlink (its target does not exist)") from None
        raise OSError(err.errno, _plain(err)) from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise OSError(errno.EINVAL, kind)
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise OSError(err.errno, _plain(err)) from None


def why_not_decoded(data: bytes, max_pixels: int) -> str:
    """Why `image_bytes.decode_images` did not decode `data`, in words."""
    try:
        fmt, height, width = (int(t) for t in image_bytes.declared_size(tf.constant(data)))
    except tf.errors.OpError:
        return "a damaged JPEG (its header cannot be read)"
    if fmt == image_bytes.UNKNOWN:
        return "not a JPEG, PNG, GIF or BMP image"
    name = image_bytes.FORMAT_NAMES[fmt]
    if not bool(image_bytes.within_limit(tf.constant(height, tf.int64), tf.constant(width, tf.int64), max_pixels)):
        return (f"its {name} header declares {width}x{height} pixels, more than the limit of {max_pixels} "
                f"(--max-image-pixels); not decoded")
    return f"a damaged or truncated {name} image (it does not decode)"


def caption_files(run_dir: str, patterns: list[str], *, beam_size: int | None = None,
                  max_length: int | None = None, length_normalization: float | None = None,
                  num_results: int | None = None, batch_size: int = 16,
                  max_image_pixels: int = image_bytes.DEFAULT_MAX_IMAGE_PIXELS) -> list[dict]:
    """Captions images with beam search.

    Args:
      run_dir: a trained run dir.
      patterns: image files, folders or globs.
      beam_size, max_length, length_normalization, num_results: beam search
        settings (caption_app/inference/settings.py: None or 0 keeps the run's `decode`
        config; num_results defaults to the beam size and may not exceed it).
      batch_size: images read, decoded and captioned together.
      max_image_pixels: images whose header declares more pixels are not decoded.
    Returns:
      One dict per image (or per pattern that gives none): {"image": path,
      "captions": [{"caption", "log_prob", "score"}, ...] best first} or
      {"image": path, "error": message}.
    """
    if isinstance(max_image_pixels, bool) or not isinstance(max_image_pixels, int) or max_image_pixels < 1:
        raise ValueError(f"--max-image-pixels must be a positive integer, got {max_image_pixels!r}")
    # Checked before the slow model load.
    settings = run_loader.load_config(run_dir).decode.resolve(
        beam_size=beam_size, max_length=max_length, length_normalization=length_normalization,
        num_captions=num_results)
    model, config, vocab, sizes, _ = run_loader.load_model(run_dir)
    captioner = Captioner(model)

    @tf.function(input_signature=[tf.TensorSpec([None, sizes.image_size, sizes.image_size, 3], tf.float32)])
    def generate(images):
        result = captioner.generate(images, settings)
        return vocab.ids_to_text(result.ids), result.log_probs, result.scores

    results: list[dict] = []
    batch: list[tuple[int, bytes]] = []  # (row in results, file bytes)

    def flush():
        if not batch:
            return
        data = [d for _, d in batch]
        images, index = image_bytes.decode_images(tf.constant(data), sizes.image_size, max_image_pixels,
                                                   config.data.preprocess)
        decoded = set(index.numpy().tolist())
        for i, (row, d) in enumerate(batch):
            if i not in decoded:
                results[row]["error"] = f"cannot caption: {why_not_decoded(d, max_image_pixels)}"
        if decoded:
            texts, log_probs, scores = generate(images)
            for j, i in enumerate(index.numpy().tolist()):
                results[batch[i][0]]["captions"] = [
                    {"caption": t.decode("utf-8"), "log_prob": float(lp), "score": float(s)}
                    for t, lp, s in zip(texts[j].numpy(), log_probs[j].numpy(), scores[j].numpy())]
        batch.clear()

    for path, problem in expand_paths(patterns):
        results.append({"image": path})
        if problem is not None:
            results[-1]["error"] = problem
            continue
        try:
            data = read_image_file(path)
        except OSError as err:
            results[-1]["error"] = f"cannot read: {err.strerror}"
            continue
        batch.append((len(results) - 1, data))
        if len(batch) == batch_size:
            flush()
    flush()
    return results
