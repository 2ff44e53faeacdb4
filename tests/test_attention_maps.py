"""Attention maps out of the search: the searches' traces, the captioner's maps, the Python API, `caption
--attention DIR` and the evaluation report's strips (headless Chromium).

The search tests use the fake state-dependent table of test_beam_search.py; the model tests an untrained
tiny attention model whose query is scaled up so that its maps are far from uniform (a map taken from the
wrong hypothesis would then differ); the API, CLI and report tests a tiny attention run trained for one
epoch without XLA (the maps of a barely trained model mean nothing: only their shapes, sums and words are
checked there).
"""

from __future__ import annotations

import os
import re
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from caption_app.data.vocabulary import END_ID, START_ID, Vocabulary
from caption_app.inference.captioner import AttentionError, TrainedCaptioner
from caption_app.inference.settings import DecodeSettings
from caption_app.inference.strategies import Beam, Greedy, Sample
from tests.conftest import encode_image, tiny_config
from tests.test_beam_search import MODULUS, random_log_table, sum_state, sum_step
from tests.test_html_report import CHROMIUM, HOSTILE, assert_screenshot, body_counts, needs_chromium, render

V, MAX_LENGTH = 6, 5
STRATEGIES = [Beam(3), Beam(4, num_results=2, length_normalization=0.7), Greedy(), Sample(4, seed=3)]


# ----------------------------------------------------------------------------- the searches' traces

def traced_sum_step():
    """sum_step whose trace row is [one_hot(the word fed), the running sum after it]: row t of a caption
    must be its word t-1 (<start> for t = 0) and the sum of the words before t, which a trace gathered
    from the wrong parent gets wrong."""
    table = np.stack([random_log_table(seed, V) for seed in range(MODULUS)], axis=1)  # [V, M, V]
    step = sum_step(table)

    def traced(ids, state):
        log_probs, new_state = step(ids, state)
        return log_probs, new_state, tf.concat([tf.one_hot(ids, V), new_state["sum"]], axis=1)

    return step, traced


@pytest.mark.parametrize("strategy", STRATEGIES, ids=repr)
def test_each_strategy_keeps_the_trace_of_the_steps_that_chose_each_word(strategy):
    step, traced = traced_sum_step()
    initial = [2.0, 5.0]
    kwargs = dict(start_id=START_ID, end_id=END_ID, max_length=MAX_LENGTH)
    plain = strategy.search(step, sum_state(initial), **kwargs)
    result = strategy.search(traced, sum_state(initial), **kwargs, trace=True)
    assert plain.traces is None  # nothing carried unless asked
    np.testing.assert_array_equal(plain.ids, result.ids)
    np.testing.assert_array_equal(plain.scores, result.scores)
    ids, lengths, traces = result.ids.numpy(), result.lengths.numpy(), result.traces.numpy()
    assert traces.shape == ids.shape + (V + 1,)
    for b, start_sum in enumerate(initial):
        for k in range(ids.shape[1]):
            fed = [START_ID, *ids[b, k]]
            for t in range(MAX_LENGTH):
                if t < lengths[b, k]:
                    np.testing.assert_array_equal(traces[b, k, t, :V], np.eye(V)[fed[t]])
                    assert traces[b, k, t, V] == start_sum + sum(fed[:t + 1])
                else:
                    assert not traces[b, k, t].any()


# ----------------------------------------------------------------------------- the captioner's maps

@pytest.fixture(scope="module")
def peaky_captioner():
    """An untrained tiny attention model (4 x 4 cells) made to look somewhere: cells that differ by
    their position, a query that reads the LSTM's tiny outputs at scale (the maps' peaks are ~4x the
    uniform 1/16), and <end> made all but impossible, so captions run to max_length and beams reorder."""
    from caption_app.model.show_and_tell import build_model

    keras.utils.set_random_seed(4)
    rng = np.random.default_rng(1)
    vocab = Vocabulary([f"w{i}" for i in range(14)])
    model = build_model(tiny_config("model.attention_size=8"), vocab.size)
    cells = model.image_encoder._parts.items["cells"]
    cells.position.assign(rng.normal(0, 1.0, cells.position.shape).astype(np.float32))
    query = model.decoder.attention_query
    query.kernel.assign(rng.normal(0, 150.0, query.kernel.shape).astype(np.float32))
    bias = model.decoder.logits.bias.numpy()
    bias[END_ID] = -20.0
    model.decoder.logits.bias.assign(bias)
    return TrainedCaptioner(model, vocab)


