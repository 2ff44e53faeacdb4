"""caption_files(run_dir, paths): beam-search captions for image files.

Accepts files, folders (their images, sorted) and globs. An unreadable image
is reported in its result's "error" and does not stop the others.
"""

from __future__ import annotations

import glob
import os

import tensorflow as tf

from caption_app import run_dir as run_dir_lib
from caption_app.data.pipeline import decode_image
from caption_app.model.show_and_tell import Captioner

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")


def expand_paths(patterns: list[str]) -> list[str]:
    """Files, folders and globs -> image file paths, in a stable order."""
    paths: list[str] = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            paths += sorted(os.path.join(pattern, f) for f in os.listdir(pattern)
                            if f.lower().endswith(IMAGE_EXTENSIONS))
        elif os.path.exists(pattern):
            paths.append(pattern)
        else:
            matches = sorted(glob.glob(pattern))
            if not matches:
                raise FileNotFoundError(f"no image matches {pattern!r}")
            paths += [m for m in matches if os.path.isfile(m)]
    return paths


def caption_files(run_dir: str, patterns: list[str], *, beam_size: int | None = None,
                  max_length: int | None = None, length_normalization: float | None = None,
                  num_results: int | None = None, batch_size: int = 16) -> list[dict]:
    """Captions images with beam search.

    Args:
      run_dir: a trained run dir.
      patterns: image files, folders or globs.
      beam_size, max_length, length_normalization, num_results: beam search
        settings (caption_app/decoding.py: None or 0 keeps the run's `decode`
        config; num_results defaults to the beam size and may not exceed it).
    Returns:
      One dict per image: {"image": path, "captions": [{"caption", "log_prob",
      "score"}, ...] best first} or {"image": path, "error": message}.
    """
    # Checked before the slow model load.
    settings = run_dir_lib.load_config(run_dir).decode.resolve(
        beam_size=beam_size, max_length=max_length, length_normalization=length_normalization,
        num_captions=num_results)
    model, _, vocab, sizes, _ = run_dir_lib.load_model(run_dir)
    captioner = Captioner(model)

    @tf.function(input_signature=[tf.TensorSpec([None, sizes.image_size, sizes.image_size, 3], tf.float32)])
    def generate(images):
        result = captioner.generate(images, settings)
        return vocab.ids_to_text(result.ids), result.log_probs, result.scores

    results: list[dict] = []
    batch: list[tuple[int, tf.Tensor]] = []

    def flush():
        if not batch:
            return
        texts, log_probs, scores = generate(tf.stack([image for _, image in batch]))
        for row, (index, _) in enumerate(batch):
            results[index]["captions"] = [
                {"caption": t.decode("utf-8"), "log_prob": float(lp), "score": float(s)}
                for t, lp, s in zip(texts[row].numpy(), log_probs[row].numpy(), scores[row].numpy())]
        batch.clear()

    for path in expand_paths(patterns):
        results.append({"image": path})
        try:
            with open(path, "rb") as f:
                image = decode_image(tf.constant(f.read()), sizes.image_size)
        except (OSError, tf.errors.InvalidArgumentError) as err:
            results[-1]["error"] = f"cannot read image: {getattr(err, 'message', err)}"
            continue
        batch.append((len(results) - 1, image))
        if len(batch) == batch_size:
            flush()
    flush()
    return results
