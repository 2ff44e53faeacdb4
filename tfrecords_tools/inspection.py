"""`python -m tfrecords_tools inspect OUT`: what a converted data dir holds.

Reads the manifest, the vocabulary and every record, and reports per split
the images and captions, a caption-length histogram (words, as the pipeline's
tokenizer splits them) and the vocabulary coverage (the fraction of caption
words that are in the vocabulary, i.e. not `<unk>`: for train it shows what
`min_word_count` dropped, for val/test how well the train vocabulary carries
over). It also writes a self-contained HTML page that a person can open from
disk (`OUT/inspect.html` by default, written atomically): the counts, the
caption-length histograms (inline SVG), and random examples as thumbnails
(longest side 224 px, base64 JPEG) with their captions and a filter box.
"""

from __future__ import annotations

import collections
import os
import random

import tensorflow as tf

from caption_app import io_utils
from caption_app.data import manifest as manifest_lib
from caption_app.data import records
from caption_app.data import vocabulary as vocab_lib
from tfrecords_tools.source_api import ConversionError

HTML_FILE = "inspect.html"
BIN_WIDTH, LAST_BIN = 5, 40  # histogram bins of 5 words; one bin for LAST_BIN words and more


def length_bin(words: int) -> str:
    """The histogram bin of a caption of `words` words: "0-4", "5-9", ..., "40+"."""
    if words >= LAST_BIN:
        return f"{LAST_BIN}+"
    lo = words // BIN_WIDTH * BIN_WIDTH
    return f"{lo}-{lo + BIN_WIDTH - 1}"


def inspect_data(data_dir: str | os.PathLike, *, html_path: str | os.PathLike | None = None,
                 num_examples: int = 20, seed: int = 0, verbose: bool = True) -> dict:
    """Reports on a data dir and writes the examples page.

    Args:
      data_dir: a converted data dir.
      html_path: the page to write (default DATA_DIR/inspect.html).
      num_examples: random records shown on the page (drawn over all splits).
      seed: of the random draw.
      verbose: print the report.

    Raises:
      ConversionError: a manifest, vocabulary or shard that does not read (truncated,
        damaged), in one line naming the file and saying re-convert.
      FileNotFoundError: no manifest, or a shard it lists is missing.

    Returns:
      {"splits": {split: {"num_images", "num_captions", "length_histogram"
      {bin: captions}, "max_words", "mean_words", "tokens", "in_vocab_tokens",
      "vocab_coverage"}}, "vocab_size", "html"}.
    """
    data_dir = os.fspath(data_dir)
    try:
        manifest = manifest_lib.load(data_dir)  # counts each shard's records: a truncated one is named
        vocab = vocab_lib.Vocabulary.load(manifest.vocab_path)
    except ValueError as err:  # ManifestError, another format_version, a vocabulary that does not load
        raise ConversionError(f"cannot inspect {data_dir}: {err}") from None
    known = set(vocab.words)
    rng = random.Random(seed)
    sample: list[tuple[str, str, bytes, list[str]]] = []  # reservoir over all records
    seen = 0
    report: dict = {"data_dir": data_dir, "vocab_size": vocab.size, "splits": {}}
    for split in manifest.splits:
        files = manifest.files(split)
        images, captions = 0, []
        for raw in _records(files):
            images += 1
            texts = [c.decode("utf-8") for c in raw["captions"]]
            captions.extend(texts)
            seen += 1
            entry = (split, raw["image_id"].decode("utf-8"), raw["encoded"], texts)
            if len(sample) < num_examples:
                sample.append(entry)
            else:
                j = rng.randrange(seen)
                if j < num_examples:
                    sample[j] = entry
        histogram: collections.Counter = collections.Counter()
        tokens = in_vocab = max_words = 0
        for words in vocab_lib.split_words(captions, manifest.tokenizer):
            histogram[length_bin(len(words))] += 1
            tokens += len(words)
            in_vocab += sum(w in known for w in words)
            max_words = max(max_words, len(words))
        order = [length_bin(w) for w in range(0, LAST_BIN + 1, BIN_WIDTH)]
        report["splits"][split] = {
            "num_images": images,
            "num_captions": len(captions),
            "length_histogram": {b: histogram[b] for b in order if histogram[b]},
            "max_words": max_words,
            "mean_words": tokens / len(captions) if captions else 0.0,
            "tokens": tokens,
            "in_vocab_tokens": in_vocab,
            "vocab_coverage": in_vocab / tokens if tokens else None,
        }
    path = os.fspath(html_path) if html_path else os.path.join(data_dir, HTML_FILE)
    _write_html(path, manifest, report, sample)
    report["html"] = path
    if verbose:
        print(format_report(report))
    return report