def _images(n, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, 32, 32, 3)).astype(np.float32)


@pytest.mark.parametrize("settings", [DecodeSettings(beam_size=3, max_length=8),
                                      DecodeSettings(strategy="greedy", max_length=8),
                                      DecodeSettings(strategy="sample", num_captions=3, max_length=8)],
                         ids=lambda s: s.strategy)
def test_maps_are_the_decoders_own_for_each_caption(peaky_captioner, settings):
    """Each map sums to 1, there is one per word, and feeding the caption back one word at a time gives
    the decoder the search's maps (with beam search's reordering: the back-pointers were followed)."""
    captioner, settings = peaky_captioner, settings.resolve()
    images = _images(3)
    plain = captioner.generate(images, settings)
    result = captioner.generate(images, settings, attention=True)
    np.testing.assert_array_equal(result.ids, plain.ids)  # the same search, the same captions
    np.testing.assert_array_equal(result.scores, plain.scores)
    assert plain.traces is None and result.traces.shape == (3, settings.num_captions, 8, 16)
    ids, traces, lengths = result.ids.numpy(), result.traces.numpy(), result.lengths.numpy()
    assert lengths.min() == 8  # no <end>: every row of every map is a word's
    np.testing.assert_allclose(traces.sum(axis=-1), 1.0, atol=1e-5)
    # Every caption fed back, all at once, one word at a time (teacher forcing): the decoder's maps
    # are the search's.
    k = settings.num_captions
    state = [tf.repeat(s, k, axis=0) for s in captioner.encode(images)]  # row b * K + k
    fed = np.concatenate([np.full((3 * k, 1), START_ID), ids.reshape(3 * k, 8)], axis=1)
    maps = traces.reshape(3 * k, 8, 16)
    for t in range(8):
        _, state, weights = captioner.decode_step_with_attention(tf.constant(fed[:, t], tf.int32), state)
        np.testing.assert_allclose(weights.numpy(), maps[:, t], atol=2e-5)
    assert np.median(maps.max(axis=-1)) > 2 / 16


def test_a_model_without_attention_says_so_in_one_line(peaky_captioner):
    from caption_app import Captioner
    from caption_app.model.show_and_tell import build_model

    plain = TrainedCaptioner(build_model(tiny_config(), peaky_captioner.vocab.size), peaky_captioner.vocab,
                             path="runs/plain")
    with pytest.raises(AttentionError, match=r"^runs/plain was trained without attention \(model.attention_size "
                                             r"is 0\)[^\n]*--set model.attention_size=N[^\n]*$"):
        Captioner(plain).caption(np.zeros((8, 8, 3), np.uint8), return_attention=True)
    with pytest.raises(AttentionError):
        plain.generate(_images(1), attention=True)


# ----------------------------------------------------------------------------- a trained attention run

@pytest.fixture(scope="module")
def attention_run(shapes_data, tmp_path_factory):
    """The tiny config with attention (A = 8, 4 x 4 cells): 3 steps without XLA or sample captions."""
    from caption_app.training.train import train

    run_dir = str(tmp_path_factory.mktemp("attention") / "run")
    train(tiny_config("model.attention_size=8", "train.epochs=0.2", "train.learning_rate=0.02",
                      "train.jit_compile=false", "eval.sample_images=0", "eval.batch_size=12"), shapes_data, run_dir,
          verbose=0)  # one evaluation batch of the 12 test images: one trace
    return run_dir


@pytest.fixture(scope="module")
def attention_captioner(attention_run):
    """`Captioner.load` of the attention run, once: the CLI and evaluate tests reuse what it loaded
    (TrainedCaptioner.from_run_dir patched to return it), so the run is loaded and traced once."""
    from caption_app import Captioner

    return Captioner.load(attention_run)


