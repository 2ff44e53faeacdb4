"""The building blocks of the self-contained HTML pages: `evaluate`'s report and `tfrecords_tools inspect`.

A page opens from disk with no server and no network: images are embedded as
base64 JPEG thumbnails, the CSS and the JavaScript are inline, and every text
that came from data (captions, references, image ids, paths) goes through
`escape`. No TensorFlow here (tfrecords_tools imports it lazily).

The page's script (FILTER_SCRIPT) does three things on load:
  - the filter box hides the rows (elements with class `row`) whose text does
    not contain every word typed (case-insensitive); `#filter=WORDS` in the
    URL presets it (a link or a headless browser can open a filtered page);
  - it counts the rows shown into `data-visible-rows` of <body>;
  - once the images have loaded it counts those that decoded
    (`complete && naturalWidth > 0`) into `data-images-loaded` of <body>, and
    all images into `data-images-total`.
The counts are there for tests (headless Chromium dumps the DOM after the
script ran), and read the same for a person in the inspector. It also lays
each row's thumbnail under its attention strip (`attention_strip`): the
thumbnail is embedded once, and every word's tile shows it through a CSS
variable, under that word's map (a tiny PNG the browser stretches smoothly).
"""

from __future__ import annotations

import base64
import html
import io
from typing import Iterable, Sequence

THUMBNAIL_SIDE = 224  # pixels: the longest side of an embedded thumbnail
THUMBNAIL_QUALITY = 80  # JPEG quality of the thumbnails


def escape(text) -> str:
    """Text (or anything `str()` can print) safe inside an element or a quoted attribute."""
    return html.escape(str(text), quote=True)


def thumbnail_uri(encoded: bytes, *, max_pixels: int, side: int = THUMBNAIL_SIDE,
                  quality: int = THUMBNAIL_QUALITY) -> str | None:
    """Encoded image bytes -> a `data:image/jpeg;base64,...` URI of the image scaled to `side` pixels
    on its longest side (never enlarged), or None when the bytes do not decode or their header
    declares more than `max_pixels` pixels.

    The cost is bounded by the thumbnail's size rather than the image's: PIL reads
    the header first, and a JPEG is decoded at 1/2, 1/4 or 1/8 scale when that is
    still at least `side` pixels (`Image.draft`); a GIF gives its first frame.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(encoded)) as image:
            width, height = image.size
            if width * height > max_pixels:
                return None
            image.draft("RGB", (side, side))
            thumb = image.convert("RGB")
        thumb.thumbnail((side, side), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        thumb.save(buffer, "JPEG", quality=quality)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def image_tag(uri: str | None, alt: str) -> str:
    """An <img> of a thumbnail URI (from `thumbnail_uri`), or a placeholder when there is none."""
    if uri is None:
        return f'<span class="noimg">{escape(alt)}: no image</span>'
    return f'<img src="{uri}" alt="{escape(alt)}">'


def attention_strip(words: Sequence[str], map_uris: Sequence[str], grid: tuple[int, int]) -> str:
    """One tile per word: the row's thumbnail (set by the page's script) under the word's map
    (`attention_images.map_png_uri`), a faint h x w cell grid (clearer on hover), the word below."""
    height, width = grid
    tiles = "".join(f'<span class="w" title="{escape(word)}"><span class="t"><img src="{uri}" '
                    f'alt="where &quot;{escape(word)}&quot; looked"></span>{escape(word)}</span>'
                    for word, uri in zip(words, map_uris))
    return f'<div class="att" style="--gh:{int(height)};--gw:{int(width)}">{tiles}</div>'


def table(header: Sequence[str], rows: Iterable[Sequence], *, cls: str = "") -> str:
    """A <table> of escaped cells (header and rows are plain text)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{escape(cls)}"><tr>{head}</tr>{body}</table>'


def filter_box(placeholder: str = "filter rows by words") -> str:
    """The filter box FILTER_SCRIPT binds to; rows are the page's elements with class `row`."""
    return (f'<p><input id="filter" type="search" size="40" placeholder="{escape(placeholder)}"> '
            '<span id="shown"></span></p>')


