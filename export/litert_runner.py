"""python caption.py [--variant float32] [--search auto|model|steps] IMAGE... — caption images with a LiteRT package.

This file is the package's reference runner: `python -m export --format litert`
copies it into the package as `caption.py` (with `pil_images.py`, `vocab_file.py`, `jpeg_fast.py`),
so the package runs on its own, with numpy, Pillow and `ai-edge-litert` only
(no TensorFlow, no caption_app). For each image it prints its path, a tab and
its best caption, one line per image; an image that cannot be read is one line
on stderr naming it, the others are still captioned, and the exit code is 1.

The package (docs/serving.md, "On-device: LiteRT"):

    litert.json                  what is below, the state contract and the decode settings
    vocab.txt                    `word count` per line; the word on line i (from 0) has id i + 4
    <variant>/encoder.tflite     images float32 [1, S, S, 3] (0-255, already S x S) -> the state tensors
    <variant>/decode_step.tflite input_ids int32 [N], the state tensors [N, width]
                                 -> log_probs float32 [N, V], the new state tensors
    <variant>/search.tflite      images [1, S, S, 3] -> ids [1, K, T], scores, log_probs [1, K], lengths
                                 (the export's whole search in one model, when it converted)

`--search steps` runs the search here, in numpy, driving `decode_step`: the
same beam search and greedy decoding as caption_app/inference (beam_search.py,
strategies.py), with their tie-breaking (the lower index: the earlier beam, then
the lower word id), length normalization, words-per-beam and no-repeat n-gram
rules; it is what an app on a phone would do with the step model.

Images become S x S pixels as the SavedModel makes them: JPEGs decode as
TensorFlow decodes them (jpeg_fast.py), other formats with Pillow (first
frame; transparency composited onto white: pil_images.to_rgb), and `resize`
scales them (see its docstring for how close that is to TensorFlow's).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

import numpy as np
from PIL import Image

try:  # the package's copies of caption_app/data/pil_images.py, vocab_file.py and export/jpeg_fast.py, beside this file
    import jpeg_fast
    import pil_images
    import vocab_file
except ImportError:  # this module in the repo (export/litert_runner.py)
    from caption_app.data import pil_images, vocab_file
    from export import jpeg_fast

PACKAGE_FILE = "litert.json"
FORMAT = "show-and-tell-litert"
FORMAT_VERSION = 1
VARIANTS = ("float32", "float16", "int8")
MODELS = ("encoder", "decode_step", "search")  # search is optional
STRATEGIES = ("beam", "greedy")
SIGNATURE = "serving_default"
NUM_SPECIAL_TOKENS = 4  # <pad> <start> <end> <unk>: ids 0-3; vocab.txt's words follow
PAD_ID, START_ID, END_ID, UNK_ID = 0, 1, 2, 3
UNK = "<unk>"
NEG_INF = np.float32(-np.inf)


class PackageError(Exception):
    """A package that is not complete or not consistent, or a setting it cannot run (one line)."""


class ImageError(Exception):
    """An image file that cannot be captioned (one line naming it)."""


# ---------------------------------------------------------------- the package


def _require(described: dict, key: str, kind, where: str):
    """described[key], of type `kind` (a bool is not an int here)."""
    value = described.get(key) if isinstance(described, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise PackageError(f"{where}: {key!r} must be {getattr(kind, '__name__', kind)}, got {value!r}; "
                           "export the package again")
    return value


def _package_file(package_dir: str, relative, where: str) -> str:
    """A file the description names: inside the package, present."""
    if not isinstance(relative, str) or os.path.isabs(relative) or os.path.normpath(relative).startswith(".."):
        raise PackageError(f"{where} names {relative!r}, not a file inside the package")
    path = os.path.join(package_dir, relative)
    if not os.path.isfile(path):
        raise PackageError(f"{path} is missing ({where} lists it); the package is incomplete: export it again")
    return path


def load_description(package_dir: str) -> dict:
    """The package's litert.json, checked against the files beside it.

    Raises:
      PackageError: no or unreadable litert.json, another format or version, a key missing or of the
        wrong type, a listed file missing or of another size than listed, a file outside the package,
        or a vocabulary whose size is not `vocab_size`.
    """
    where = os.path.join(package_dir, PACKAGE_FILE)
    if not os.path.isfile(where):
        raise PackageError(f"{package_dir} is not a LiteRT caption package (no {PACKAGE_FILE}); export one with "
                           "python -m export --format litert")
    try:
        with open(where, encoding="utf-8") as f:
            described = json.load(f)
    except (OSError, ValueError) as err:
        raise PackageError(f"{where} is not readable JSON ({err}); export the package again") from None
    if not isinstance(described, dict) or described.get("format") != FORMAT:
        raise PackageError(f"{where} does not describe a {FORMAT} package")
    if described.get("format_version") != FORMAT_VERSION:
        raise PackageError(f"{where} has format_version {described.get('format_version')!r}; this runner reads "
                           f"{FORMAT_VERSION}: use the caption.py exported with it")
    for key, kind in (("image_size", int), ("vocab_size", int), ("max_image_pixels", int), ("preprocess", str),
                      ("vocab_file", str), ("state", list), ("decode", dict), ("variants", dict)):
        _require(described, key, kind, where)
    special = {"pad": PAD_ID, "start": START_ID, "end": END_ID, "unk": UNK_ID}
    if described.get("special_ids", special) != special:
        raise PackageError(f"{where}: special_ids {described['special_ids']} are not this runner's {special}")
    if described["preprocess"] not in ("default", "im2txt"):
        raise PackageError(f"{where}: unknown preprocess {described['preprocess']!r}")
    for entry in described["state"]:
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)
                and isinstance(entry.get("width"), int) and entry["width"] > 0):
            raise PackageError(f"{where}: each state entry must be {{'name': str, 'width': int > 0}}, got {entry!r}")
    decode = described["decode"]
    for key, kind in (("strategy", str), ("beam_size", int), ("max_length", int), ("num_captions", int),
                      ("length_normalization", (int, float)), ("words_per_beam", int), ("no_repeat_ngram", int)):
        _require(decode, key, kind, f"{where} decode")
    if not described["variants"]:
        raise PackageError(f"{where} lists no variants")
    for variant, models in described["variants"].items():
        if not isinstance(models, dict) or not {"encoder", "decode_step"} <= set(models) \
                or set(models) - set(MODELS):
            raise PackageError(f"{where}: variant {variant!r} must list encoder, decode_step (and optionally "
                               f"search), got {models!r}")
        for role, entry in models.items():
            entry_where = f"{where} ({variant} {role})"
            path = _package_file(package_dir, _require(entry, "file", str, entry_where), entry_where)
            size = os.path.getsize(path)
            if size != _require(entry, "bytes", int, entry_where):
                raise PackageError(f"{path} is {size} bytes, {PACKAGE_FILE} says {entry['bytes']}: a truncated or "
                                   "replaced file; export the package again")
    vocab_path = _package_file(package_dir, described["vocab_file"], f"{where} (vocab_file)")
    words = read_vocabulary(vocab_path)
    if len(words) + NUM_SPECIAL_TOKENS != described["vocab_size"]:
        raise PackageError(f"{vocab_path} holds {len(words)} words ({len(words) + NUM_SPECIAL_TOKENS} ids with "
                           f"the {NUM_SPECIAL_TOKENS} special tokens), {PACKAGE_FILE} says vocab_size "
                           f"{described['vocab_size']}; the two come from different exports")
    return described


def read_vocabulary(path: str) -> list[str]:
    """vocab.txt (`word count` per line) -> the words, id i + 4 on line i."""
    try:
        with open(path, encoding="utf-8") as f:
            return vocab_file.parse(f.read(), path)[0]
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise PackageError(f"{path} is not a readable vocabulary ({err})") from None


def ids_to_text(ids, tokens: list[str]) -> str:
    """ids [T] -> the words up to <end>, <pad>/<start> dropped, <unk> kept (Vocabulary.ids_to_text)."""
    words = []
    for i in ids:
        if i == END_ID:
            break
        if i >= UNK_ID:
            words.append(tokens[i])
    return " ".join(words)


# ---------------------------------------------------------------- images


def read_image(path: str, max_pixels: int, jpeg_idct: str = "fast") -> np.ndarray:
    """An image file -> [h, w, 3] float32 0-255: the first frame, transparency composited onto white.

    JPEGs: `jpeg_idct` "fast" decodes as TensorFlow does (jpeg_fast.py: libjpeg's fast integer IDCT, bit
    for bit; the kinds it does not decode, such as progressive JPEGs, go to Pillow); "accurate": Pillow.

    Raises:
      ImageError: not an image Pillow reads, or a header that declares more than `max_pixels`.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(f"{path}: declares {width} x {height} pixels, more than the package's limit of "
                                 f"{max_pixels}")
            if image.format == "JPEG" and jpeg_idct == "fast":
                try:
                    with open(path, "rb") as f:
                        return jpeg_fast.decode(f.read()).astype(np.float32)
                except (jpeg_fast.Unsupported, ValueError, IndexError):
                    pass  # Pillow decodes it, or says why it cannot
            return np.asarray(pil_images.to_rgb(image), dtype=np.float32)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageError(f"{path}: not an image that can be read ({type(err).__name__}: {err})") from None


