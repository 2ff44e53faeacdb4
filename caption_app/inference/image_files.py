"""Image files named by paths, folders or globs, read safely within a size limit, and `caption_files`: their captions.

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
from caption_app.data import image_bytes

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


def read_image_file(path: str, max_bytes: int | None = None) -> bytes:
    """The bytes of a regular file of at most `max_bytes` (default `io_utils.DEFAULT_MAX_IMAGE_FILE_BYTES`,
    the converters' limit), checked with a stat before reading; OSError with a plain reason otherwise
    (never blocks on a FIFO, never reads a huge file into memory)."""
    limit = io_utils.DEFAULT_MAX_IMAGE_FILE_BYTES if max_bytes is None else max_bytes
    if io_utils.is_remote(path):  # tf.io.gfile: no symlinks or FIFOs there
        if io_utils.isdir(path):
            raise OSError(errno.EISDIR, "a folder")
        try:
            size = io_utils.getsize(path)
            if size > limit:
                raise OSError(errno.EFBIG, _too_large(size, limit))
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
    if info.st_size > limit:
        raise OSError(errno.EFBIG, _too_large(info.st_size, limit))
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)  # a file that grew since the stat is still bounded
    except OSError as err:
        raise OSError(err.errno, _plain(err)) from None
    if len(data) > limit:
        raise OSError(errno.EFBIG, _too_large(len(data), limit))
    return data


def _too_large(size: int, limit: int) -> str:
    return (f"the file has {size} bytes, more than the limit of {limit} (--max-file-bytes); "
            "not read")


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


def caption_files(run_dir: str, patterns: list[str], *, batch_size: int = 16,
                  max_image_pixels: int = image_bytes.DEFAULT_MAX_IMAGE_PIXELS, max_file_bytes: int | None = None,
                  num_results: int | None = None, attention_dir: str | None = None, **decode) -> list[dict]:
    """Captions image files with the run's loaded captioner (caption_app/inference/captioner.py).

    Args:
      run_dir: a trained run dir.
      patterns: image files, folders or globs.
      batch_size: images read, decoded and captioned together.
      max_image_pixels: images whose header declares more pixels are not decoded.
      max_file_bytes: files larger than this are not read (default: the converters' limit).
      num_results: the old name of `num_captions`.
      attention_dir: write, for each captioned image, `attention_dir/<image file name>.png`: the best
        caption's words in a strip, each over the image (as the model saw it) under its attention
        map (caption_app/attention_images.py). A run trained with `model.attention_size` only.
      **decode: decode settings (strategy, beam_size, max_length, length_normalization, num_captions,
        temperature, top_k, top_p, seed, no_repeat_ngram: caption_app/inference/settings.py;
        None or 0 keeps the run's `decode` config).
    Returns:
      One dict per image (or per pattern that gives none): {"image": path,
      "captions": [{"caption", "log_prob", "score"}, ...] best first} (with `attention_dir`
      also "attention": the PNG's path) or {"image": path, "error": message}.
    Raises:
      AttentionError: `attention_dir` for a run without attention, or two images with one file name.
    """
    from caption_app.inference import captioner as captioner_lib
    from caption_app.inference.inputs import caption_items
    from caption_app.runs import loader as run_loader
    
    image_bytes.check_pixel_limit(max_image_pixels)
    if num_results is not None:
        decode.setdefault("num_captions", num_results)
    # Checked before the slow model load.
    config = run_loader.load_config(run_dir)
    settings = config.decode.resolve(**decode)
    found = expand_paths(patterns)
    paths = [path for path, problem in found if problem is None]
    if attention_dir is not None:
        _check_attention_names(run_dir, config, paths)
    captioner = captioner_lib.TrainedCaptioner.from_run_dir(run_dir, max_image_pixels=max_image_pixels)
    captioned = iter(caption_items(captioner.functions(settings), paths, settings, batch_size=batch_size,
                                   max_image_pixels=max_image_pixels, max_file_bytes=max_file_bytes,
                                   attention=attention_dir is not None))
    results: list[dict] = []
    for path, problem in found:
        if problem is not None:
            results.append({"image": path, "error": problem})
            continue
        result = next(captioned)
        if result.error is not None:
            results.append({"image": path, "error": result.error})
        else:
            results.append({"image": path, "captions": [
                {"caption": c, "log_prob": lp, "score": sc}
                for c, lp, sc in zip(result.captions, result.log_probs, result.scores)]})
            if attention_dir is not None:
                results[-1]["attention"] = _write_strip(attention_dir, path, result)
    return results


def _check_attention_names(run_dir: str, config, paths: list[str]) -> None:
    """`caption --attention DIR` needs a model with attention, and one PNG name per image."""
    from caption_app.inference.captioner import AttentionError

    if not config.model.attention_size:
        raise AttentionError(f"{run_dir} was trained without attention (model.attention_size is 0), so "
                             "--attention has no maps to draw; train with --set model.attention_size=N "
                             "(the shapes preset does)")
    seen: dict[str, str] = {}
    for path in paths:
        name = os.path.basename(path)
        if name in seen:
            raise AttentionError(f"--attention names each PNG after its image file, and {seen[name]} and "
                                 f"{path} are both {name}; caption them in separate runs")
        seen[name] = path


def _write_strip(attention_dir: str, path: str, result) -> str:
    """attention_dir/<file name>.png of the best caption's words over the image; its path."""
    from caption_app import attention_images

    io_utils.makedirs(attention_dir)
    out = os.path.join(attention_dir, os.path.basename(path) + ".png")
    words = result.captions[0].split() if result.captions else []
    maps = result.attention[0] if result.captions else []
    io_utils.write_bytes_atomic(out, attention_images.strip_png(result.pixels, words, maps))
    return out
