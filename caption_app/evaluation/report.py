"""RUN/eval/<split>-<checkpoint>.html: `evaluate`'s report, a page a person opens from disk.

The metric table, then one row per image, worst first (lowest per-image
CIDEr): a thumbnail, the generated caption, the references and the image's
CIDEr, with a filter box. Self-contained (caption_app/html_report.py): the
thumbnails are base64 JPEGs of at most 224 px, made from the records' own
image bytes.

The page's size is bounded by `eval.report_images` (default 500): only that
many of the worst rows carry a thumbnail (about 13.5 KB each for a Flickr8k
photo, so ~7 MB), the others are text only (~470 bytes each) and the page
says so. A 5,000-image COCO split thus gives a page of ~10 MB rather than
~70 MB, and 500 thumbnails to make (15-50 ms each on a 2-core CPU) rather
than 5,000 (docs/training.md, "The evaluation report").

For a model with attention, each thumbnailed row also shows its generated
caption word by word, each word over the thumbnail under its attention map
(`html_report.attention_strip`): a tiny PNG per word (~100-150 bytes for a
4 x 4 map), so the strips are bounded by the same `eval.report_images` rows.
"""

from __future__ import annotations

import tensorflow as tf

from caption_app import attention_images
from caption_app import html_report
from caption_app import io_utils
from caption_app.data import records


def collect_thumbnails(files: list[str], image_ids: set[str], *, max_pixels: int) -> dict[str, str | None]:
    """Reads the records of `files` once and thumbnails the images of `image_ids` (data URIs; None
    for an image that does not decode). Stops as soon as all were found."""
    thumbnails: dict[str, str | None] = {}
    if not image_ids:
        return thumbnails
    for record in tf.data.TFRecordDataset(files).map(records.parse_example).as_numpy_iterator():
        key = record["image_id"].decode("utf-8")
        if key in image_ids and key not in thumbnails:
            thumbnails[key] = html_report.thumbnail_uri(record["encoded"], max_pixels=max_pixels)
            if len(thumbnails) == len(image_ids):
                break
    return thumbnails


def worst_first(captions: dict[str, dict]) -> list[str]:
    """The image ids of `captions` ({id: {"cider": ...}}) by ascending CIDEr (ties by id)."""
    return sorted(captions, key=lambda k: (captions[k]["cider"], k))


def _format(value) -> str:
    return "not computed" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def build_page(details: dict, thumbnails: dict[str, str | None], *, report_images: int,
               attention: dict | None = None) -> str:
    """The report of one evaluation.

    Args:
      details: what evaluate writes to RUN/eval/<split>-<checkpoint>.json
        ("checkpoint", "split", "metrics", "notes", decode settings, and
        "captions" {id: {"generated", "references", "cider"}}).
      thumbnails: image id -> data URI (or None) for the rows that show one.
      report_images: how many of the worst rows were meant to show a thumbnail.
      attention: image id -> the generated caption's maps, float [words, h, w] (one per word
        of "generated"), for rows that show a thumbnail; None: no strips.
    """
    e = html_report.escape
    captions = details["captions"]
    order = worst_first(captions)
    metrics = html_report.table(["metric", "value"], [(k, _format(v)) for k, v in details["metrics"].items()],
                                cls="metrics")
    notes = "".join(f'<p class="note">note: {e(n)}</p>' for n in details.get("notes", []))
    settings = (f"checkpoint {e(details['checkpoint'])}, split {e(details['split'])}, beam size "
                f"{e(details['beam_size'])}, max length {e(details['max_length'])}, length normalization "
                f"{e(details['length_normalization'])}")
    shown = min(report_images, len(order))
    cap = ("" if shown == len(order) else
           f'<p class="note">Thumbnails for the {shown} lowest-CIDEr images of {len(order)}; the other rows are '
           "text only (raise eval.report_images, or evaluate --report-images N).</p>")
    rows = []
    for rank, key in enumerate(order, 1):
        entry = captions[key]
        image = html_report.image_tag(thumbnails.get(key), key) if rank <= shown else ""
        refs = "".join(f"<li>{e(r)}</li>" for r in entry["references"])
        strip = ""
        if image and thumbnails.get(key) and attention and key in attention:
            strip = _strip(entry["generated"].split(), attention[key])
        rows.append(f'<tr class="row"><td>{rank}</td><td>{image}</td><td>{entry["cider"]:.3f}</td>'
                    f'<td><div class="gen">{e(entry["generated"]) or "(empty caption)"}</div>{strip}'
                    f'<div class="note">{e(key)}</div></td><td><ol>{refs}</ol></td></tr>')
    title = f"{details['split']} - {details['checkpoint']}"
    body = (f"<h1>Evaluation: {e(title)}</h1><p>{settings}</p>{metrics}{notes}"
            f"<h2>{len(order)} images, worst CIDEr first</h2>{cap}{html_report.filter_box()}"
            '<table class="rows"><tr><th>#</th><th>image</th><th>CIDEr</th><th>generated</th>'
            f"<th>references</th></tr>{''.join(rows)}</table>")
    return html_report.page(title, body)


def _strip(words: list[str], maps) -> str:
    """A row's attention strip: its words, each over the thumbnail under its map [h, w]."""
    if len(words) != len(maps):  # never expected: the maps are the caption's own words'
        return f'<div class="note">no attention strip: {len(words)} words but {len(maps)} maps</div>'
    if not words:
        return ""
    return html_report.attention_strip(words, [attention_images.map_png_uri(m) for m in maps],
                                       tuple(maps.shape[1:]))


def write_report(path: str, details: dict, files: list[str], *, report_images: int, max_pixels: int,
                 attention: dict | None = None) -> None:
    """Thumbnails the `report_images` worst images from the records `files` and writes the page to
    `path` atomically (with `attention`, {image id: maps [words, h, w]}, their strips too)."""
    wanted = set(worst_first(details["captions"])[:max(report_images, 0)])
    thumbnails = collect_thumbnails(files, wanted, max_pixels=max_pixels)
    io_utils.write_text_atomic(path, build_page(details, thumbnails, report_images=max(report_images, 0),
                                                attention=attention))