def resize(pixels: np.ndarray, size: int, preprocess: str = "default") -> np.ndarray:
    """[h, w, 3] float32 0-255 -> [size, size, 3] float32 0-255, as caption_app.data.pipeline.resize_image.

    "default": an image already size x size passes unchanged (as in TensorFlow); others get Pillow's
    bilinear resize of each channel in float ("F" mode), a triangle filter widened by the scale when
    shrinking: TensorFlow's `tf.image.resize(..., antialias=True)` does the same (both sample at pixel
    centres and renormalize the weights at the borders); they differ by float rounding, well under one
    level of 255 (tests/test_litert.py checks < 0.05). "im2txt": TF1's bilinear resize (no half-pixel
    centres) to round(size * 346 / 299), then the central size x size crop, in numpy.
    """
    height, width = pixels.shape[:2]
    if preprocess == "im2txt":
        outer = int(round(size * 346 / 299))
        offset = (outer - size) // 2
        return _legacy_bilinear(pixels, outer)[offset:offset + size, offset:offset + size]
    if (height, width) == (size, size):
        return pixels
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(pixels[:, :, c]), "F").resize(
        (size, size), Image.Resampling.BILINEAR), dtype=np.float32) for c in range(3)]
    return np.clip(np.stack(channels, axis=-1), 0.0, 255.0)