@pytest.fixture
def loaded_once(attention_captioner, monkeypatch):
    monkeypatch.setattr(TrainedCaptioner, "from_run_dir", lambda *args, **kwargs: attention_captioner.loaded)


def _test_images(shapes_data, n):
    from tests.conftest import read_records

    return [r["encoded"] for r in read_records(shapes_data, "test")[:n]]


def test_api_returns_one_map_per_word(attention_captioner, shapes_data):
    captioner = attention_captioner
    items = _test_images(shapes_data, 3)
    plain = captioner.caption(items)
    results = captioner.caption(items, return_attention=True)
    assert [r.captions for r in results] == [r.captions for r in plain] and plain[0].attention is None
    assert any(r.captions[0] for r in results)  # some words to look at
    for result in results:
        assert len(result.attention) == len(result.captions) and result.pixels.shape == (32, 32, 3)
        for caption, maps in zip(result.captions, result.attention):
            assert isinstance(maps, np.ndarray) and maps.shape == (len(caption.split()), 4, 4)
            np.testing.assert_allclose(maps.sum(axis=(1, 2)), 1.0, atol=1e-5)


def test_caption_command_writes_a_strip_per_image(attention_run, loaded_once, shapes_data, tmp_path, capsys):
    from caption_app.__main__ import main

    folder = tmp_path / "images"
    folder.mkdir()
    for i, data in enumerate(_test_images(shapes_data, 2)):
        (folder / f"shape {i}.png").write_bytes(data)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not an image")
    out_dir = tmp_path / "maps"
    assert main(["caption", "--run-dir", attention_run, str(folder), "--attention", str(out_dir), "--json"]) == 1
    import json

    results = json.loads(capsys.readouterr().out)
    assert sorted(os.listdir(out_dir)) == ["shape 0.png.png", "shape 1.png.png"]  # none for the broken file
    for r in results[1:]:
        assert r["attention"] == str(out_dir / (os.path.basename(r["image"]) + ".png"))
        strip = Image.open(r["attention"])
        words = max(len(r["captions"][0]["caption"].split()), 1)
        assert strip.size == (128 * words, 128 + 16)
    # A run without attention: one line, before the model loads (so its config is all it needs).
    plain = tmp_path / "plain"
    plain.mkdir()
    config = json.loads(open(os.path.join(attention_run, "config.json")).read())
    config["model"]["attention_size"] = 0
    (plain / "config.json").write_text(json.dumps(config))
    assert main(["caption", "--run-dir", str(plain), str(folder), "--attention", str(out_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "model.attention_size is 0" in err and "\n" not in err
    # Two images of one file name would write one PNG: refused, before anything is captioned.
    (tmp_path / "again").mkdir()
    shutil.copy(folder / "shape 0.png", tmp_path / "again" / "shape 0.png")
    assert main(["caption", "--run-dir", attention_run, str(folder), str(tmp_path / "again"),
                 "--attention", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err.strip()
    assert "are both shape 0.png" in err and "\n" not in err and not (tmp_path / "other").exists()


# ----------------------------------------------------------------------------- the report's strips

def _strip_rows(page: str) -> list[tuple[str, int]]:
    """(generated caption, tiles in its strip) for each row with a strip."""
    rows = re.findall(r'<div class="gen">([^<]*)</div>(<div class="att".*?</div>)', page)
    return [(caption, strip.count('<span class="w"')) for caption, strip in rows]


@needs_chromium
def test_report_strips_in_chromium(tmp_path):
    """A page with hostile captions and maps: every image loads, one tile per word, the text stays text,
    and the script lays the row's thumbnail under the tiles."""
    from caption_app import html_report
    from caption_app.evaluation import report as eval_report
    from tests.test_html_report import _details

    details = _details(4, HOSTILE)
    thumbs = {k: html_report.thumbnail_uri(encode_image(np.full((32, 32, 3), 120, np.uint8), "PNG"),
                                           max_pixels=10**6) for k in details["captions"]}
    rng = np.random.default_rng(0)
    maps = {k: rng.dirichlet(np.ones(16), len(c["generated"].split())).reshape(-1, 4, 4)
            for k, c in details["captions"].items()}
    path = tmp_path / "strips.html"
    path.write_text(eval_report.build_page(details, thumbs, report_images=3, attention=maps))
    dom = render(str(path), tmp_path)
    words = sum(len(details["captions"][k]["generated"].split())
                for k in eval_report.worst_first(details["captions"])[:3])
    assert body_counts(dom) == {"visible-rows": 4, "images-total": 3 + words, "images-loaded": 3 + words}
    assert "data-injected" not in re.search(r"<body[^>]*>", dom).group(0)
    assert [n == len(c.split()) for c, n in _strip_rows(dom)] == [True] * 3
    assert "&lt;script&gt;document.body" in dom
    assert len(re.findall(r'class="att" style="[^"]*--thumb: url\(&quot;data:image/jpeg', dom)) == 3


@needs_chromium
def test_evaluate_report_of_an_attention_run(attention_run, loaded_once, tmp_path, monkeypatch):
    from caption_app.evaluation import metrics
    from caption_app.evaluation.evaluate import evaluate

    which = shutil.which
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None if name == "java" else which(name))  # no METEOR

    run = str(tmp_path / "run")
    shutil.copytree(attention_run, run)
    metrics = evaluate(run, "test", report_images=5, verbose=False)
    page_path = os.path.join(run, "eval", "test-ckpt-1.html")
    page = open(page_path, encoding="utf-8").read()
    rows = _strip_rows(page)
    assert len(rows) == sum(1 for c, _ in rows if c) <= 5 and metrics["num_images"] == 12
    assert all(n == len(c.split()) for c, n in rows)
    shot = tmp_path / "report.png"
    render(page_path, tmp_path, screenshot=str(shot))
    assert_screenshot(shot)


# ----------------------------------------------------------------------------- scoring where words look (bench)

def test_redrawn_boxes_are_the_generators_objects(shapes_data):
    from tfrecords_tools import shapes

    truth = shapes.load_objects(os.path.join(shapes_data, "raw", shapes.OBJECTS_FILE))
    for name, entry in truth["images"].items():
        objects = shapes.objects_with_boxes(name, seed=0, image_size=32)
        assert [o[:3] for o in objects] == entry["objects"]
        assert all(0 < left and 0 < top and left + side < 32 and top + side < 32 for *_, (left, top, side) in objects)


def test_attention_looks_scores_each_colour_and_shape_word_against_its_object():
    from tfrecords_tools import shapes, shapes_report

    scenes = shapes.SHAPES_SCENES.to_dict()
    objects = [("small", "red", "circle", (0, 0, 16)), ("small", "blue", "circle", (48, 48, 16)),
               ("small", "green", "cross", (0, 48, 16))]  # 64 px, 16 px cells: (0, 0), (3, 3), (3, 0)
    words = "a small red circle and a small blue circle and a purple cross".split()
    maps = np.full((len(words), 4, 4), 0.0)
    for position, cell in ((2, (0, 0)), (3, (3, 3)), (7, (3, 3)), (8, (3, 3)), (11, (3, 0)), (12, (0, 1))):
        maps[position][cell] = 1.0
    looks, omitted = shapes_report.attention_looks(words, maps, objects, 64, scenes)
    assert [(x.attribute, x.named, x.held_out, x.on_object, x.nearest, x.mass) for x in looks] == [
        ("colour", True, False, True, True, 1.0), ("shape", True, False, False, False, 0.0),  # looked elsewhere
        ("colour", True, True, True, True, 1.0), ("shape", True, True, True, True, 1.0),  # blue circle: held out
        ("colour", False, False, True, True, 1.0),  # "purple": nothing purple; it looked at the green cross
        ("shape", True, False, False, False, 0.0)]  # "cross": the green cross, but it looked next to the red circle
    assert all(x.cells == x.area == 1 / 16 and x.objects == 3 for x in looks)
    assert omitted == []  # three objects named
    _, omitted = shapes_report.attention_looks(words[:9], maps[:9], objects, 64, scenes)
    assert omitted == [False]  # the green cross, left out, under no word's peak
    text = shapes_report.format_looks(looks, [True, False])
    assert "naming nothing in the image: 1; their peak on an object: 1" in text
    assert "objects left out of a caption: 2; under some word's peak: 1" in text
