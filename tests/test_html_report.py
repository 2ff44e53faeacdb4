"""What a practitioner looks at: TensorBoard's tags and the HTML pages of `evaluate` and `inspect`.

The pages are checked in a real browser: headless Chromium (`make chromium`
installs the Debian package) loads them from disk, runs their inline script
and dumps the DOM; the page's script counts the decoded images and the rows
its filter shows into attributes of <body>. Those tests skip when no Chromium
binary is found. Everything reuses the session's tiny trained run (2 epochs);
the evaluation runs once, on a copy.
"""

from __future__ import annotations

import base64
import collections
import glob
import io
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from caption_app import html_report
from caption_app.evaluation import report as eval_report
from tests.conftest import encode_image

MAX_PIXELS = 40_000_000
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (make chromium installs it)")


def event_tags(log_dir: str) -> dict[str, list[int]]:
    """tag -> the steps it was written at, over every event file under `log_dir`."""
    import tensorflow as tf

    tags: dict[str, list[int]] = collections.defaultdict(list)
    for path in glob.glob(os.path.join(log_dir, "**", "events.out.tfevents.*"), recursive=True):
        sub = os.path.relpath(os.path.dirname(path), log_dir)
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags[value.tag if sub == "." else f"{sub}/{value.tag}"].append(event.step)
    return {k: sorted(v) for k, v in tags.items()}


def render(page: str, tmp_path, fragment: str = "", screenshot: str | None = None) -> str:
    """The DOM of `page` (a file) after Chromium ran its script; with `screenshot`, a PNG there instead."""
    url = "file://" + os.path.abspath(page) + fragment
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
            f"--user-data-dir={tmp_path / 'chromium-profile'}"]
    args += [f"--screenshot={screenshot}", "--window-size=1200,900", url] if screenshot else ["--dump-dom", url]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def body_counts(dom: str) -> dict[str, int]:
    body = re.search(r"<body([^>]*)>", dom).group(1)
    return {k: int(v) for k, v in re.findall(r'data-([a-z-]+)="(\d+)"', body)}


def thumbnail_size(uri: str) -> tuple[int, int]:
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).size


def assert_screenshot(path) -> None:
    with open(path, "rb") as f:
        data = f.read()
    assert data.startswith(b"\x89PNG") and len(data) > 10_000
    image = Image.open(io.BytesIO(data)).convert("L")
    assert image.size == (1200, 900)
    low, high = image.getextrema()
    assert high - low > 100  # text and images, not a blank page


# ----------------------------------------------------------------------------- building blocks