def _legacy_bilinear(pixels: np.ndarray, size: int) -> np.ndarray:
    """TF1 `resize_bilinear(align_corners=False, half_pixel_centers=False)` to size x size."""

    def axis(n_in):
        source = np.arange(size, dtype=np.float32) * np.float32(n_in / size)
        low = np.floor(source).astype(np.int64)
        return low, np.minimum(low + 1, n_in - 1), (source - low).astype(np.float32)

    (y0, y1, fy), (x0, x1, fx) = axis(pixels.shape[0]), axis(pixels.shape[1])
    top = pixels[y0][:, x0] + (pixels[y0][:, x1] - pixels[y0][:, x0]) * fx[None, :, None]
    bottom = pixels[y1][:, x0] + (pixels[y1][:, x1] - pixels[y1][:, x0]) * fx[None, :, None]
    return top + (bottom - top) * fy[:, None, None]


# ---------------------------------------------------------------- searches (numpy)


def _top_k(x: np.ndarray, k: int):
    """x [n, m] -> (values, indices) [n, k], largest first; ties: the lower index (tf.math.top_k)."""
    index = np.argsort(-x, axis=-1, kind="stable")[:, :k]
    return np.take_along_axis(x, index, axis=-1), index


def block_repeated_ngrams(log_probs: np.ndarray, seq: np.ndarray, length: int, n: int) -> np.ndarray:
    """caption_app/inference/ngram_blocking.py: -inf for each word that would repeat an n-gram of its row.

    log_probs [rows, vocab], seq [rows, T] (the row's words so far: seq[:, :length]).
    """
    t_max = seq.shape[1]
    starts = t_max - n + 1
    if n <= 0 or starts <= 0:
        return log_probs
    rows = np.arange(seq.shape[0])
    match = np.broadcast_to(np.arange(starts) + n <= length, (seq.shape[0], starts))  # [rows, starts]
    for i in range(n - 1):
        tail = seq[:, max(length - n + 1 + i, 0)]  # [rows]
        match = match & (seq[:, i:i + starts] == tail[:, None])
    blocked = np.zeros(log_probs.shape, bool)
    r, j = np.nonzero(match)
    blocked[rows[r], seq[r, j + n - 1]] = True
    return np.where(blocked, NEG_INF, log_probs)