def svg_histogram(bins: Sequence[tuple[str, int]], *, title: str, width: int = 480, height: int = 160) -> str:
    """An inline SVG bar chart of (label, count) bins, each bar titled with its count."""
    peak = max((n for _, n in bins), default=0) or 1
    left, bottom, top = 40, 20, 14
    slot = (width - left) / max(len(bins), 1)
    plot = height - bottom - top
    parts = [f'<svg class="hist" width="{width}" height="{height}" role="img" aria-label="{escape(title)}" '
             f'xmlns="http://www.w3.org/2000/svg"><text x="{left}" y="11" font-size="11">{escape(title)}</text>',
             f'<text x="{left - 4}" y="{top + 9}" font-size="10" text-anchor="end">{peak}</text>',
             f'<line x1="{left}" y1="{top + plot}" x2="{width}" y2="{top + plot}" stroke="#888"/>']
    for i, (label, count) in enumerate(bins):
        bar = plot * count / peak
        x = left + i * slot
        parts.append(f'<rect x="{x + 2:.1f}" y="{top + plot - bar:.1f}" width="{max(slot - 4, 1):.1f}" '
                     f'height="{bar:.1f}" fill="#4a7ab5"><title>{escape(label)}: {count}</title></rect>')
        parts.append(f'<text x="{x + slot / 2:.1f}" y="{height - 6}" font-size="10" '
                     f'text-anchor="middle">{escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


FILTER_SCRIPT = """
(function () {
  var box = document.getElementById('filter');
  var rows = Array.prototype.slice.call(document.querySelectorAll('.row'));
  var shown = document.getElementById('shown');
  function apply() {
    var words = (box ? box.value : '').toLowerCase().split(/\\s+/).filter(Boolean);
    var visible = 0;
    rows.forEach(function (row) {
      var text = row.textContent.toLowerCase();
      var match = words.every(function (w) { return text.indexOf(w) >= 0; });
      row.style.display = match ? '' : 'none';
      if (match) visible++;
    });
    document.body.setAttribute('data-visible-rows', String(visible));
    if (shown) shown.textContent = visible + ' of ' + rows.length + ' shown';
  }
  var preset = /(?:^#|&)filter=([^&]*)/.exec(location.hash);
  if (box && preset) box.value = decodeURIComponent(preset[1].replace(/\\+/g, ' '));
  if (box) box.addEventListener('input', apply);
  apply();
  function countImages() {
    var images = Array.prototype.slice.call(document.images);
    var loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
    document.body.setAttribute('data-images-total', String(images.length));
    document.body.setAttribute('data-images-loaded', String(loaded));
  }
  if (document.readyState === 'complete') countImages(); else window.addEventListener('load', countImages);
  Array.prototype.forEach.call(document.querySelectorAll('.att'), function (strip) {
    var row = strip.closest('tr');
    var thumb = row && row.querySelector('img:not(.att img)');
    if (thumb) strip.style.setProperty('--thumb', 'url("' + thumb.src + '")');
  });
})();
"""

_STYLE = """
body{font-family:sans-serif;margin:16px;color:#222}
table{border-collapse:collapse} td,th{padding:3px 8px;vertical-align:top;text-align:left}
table.rows td{border-top:1px solid #ddd} table.metrics td:nth-child(2){text-align:right}
img{max-width:224px;max-height:224px;min-width:96px;min-height:96px;object-fit:contain;image-rendering:pixelated}
.noimg{color:#999;font-size:small}
.note{color:#555;font-size:small} ol{margin:0;padding-left:1.4em} .gen{font-weight:bold}
.ex{display:inline-block;vertical-align:top;width:250px;margin:8px}
.att{margin-top:4px} .att .w{display:inline-block;margin:0 3px 3px 0;font-size:small;text-align:center}
.att .t{display:block;position:relative;width:96px;height:96px;background:var(--thumb) center/100% 100% no-repeat}
.att img{display:block;width:96px;height:96px;min-width:0;min-height:0;image-rendering:auto}
.att .t::after{content:"";position:absolute;inset:0;opacity:.25;background-image:
linear-gradient(to right,#fff 1px,transparent 1px),linear-gradient(to bottom,#fff 1px,transparent 1px);
background-size:calc(100% / var(--gw)) calc(100% / var(--gh))} .att .t:hover::after{opacity:.8}
"""


def page(title: str, body: str) -> str:
    """A whole HTML document: `body` (already HTML) with the inline style and FILTER_SCRIPT."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body>\n{body}\n<script>{FILTER_SCRIPT}</script>\n</body></html>\n")