def test_escape_and_thumbnails():
    assert html_report.escape('<script>"x" & \'y\'</script>') == \
        "&lt;script&gt;&quot;x&quot; &amp; &#x27;y&#x27;&lt;/script&gt;"
    wide = np.zeros((300, 600, 3), np.uint8)
    wide[:, :300] = 255
    for fmt in ("PNG", "JPEG", "GIF"):
        uri = html_report.thumbnail_uri(encode_image(wide, fmt), max_pixels=MAX_PIXELS)
        assert uri.startswith("data:image/jpeg;base64,")
        assert thumbnail_size(uri) == (html_report.THUMBNAIL_SIDE, html_report.THUMBNAIL_SIDE // 2), fmt
    small = html_report.thumbnail_uri(encode_image(wide[:20, :40], "PNG"), max_pixels=MAX_PIXELS)
    assert thumbnail_size(small) == (40, 20)  # never enlarged
    assert html_report.thumbnail_uri(encode_image(wide, "PNG"), max_pixels=600 * 300 - 1) is None
    assert html_report.thumbnail_uri(b"\xff\xd8\xff\xe0 not a JPEG", max_pixels=MAX_PIXELS) is None
    assert "no image" in html_report.image_tag(None, "<x>") and "&lt;x&gt;" in html_report.image_tag(None, "<x>")


def test_svg_histogram():
    svg = html_report.svg_histogram([("0-4", 10), ("5-9", 5), ("<b>", 0)], title="t & u")
    assert svg.count("<rect ") == 3 and "t &amp; u" in svg and "&lt;b&gt;" in svg
    heights = [float(h) for h in re.findall(r'<rect [^>]*height="([\d.]+)"', svg)]
    assert heights[0] == pytest.approx(2 * heights[1]) and heights[2] == 0


def _details(n: int, hostile: str = "") -> dict:
    captions = {f"img{i:02d}": {"generated": f"a caption {i}" + (hostile if i == 1 else ""), "score": -1.0,
                                "cider": (i * 7) % n / 10, "references": [f"ref {i}", f"other {i}" + hostile]}
                for i in range(n)}
    return {"checkpoint": "RUN/checkpoints/ckpt-3", "split": "test", "beam_size": 3, "max_length": 20,
            "length_normalization": 0.0, "notes": ["a <note>"],
            "metrics": {"perplexity": 9.5, "BLEU-4": 0.25, "METEOR": None, "CIDEr": 0.5, "num_images": n},
            "captions": captions}


HOSTILE = "<script>document.body.setAttribute('data-injected','1')</script><img src=x onerror=alert(1)>"


def test_eval_page_worst_first_escaped_and_capped(tmp_path):
    details = _details(10, HOSTILE)
    pixels = np.full((40, 60, 3), 90, np.uint8)
    order = eval_report.worst_first(details["captions"])
    assert [details["captions"][k]["cider"] for k in order] == sorted(c["cider"] for c in details["captions"].values())
    thumbs = {k: html_report.thumbnail_uri(encode_image(pixels, "PNG"), max_pixels=MAX_PIXELS) for k in order[:4]}
    page = eval_report.build_page(details, thumbs, report_images=4)
    assert "<script>document" not in page and "onerror=alert" not in page.replace("onerror=alert(1)&gt;", "")
    assert "&lt;script&gt;document.body" in page and "a &lt;note&gt;" in page
    assert page.count('class="row"') == 10 and page.count("data:image/jpeg;base64,") == 4
    assert "Thumbnails for the 4 lowest-CIDEr images of 10" in page and "not computed" in page
    ranks = re.findall(r'<tr class="row"><td>(\d+)</td>.*?<div class="note">(img\d+)</div>', page)
    assert [k for _, k in ranks] == order
    assert "Thumbnails for" not in eval_report.build_page(details, thumbs, report_images=10)


@needs_chromium
def test_hostile_text_stays_text_in_chromium(tmp_path):
    path = tmp_path / "hostile.html"
    path.write_text(eval_report.build_page(_details(3, HOSTILE), {}, report_images=3))
    dom = render(str(path), tmp_path)
    assert "data-injected" not in re.search(r"<body[^>]*>", dom).group(0)
    assert body_counts(dom)["visible-rows"] == 3
    assert "&lt;script&gt;document.body" in dom  # shown as text


# ----------------------------------------------------------------------------- TensorBoard (training)

def test_training_tensorboard_tags(trained_run):
    # The training's folders (other tests may have evaluated the shared run: logs/eval_<split>).
    tags = {t: s for t, s in event_tags(os.path.join(trained_run.run_dir, "logs")).items()
            if not t.startswith("eval_")}
    epochs = [1, 2]  # epochs finished: the checkpoints ckpt-1, ckpt-2
    for tag in ("train/loss", "train/perplexity", "train/learning_rate", "validation/loss",
                "validation/perplexity", "samples/samples/captions"):
        assert tags.get(tag) == epochs, (tag, tags)
    assert tags["samples/samples/images"] == [1]
    # One validation perplexity: no Keras `epoch_*` duplicate one step earlier.
    assert not [t for t in tags if "epoch_" in t]
    assert sorted(t for t in tags if "perplexity" in t) == ["train/perplexity", "validation/perplexity"]


def test_validation_loss_is_the_log_of_the_perplexity_and_samples_are_text(trained_run):
    import tensorflow as tf

    values = collections.defaultdict(dict)
    texts = []
    for path in glob.glob(os.path.join(trained_run.run_dir, "logs", "**", "events.out.tfevents.*"), recursive=True):
        sub = os.path.basename(os.path.dirname(path))
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                number = tf.make_ndarray(value.tensor)
                if value.tag == "samples/captions":
                    texts.append(number.item().decode())
                elif value.tag != "samples/images":
                    values[f"{sub}/{value.tag}"][event.step] = float(number)
    assert values["validation/perplexity"][2] == pytest.approx(trained_run.history["val_perplexity"], rel=1e-5)
    for step in (1, 2):
        assert np.exp(values["validation/loss"][step]) == pytest.approx(values["validation/perplexity"][step])
        assert np.exp(values["train/loss"][step]) == pytest.approx(values["train/perplexity"][step])
    assert values["train/learning_rate"][1] == pytest.approx(trained_run.config.train.learning_rate)
    with open(os.path.join(trained_run.data_dir, "raw", "Flickr_8k.devImages.txt")) as f:
        first_val = f.read().split()[:4]
    for text in texts:  # a markdown table: a header, a rule, one row per fixed val image
        lines = text.splitlines()
        assert len(lines) == 2 + 4 and lines[0].startswith("| image |")
        assert [line.split("|")[1].strip() for line in lines[2:]] == first_val


# ----------------------------------------------------------------------------- evaluate: TensorBoard and report

@pytest.fixture(scope="module")
def evaluated_copy(trained_run, tmp_path_factory):
    """evaluate(copy of the shared run, "val"), once: (run dir, metrics)."""
    from caption_app.evaluation.evaluate import evaluate

    run = str(tmp_path_factory.mktemp("report") / "run")
    shutil.copytree(trained_run.run_dir, run, ignore=shutil.ignore_patterns("metrics.json", "eval", "eval_*"))
    return run, evaluate(run, "val", verbose=False)


def test_evaluate_writes_metrics_to_tensorboard_at_the_checkpoints_epoch(evaluated_copy):
    run, metrics = evaluated_copy
    tags = event_tags(os.path.join(run, "logs", "eval_val"))
    expected = {f"metrics/{k}" for k, v in metrics.items() if k != "num_images" and v is not None}
    assert set(tags) == expected and "metrics/CIDEr" in tags and "metrics/BLEU-4" in tags
    assert all(steps == [2] for steps in tags.values())  # ckpt-2: after epoch 2, as validation/perplexity


def test_evaluate_report_beside_the_json(evaluated_copy):
    import json

    run, metrics = evaluated_copy
    with open(os.path.join(run, "eval", "val-ckpt-2.json")) as f:
        details = json.load(f)
    ciders = [c["cider"] for c in details["captions"].values()]
    assert len(ciders) == metrics["num_images"] and np.mean(ciders) == pytest.approx(metrics["CIDEr"])
    page = open(os.path.join(run, "eval", "val-ckpt-2.html"), encoding="utf-8").read()
    assert page.count('class="row"') == metrics["num_images"] == page.count("data:image/jpeg;base64,")
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page
    assert not glob.glob(os.path.join(run, "eval", "*.tmp"))


@needs_chromium
def test_evaluate_report_in_chromium(evaluated_copy, tmp_path):
    run, metrics = evaluated_copy
    page = os.path.join(run, "eval", "val-ckpt-2.html")
    dom = render(page, tmp_path)
    counts = body_counts(dom)
    n = metrics["num_images"]
    assert counts == {"visible-rows": n, "images-total": n, "images-loaded": n}
    assert len(re.findall(r'<tr class="row"', dom)) == n
    # The filter, preset from the URL: one image id leaves one row (its rank and CIDEr beside it).
    image_id = re.search(r'<div class="note">([^<]+)</div>', dom).group(1)
    assert body_counts(render(page, tmp_path, f"#filter={image_id}"))["visible-rows"] == 1
    assert body_counts(render(page, tmp_path, "#filter=no-such-word"))["visible-rows"] == 0
    shot = tmp_path / "eval.png"
    render(page, tmp_path, screenshot=str(shot))
    assert_screenshot(shot)


# ----------------------------------------------------------------------------- tfrecords_tools inspect

@needs_chromium
def test_inspect_page_in_chromium(shapes_data, tmp_path):
    from tfrecords_tools import inspection

    page = str(tmp_path / "inspect.html")
    report = inspection.inspect_data(shapes_data, html_path=page, num_examples=6, verbose=False)
    text = open(page, encoding="utf-8").read()
    assert text.count("<svg ") == len([s for s in report["splits"].values() if s["length_histogram"]]) == 3
    dom = render(page, tmp_path)
    assert body_counts(dom) == {"visible-rows": 6, "images-total": 6, "images-loaded": 6}
    sizes = [thumbnail_size(u) for u in re.findall(r'<img src="(data:image/jpeg;base64,[^"]+)"', text)]
    assert len(sizes) == 6 and all(max(s) <= html_report.THUMBNAIL_SIDE for s in sizes)
    val_rows = len(re.findall(r"<p><b>val</b>", text))
    assert body_counts(render(page, tmp_path, "#filter=shapes_val_"))["visible-rows"] == val_rows
    shot = tmp_path / "inspect.png"
    render(page, tmp_path, screenshot=str(shot))
    assert_screenshot(shot)