def _records(files: list[str]):
    """The parsed records of `files`, file by file; a record that does not read (a CRC mismatch,
    a cut) is a ConversionError naming its shard."""
    for path in files:
        try:
            yield from tf.data.TFRecordDataset([path]).map(records.parse_example).as_numpy_iterator()
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as err:
            reason = (err.message or type(err).__name__).strip().splitlines()[0]
            raise ConversionError(f"cannot inspect shard {path}: it is damaged ({reason}); re-convert the "
                                  "dataset (python -m tfrecords_tools ... --out DIR)") from None


def format_report(report: dict) -> str:
    lines = [f"{report['data_dir']}: vocabulary {report['vocab_size']} ids"]
    for split, info in report["splits"].items():
        coverage = info["vocab_coverage"]  # None: no words in the split
        lines.append(f"{split}: {info['num_images']} images, {info['num_captions']} captions, "
                     f"{info['mean_words']:.1f} words on average (max {info['max_words']}), vocabulary "
                     f"coverage {_percent(coverage)} of {info['tokens']} words")
        peak = max(info["length_histogram"].values(), default=1)
        for bin_name, n in info["length_histogram"].items():
            lines.append(f"  {bin_name:>6s} words {n:8d} {'#' * max(1, round(40 * n / peak))}")
    lines.append(f"examples: {report.get('html', '')}")
    return "\n".join(lines)


def _percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.2f}%"


def _write_html(path: str, manifest: manifest_lib.Manifest, report: dict, sample) -> None:
    """The page: the counts, a caption-length histogram per split (inline SVG), then the random
    examples as thumbnails with their captions and a filter box (caption_app/html_report.py)."""
    from caption_app import html_report
    from caption_app.data.image_bytes import DEFAULT_MAX_IMAGE_PIXELS

    e = html_report.escape
    rows = []
    for split, image_id, encoded, captions in sample:
        image = html_report.image_tag(html_report.thumbnail_uri(encoded, max_pixels=DEFAULT_MAX_IMAGE_PIXELS),
                                      image_id)
        items = "".join(f"<li>{e(c)}</li>" for c in captions)
        rows.append(f'<div class="ex row">{image}<p><b>{e(split)}</b> {e(image_id)}</p><ol>{items}</ol></div>')
    counts = html_report.table(["split", "images", "captions", "vocabulary coverage"],
                               [(s, i["num_images"], i["num_captions"], _percent(i["vocab_coverage"]))
                                for s, i in report["splits"].items()])
    histograms = "".join(
        html_report.svg_histogram(list(i["length_histogram"].items()),
                                  title=f"{s}: captions by length in words")
        for s, i in report["splits"].items() if i["length_histogram"])
    title = f"{manifest.raw.get('source', '')}: {manifest.data_dir}"
    body = (f"<h1>{e(title)}</h1>{counts}<h2>Caption lengths</h2><div>{histograms}</div>"
            f"<h2>{len(sample)} random examples</h2>{html_report.filter_box()}<div>{''.join(rows)}</div>")
    io_utils.write_text_atomic(path, html_report.page(title, body))