def _only_top_words(log_probs: np.ndarray, w: int) -> np.ndarray:
    """All but each row's w largest at -inf (ties keep the lower id)."""
    _, keep = _top_k(log_probs, min(w, log_probs.shape[-1]))
    kept = np.zeros(log_probs.shape, bool)
    np.put_along_axis(kept, keep, True, axis=-1)
    return np.where(kept, log_probs, NEG_INF)


def beam_search(step_fn, initial_state: list, *, start_id: int = START_ID, end_id: int = END_ID,
                beam_size: int = 3, max_length: int = 20, length_normalization: float = 0.0,
                num_results: int | None = None, words_per_beam: int = 0, no_repeat_ngram: int = 0) -> dict:
    """caption_app/inference/beam_search.py's beam search, step for step, in numpy (float32).

    Args:
      step_fn: (ids [n] int32, state: list of [n, width]) -> (log_probs [n, V], new state).
      initial_state: list of [batch, width] float32 (the encoder's outputs, in state order).
    Returns:
      {"ids" [batch, K, T] int32, "scores", "log_probs" [batch, K] float32, "lengths" [batch, K] int32},
      best first (K = num_results).
    """
    k, t_max = beam_size, max_length
    num_results = k if num_results is None else num_results
    alpha = np.float32(length_normalization)
    batch = initial_state[0].shape[0]
    alive_logp = np.tile(np.array([[0.0] + [-np.inf] * (k - 1)], np.float32), (batch, 1))  # [batch, beam]
    alive_seq = np.zeros([batch, k, t_max], np.int32)  # [batch, beam, time]
    fin_seq = np.zeros([batch, k, t_max], np.int32)
    fin_score = np.full([batch, k], NEG_INF)
    fin_logp = np.full([batch, k], NEG_INF)
    fin_len = np.zeros([batch, k], np.int32)

    # Step 0 once per image, repeated for the beams.
    log_probs, state = step_fn(np.full([batch], start_id, np.int32), initial_state)
    log_probs = np.repeat(np.asarray(log_probs, np.float32), k, axis=0)  # [batch * beam, V]
    state = [np.repeat(s, k, axis=0) for s in state]
    t = 0
    while True:
        vocab = log_probs.shape[-1]
        if end_id >= vocab:
            raise PackageError(f"end id {end_id} is not below the step model's vocabulary size {vocab}")
        if no_repeat_ngram:
            log_probs = block_repeated_ngrams(log_probs, alive_seq.reshape(batch * k, t_max), t, no_repeat_ngram)
        if words_per_beam:
            log_probs = _only_top_words(log_probs, words_per_beam)
        cand = alive_logp[:, :, None] + log_probs.reshape(batch, k, vocab)  # [batch, beam, V]
        length = t + 1
        open_logp = np.where(np.arange(vocab) != end_id, cand, NEG_INF)
        top_logp, top_index = _top_k(open_logp.reshape(batch, k * vocab), k)  # [batch, beam]
        parent, word = top_index // vocab, (top_index % vocab).astype(np.int32)
        top_seq = np.take_along_axis(alive_seq, parent[:, :, None], axis=1).copy()
        top_seq[:, :, t] += word
        end_logp = cand[:, :, end_id]  # [batch, beam]
        end_seq = alive_seq.copy()
        end_seq[:, :, t] += end_id
        trunc_logp = top_logp if length == t_max else np.full_like(top_logp, NEG_INF)
        norm = np.power(np.float32(length), alpha)
        score = np.concatenate([fin_score, end_logp / norm, trunc_logp / norm], axis=1)  # [batch, 3 beam]
        fin_score, best = _top_k(score, k)
        fin_seq = np.take_along_axis(np.concatenate([fin_seq, end_seq, top_seq], axis=1), best[:, :, None], 1)
        fin_logp = np.take_along_axis(np.concatenate([fin_logp, end_logp, trunc_logp], axis=1), best, 1)
        fin_len = np.take_along_axis(np.concatenate([fin_len, np.full([batch, 2 * k], length, np.int32)], 1),
                                     best, 1)
        rows = (np.arange(batch)[:, None] * k + parent).reshape(-1)  # each survivor's parent row
        state = [s[rows] for s in state]
        alive_seq, alive_logp, ids, t = top_seq, top_logp, word.reshape(-1), t + 1
        # _is_done: no alive hypothesis can still beat the worst kept finished one (strict).
        bound = alive_logp[:, 0] / np.float32(float(t_max) ** float(length_normalization))
        done = (bound < fin_score[:, -1]) | (bound == NEG_INF)
        if t >= t_max or done.all():
            break
        log_probs, state = step_fn(ids, state)
        log_probs = np.asarray(log_probs, np.float32)
    valid = fin_score[:, :num_results] > NEG_INF
    return {"ids": np.where(valid[:, :, None], fin_seq[:, :num_results], 0),
            "scores": fin_score[:, :num_results],
            "log_probs": np.where(valid, fin_logp[:, :num_results], NEG_INF),
            "lengths": np.where(valid, fin_len[:, :num_results], 0)}


def greedy_search(step_fn, initial_state: list, *, start_id: int = START_ID, end_id: int = END_ID,
                  max_length: int = 20, length_normalization: float = 0.0, no_repeat_ngram: int = 0) -> dict:
    """caption_app/inference/strategies.py's `Greedy`, in numpy: the most probable word at each step
    (ties: the lower id); the step model runs on the unfinished rows only. Returns `beam_search`'s dict (K = 1)."""
    batch = initial_state[0].shape[0]
    seq = np.zeros([batch, max_length], np.int32)
    logp = np.zeros([batch], np.float32)
    done = np.zeros([batch], bool)
    length = np.zeros([batch], np.int32)
    live, ids, state = np.arange(batch), np.full([batch], start_id, np.int32), initial_state
    for t in range(max_length):
        step_logp, state = step_fn(ids, state)
        log_probs = np.full([batch, np.shape(step_logp)[-1]], NEG_INF)
        log_probs[live] = step_logp
        scores = block_repeated_ngrams(log_probs, seq, t, no_repeat_ngram)
        word = np.argmax(scores, axis=-1).astype(np.int32)
        rows = np.arange(batch)
        word_logp = log_probs[rows, word]
        allowed = (scores[rows, word] if no_repeat_ngram else word_logp) > NEG_INF
        word_logp = np.where(allowed, word_logp, NEG_INF)
        word = np.where(done | ~allowed, 0, word).astype(np.int32)
        logp = np.where(done, logp, logp + word_logp)
        length = np.where(done | ~allowed, length, t + 1).astype(np.int32)
        seq[:, t] += word
        done = done | ~allowed | (word == end_id)
        keep = ~done[live]  # the rows of `state` that go on
        live, ids, state = live[keep], word[live[keep]], [s[keep] for s in state]
        if done.all():
            break
    score = logp / np.power(np.maximum(length, 1).astype(np.float32), np.float32(length_normalization))
    valid = score > NEG_INF
    return {"ids": np.where(valid[:, None], seq, 0)[:, None], "scores": score[:, None],
            "log_probs": np.where(valid, logp, NEG_INF)[:, None], "lengths": np.where(valid, length, 0)[:, None]}


# ---------------------------------------------------------------- the captioner


@contextlib.contextmanager
def _stderr_silenced():
    """File descriptor 2 on /dev/null for a moment: LiteRT's C++ logging writes there, not to sys.stderr."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no descriptor 2 to redirect
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class LiteRTCaptioner:
    """A LiteRT package's models, run with `ai_edge_litert.interpreter.Interpreter`.

    Args:
      package_dir: the package (its litert.json is checked on load: `load_description`).
      variant: float32, float16 or int8 (default: the first the package holds).
      num_threads: the interpreter's CPU threads (None: LiteRT's default).
      jpeg_idct: "fast": JPEGs decode as in TensorFlow (`read_image`); "accurate": with Pillow.
    """

    def __init__(self, package_dir: str, variant: str | None = None, num_threads: int | None = None,
                 jpeg_idct: str = "fast"):
        from ai_edge_litert.interpreter import Interpreter

        self.package_dir, self.jpeg_idct = package_dir, jpeg_idct
        self.described = load_description(package_dir)
        self.variant = variant or next(iter(self.described["variants"]))
        if self.variant not in self.described["variants"]:
            raise PackageError(f"{package_dir} has no {self.variant!r} variant; it has "
                               f"{', '.join(self.described['variants'])}")
        self.image_size = self.described["image_size"]
        self.state_names = [s["name"] for s in self.described["state"]]
        self.tokens = ["<pad>", "<start>", "<end>", UNK] + [
            UNK if w.startswith("<unused_") and w.endswith(">") else w
            for w in read_vocabulary(os.path.join(package_dir, self.described["vocab_file"]))]
        self.runners = {}
        for role, entry in self.described["variants"][self.variant].items():
            path = os.path.join(package_dir, entry["file"])
            try:
                with _stderr_silenced():  # LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate" line
                    interpreter = Interpreter(model_path=path, num_threads=num_threads)
                    interpreter.allocate_tensors()
                self.runners[role] = interpreter.get_signature_runner(SIGNATURE)
            except (ValueError, RuntimeError) as err:
                raise PackageError(f"{path} does not load as a LiteRT model with a {SIGNATURE} signature "
                                   f"({str(err).strip().splitlines()[0]}); export the package again") from None
            self._check_signature(role, interpreter)

    def _check_signature(self, role: str, interpreter) -> None:
        """The model's inputs and outputs are the ones litert.json describes (names, state widths, V)."""
        signature = interpreter.get_signature_list()[SIGNATURE]
        expected = {"encoder": (["images"], self.state_names),
                    "decode_step": (["input_ids", *self.state_names], ["log_probs", *self.state_names]),
                    "search": (["images"], ["ids", "lengths", "log_probs", "scores"])}[role]
        if sorted(signature["inputs"]) != sorted(expected[0]) or sorted(signature["outputs"]) != sorted(expected[1]):
            raise PackageError(f"{role} of {self.variant} takes {signature['inputs']} and gives "
                               f"{signature['outputs']}; {PACKAGE_FILE} describes {expected[0]} -> {expected[1]}")
        if role == "decode_step":
            outputs = self.runners[role].get_output_details()
            widths = {s["name"]: s["width"] for s in self.described["state"]}
            for name, detail in outputs.items():
                want = self.described["vocab_size"] if name == "log_probs" else widths[name]
                if detail["shape_signature"][-1] != want:
                    raise PackageError(f"decode_step of {self.variant} gives {name} {detail['shape_signature']} "
                                       f"wide, {PACKAGE_FILE} says {want} ({'vocab_size' if name == 'log_probs' else 'state width'})")

    def settings(self, strategy: str | None = None, beam_size: int | None = None) -> dict:
        """The package's decode settings, with `strategy` / `beam_size` when given."""
        decode = dict(self.described["decode"])
        if strategy is not None:
            decode["strategy"] = strategy
            decode["num_captions"] = 1 if strategy == "greedy" else decode["beam_size"]
        if beam_size is not None:
            decode["beam_size"] = decode["num_captions"] = beam_size
        if decode["strategy"] not in STRATEGIES:
            raise PackageError(f"this runner decodes with {' or '.join(STRATEGIES)}, not {decode['strategy']!r}")
        if decode["beam_size"] < 1 or decode["max_length"] < 1:
            raise PackageError(f"beam size and max length must be positive, got {decode}")
        return decode

    def pixels(self, path: str) -> np.ndarray:
        """An image file -> [S, S, 3] float32 0-255 (ImageError if it cannot be read)."""
        return resize(read_image(path, self.described["max_image_pixels"], self.jpeg_idct), self.image_size,
                      self.described["preprocess"])

    def encode(self, pixels: np.ndarray) -> list:
        """[S, S, 3] -> the state tensors [1, width] in state order."""
        out = self.runners["encoder"](images=pixels[None].astype(np.float32))
        return [out[name] for name in self.state_names]

    def decode_step(self, ids: np.ndarray, state: list):
        """ids [N] int32, state (list of [N, width]) -> (log_probs [N, V], new state)."""
        out = self.runners["decode_step"](input_ids=np.asarray(ids, np.int32),
                                          **{n: np.asarray(s, np.float32) for n, s in zip(self.state_names, state)})
        return out["log_probs"], [out[name] for name in self.state_names]

    def search(self, pixels: np.ndarray, settings: dict | None = None, use_search_model: bool | None = None) -> dict:
        """[S, S, 3] -> {"ids" [1, K, T], "scores", "log_probs", "lengths" [1, K]}.

        use_search_model: True: the package's search model (its export settings only); False: the
        numpy search over decode_step; None: the search model when there is one and `settings` are
        the export's.
        """
        exported = self.described["decode"]
        settings = settings or self.settings()
        if use_search_model is None:
            use_search_model = "search" in self.runners and settings == self.settings()
        if use_search_model:
            if "search" not in self.runners:
                raise PackageError(f"the {self.variant} variant has no search model "
                                   f"({self.described.get('search_note', 'not exported')}); use --search steps")
            if settings != self.settings():
                raise PackageError(f"the search model decodes with the export's settings ({exported}); "
                                   "use --search steps for others")
            return self.runners["search"](images=pixels[None].astype(np.float32))
        initial = self.encode(pixels)
        common = dict(max_length=settings["max_length"], length_normalization=settings["length_normalization"],
                      no_repeat_ngram=settings["no_repeat_ngram"])
        if settings["strategy"] == "greedy":
            return greedy_search(self.decode_step, initial, **common)
        return beam_search(self.decode_step, initial, beam_size=settings["beam_size"],
                           num_results=settings["num_captions"], words_per_beam=settings["words_per_beam"], **common)

    def caption(self, path: str, settings: dict | None = None, use_search_model: bool | None = None) -> str:
        """An image file -> its best caption."""
        result = self.search(self.pixels(path), settings, use_search_model)
        return ids_to_text(result["ids"][0, 0], self.tokens)


# ---------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python caption.py", description="Caption image files with this LiteRT "
                                "package: prints `path<TAB>caption` per image.")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--variant", choices=VARIANTS, default=None, help="the weights (default: the first exported)")
    p.add_argument("--search", choices=("auto", "model", "steps"), default="auto",
                   help="model: the package's one-model search; steps: this file's numpy search over "
                        "decode_step; auto (default): model when it exists and the settings are the export's")
    p.add_argument("--strategy", choices=STRATEGIES, default=None, help="default: the export's")
    p.add_argument("--beam-size", type=int, default=None, help="default: the export's")
    p.add_argument("--threads", type=int, default=None, help="interpreter threads (default: LiteRT's)")
    p.add_argument("--jpeg-idct", choices=("fast", "accurate"), default="fast",
                   help="fast (default): JPEGs decode to TensorFlow's pixels bit for bit (libjpeg's fast integer "
                        "IDCT, as serving and training decode them; numpy, slow on large photos); accurate: "
                        "Pillow's decoder (pixels about one level off)")
    p.add_argument("--package", default=os.path.dirname(os.path.abspath(__file__)),
                   help="the package dir (default: this file's)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        captioner = LiteRTCaptioner(args.package, args.variant, args.threads, args.jpeg_idct)
        settings = captioner.settings(args.strategy, args.beam_size)
    except PackageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    use_model = {"auto": None, "model": True, "steps": False}[args.search]
    failed = 0
    for path in args.images:
        try:
            print(f"{path}\t{captioner.caption(path, settings, use_model)}", flush=True)
        except ImageError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            failed += 1
        except PackageError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
