"""tfrecords_tools: the shapes generator, the Flickr8k converter, the writer, the CLI."""

from __future__ import annotations

import inspect
import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from caption_app.data import manifest as manifest_lib
from caption_app.data import records
from caption_app.data import vocabulary as vocab_lib
from tests.conftest import REPO_ROOT, cli_env, read_records, run_cli
from tfrecords_tools import __main__ as cli
from tfrecords_tools import coco, flickr8k, flickr30k, jsonl_csv, karpathy, shapes, source_api, tfds_source, writer



# ---------------------------------------------------------------------------- helpers


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _jpeg(seed: int, size: int = 32) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _token_captions(raw: Path) -> dict[str, list[str]]:
    captions: dict[str, list[str]] = {}
    for line in (raw / flickr8k.TOKEN_FILE).read_text().splitlines():
        key, caption = line.split("\t")
        name, index = key.split("#")
        assert int(index) == len(captions.setdefault(name, []))
        captions[name].append(caption)
    return captions


def _split_names(text_dir: Path, split: str) -> list[str]:
    return (text_dir / flickr8k.SPLIT_FILES[split]).read_text().split()


# ---------------------------------------------------------------------------- shapes


def test_shapes_deterministic_by_seed(tmp_path):
    kwargs = dict(num_train=12, num_val=4, num_test=4, image_size=32)
    shapes.generate_shapes(tmp_path / "a", seed=0, **kwargs)
    shapes.generate_shapes(tmp_path / "b", seed=0, **kwargs)
    shapes.generate_shapes(tmp_path / "c", seed=1, **kwargs)
    a, b, c = (_files(tmp_path / d) for d in "abc")
    assert len(a) == 20 + 5  # images + token file + 3 split lists + ground truth
    assert a == b
    assert a.keys() == c.keys()
    different = [k for k in a if a[k] != c[k]]
    assert flickr8k.TOKEN_FILE in different and shapes.OBJECTS_FILE in different
    assert sum(k.endswith(".jpg") for k in different) >= 18


def test_shapes_layout_captions_and_held_out_pairs(tmp_path):
    dirs = shapes.generate_shapes(tmp_path / "raw", seed=3, num_train=80, num_val=5, num_test=60,
                                  image_size=48)
    raw = Path(dirs.text_dir)
    assert Path(dirs.images_dir) == raw / "images"
    captions = _token_captions(raw)
    splits = {s: _split_names(raw, s) for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [80, 5, 60]
    assert sorted(n for names in splits.values() for n in names) == sorted(captions)
    assert sorted(os.listdir(dirs.images_dir)) == sorted(captions)

    colour = "|".join(shapes.COLOURS)
    shape = "|".join(shapes.SHAPES)
    obj = rf"an? (?:small|large) (?:{colour}) (?:{shape})"
    objects = rf"{obj}(?: , {obj})*(?: and {obj})?"
    for name, caps in captions.items():
        assert len(caps) == 5 and len(set(caps)) == 5, caps
        assert re.fullmatch(objects, caps[0]), caps[0]
        assert caps[3] == f"there is {caps[0]} in the picture"
        assert caps[4] == f"a picture of {caps[0]}"
        num = len(re.findall(rf"\b(?:{shape})\b", caps[0]))
        assert 1 <= num <= 3
        assert caps[1] == f"{['one shape', 'two shapes', 'three shapes'][num - 1]} : {caps[0]}"
        assert caps[2] == re.sub(r"(?:small|large) ", "", caps[0]).replace("a orange", "an orange")
        assert "a orange" not in " ".join(caps) and "an red" not in " ".join(caps)

    def pairs_in(split):
        text = " ".join(captions[n][2] for n in splits[split])
        return {p for p in shapes.HELD_OUT_PAIRS if f"{p[0]} {p[1]}" in text}

    assert pairs_in("train") == set()
    assert pairs_in("test"), "60 test images should show some held-out pair"
    # Every colour and shape of a held-out pair is still seen in train.
    train_text = " ".join(captions[n][0] for n in splits["train"])
    for c, s in shapes.HELD_OUT_PAIRS:
        assert f" {c} " in train_text and re.search(rf"\b{s}\b", train_text)


def test_shapes_captions_for_templates():
    assert shapes.captions_for([("large", "red", "circle"), ("small", "blue", "square")]) == [
        "a large red circle and a small blue square",
        "two shapes : a large red circle and a small blue square",
        "a red circle and a blue square",
        "there is a large red circle and a small blue square in the picture",
        "a picture of a large red circle and a small blue square",
    ]
    three = shapes.captions_for([("small", "orange", "cross"), ("large", "green", "triangle"),
                                 ("small", "purple", "diamond")])
    assert three[0] == "a small orange cross , a large green triangle and a small purple diamond"
    assert three[1].startswith("three shapes : ")
    assert three[2] == "an orange cross , a green triangle and a purple diamond"
    assert shapes.captions_for([("large", "orange", "circle")])[1] == "one shape : a large orange circle"


def test_shapes_images_show_what_captions_say(tmp_path):
    dirs = shapes.generate_shapes(tmp_path / "raw", seed=0, num_train=20, num_val=0, num_test=0,
                                  image_size=64)
    captions = _token_captions(Path(dirs.text_dir))
    ordered = 0
    for name, caps in captions.items():
        pixels = np.asarray(Image.open(Path(dirs.images_dir) / name).convert("RGB"), np.int32)
        assert pixels.shape == (64, 64, 3)
        objects = re.findall(r"(small|large) (\w+) (\w+)", caps[0])
        x_centres = []
        for size, colour, shape in objects:
            near = np.abs(pixels - np.array(shapes.COLOURS[colour])).max(-1) < 40
            side = round(shapes.SIZES[size] * 64)
            # A triangle covers half its box, a cross 5/9, minus JPEG-blurred edges.
            assert near.sum() >= 0.3 * side * side, (name, colour, shape, near.sum())
            x_centres.append(np.nonzero(near)[1].mean())
        colours = [c for _, c, _ in objects]
        if len(objects) > 1 and len(set(colours)) == len(colours):
            assert x_centres == sorted(x_centres), (name, caps[0])  # named left to right
            ordered += 1
        # A pale background: most pixels are light.
        assert (pixels.min(-1) >= 180).mean() > 0.4
    assert ordered >= 5


# ---------------------------------------------------------------------------- flickr8k


@pytest.fixture
def fake_flickr8k(tmp_path) -> tuple[Path, Path, dict]:
    """A small Flickr8k layout with every kind of bad input; returns (images, text, expected)."""
    images, text = tmp_path / "Flicker8k_Dataset", tmp_path / "Flickr8k_text"
    images.mkdir()
    text.mkdir()
    train = [f"tr{i}.jpg" for i in range(8)] + ["zero.jpg", "corrupt.jpg", "blank.jpg"]
    val = ["va0.jpg", "va1.jpg", "truncated.jpg"]
    test = ["te0.jpg", "te1.jpg", "gone.jpg"]
    captions = {}
    for i, name in enumerate(train[:8]):
        (images / name).write_bytes(_jpeg(i))
        # min_word_count=2 keeps "dog" (x16), drops "number{i}" (x1) and "rare" (x1).
        captions[name] = [f"A dog runs on the grass number{i} .", "A dog on grass ."]
    captions["tr0.jpg"].append("   ")  # empty caption: dropped
    captions["tr1.jpg"].append("A rare sight !")
    (images / "zero.jpg").write_bytes(b"")
    (images / "corrupt.jpg").write_bytes(np.random.default_rng(0).bytes(700))
    (images / "blank.jpg").write_bytes(_jpeg(100))
    captions["blank.jpg"] = ["", " . "]  # no caption with a word
    for name in ("zero.jpg", "corrupt.jpg"):
        captions[name] = ["a dog"]
    for i, name in enumerate(val[:2]):
        (images / name).write_bytes(_jpeg(20 + i))
        captions[name] = ["A dog on grass", "a dog"]
    good = _jpeg(30, size=64)
    (images / "truncated.jpg").write_bytes(good[: len(good) // 2])
    captions["truncated.jpg"] = ["a dog"]
    for i, name in enumerate(test[:2]):
        (images / name).write_bytes(_jpeg(40 + i))
        captions[name] = ["a zebra", "a zebra on grass"]  # zebra: test only
    captions["gone.jpg"] = ["a dog"]
    captions["tr2.jpg"].append("A dog on grass again")
    lines = [f"{n}#{j}\t{c}" for n, cs in captions.items() for j, c in enumerate(cs)]
    # The release's quirk: `2258277193_586949ec62.jpg.1#0`.
    lines = [line.replace("tr2.jpg#2", "tr2.jpg.1#2") for line in lines]
    lines.insert(3, "a line without a tab")
    (text / flickr8k.TOKEN_FILE).write_text("\n".join(lines) + "\n")
    for split, names in (("train", train), ("val", val), ("test", test)):
        (text / flickr8k.SPLIT_FILES[split]).write_text("\n".join(names) + "\n\n")
    expected = {
        "train": {n: [c for c in captions[n] if c.strip()] for n in train[:8]},
        "val": {n: captions[n] for n in val[:2]},
        "test": {n: captions[n] for n in test[:2]},
    }
    return images, text, expected


def test_flickr8k_skips_counts_and_round_trips(fake_flickr8k, tmp_path, capsys):
    images, text, expected = fake_flickr8k
    out = tmp_path / "out"
    manifest = flickr8k.convert_flickr8k(images, text, out, min_word_count=2, images_per_shard=3,
                                         num_workers=3, progress=False, verbose=True)

    skipped = manifest["skipped"]
    assert {r: v["count"] for r, v in skipped.items()} == {
        "bad_line": 1, "corrupt": 1, "empty_caption": 3, "empty_file": 1, "missing": 1,
        "no_captions": 1, "truncated": 1}
    assert skipped["empty_file"]["examples"] == ["zero.jpg"]
    assert skipped["corrupt"]["examples"] == ["corrupt.jpg"]
    assert skipped["truncated"]["examples"] == ["truncated.jpg"]
    assert skipped["missing"]["examples"] == ["gone.jpg"]
    assert skipped["no_captions"]["examples"] == ["blank.jpg"]
    assert skipped["empty_caption"]["examples"] == ["tr0.jpg#2", "blank.jpg#0", "blank.jpg#1"]
    printed = capsys.readouterr().out
    for reason in skipped:
        assert reason in printed
    assert "gone.jpg" in printed and "truncated.jpg" in printed

    loaded = manifest_lib.load(str(out))
    assert loaded.raw == json.loads((out / "manifest.json").read_text())
    for split, want in expected.items():
        info = manifest["splits"][split]
        assert info["num_images"] == len(want)
        assert info["num_captions"] == sum(len(c) for c in want.values())
        assert info["num_shards"] == math.ceil(len(want) / 3) == len(info["files"])
        assert loaded.split(split).num_images == len(want)
        got = read_records(out, split)
        assert [r["image_id"] for r in got] == list(want)  # split-list order
        for r in got:
            assert r["encoded"] == (images / r["image_id"]).read_bytes()
            assert r["captions"] == [c.strip() for c in want[r["image_id"]]]
    assert manifest["splits"]["train"]["files"] == [
        "train-00000-of-00003.tfrecord", "train-00001-of-00003.tfrecord",
        "train-00002-of-00003.tfrecord"]
    assert manifest["max_captions_per_image"] == 3
    assert manifest["max_caption_words"] == 7  # "a dog runs on the grass numberN"
    assert manifest["source"] == "flickr8k" and manifest["min_word_count"] == 2

    vocab = vocab_lib.Vocabulary.load(loaded.vocab_path)
    assert vocab.size == manifest["vocab_size"]
    assert vocab.words[:4] == ["a", "dog", "grass", "on"]  # 18, 17, 17, 17 (ties alphabetical)
    assert {"dog", "grass", "runs", "on", "the"} <= set(vocab.words)
    assert "rare" not in vocab.words  # once in train < min_word_count
    assert "zebra" not in vocab.words  # test only
    assert not any(w.startswith("number") for w in vocab.words)


def test_flickr8k_output_independent_of_workers(fake_flickr8k, tmp_path):
    images, text, _ = fake_flickr8k
    for workers, out in ((1, "one"), (4, "four")):
        flickr8k.convert_flickr8k(images, text, tmp_path / out, num_workers=workers,
                                  images_per_shard=2, progress=False, verbose=False)
    one, four = _files(tmp_path / "one"), _files(tmp_path / "four")
    assert one.keys() == four.keys()
    for name in one:
        if name != "manifest.json":  # holds the creation time
            assert one[name] == four[name], name


@pytest.mark.slow
def test_flickr8k_output_byte_identical_across_processes(fake_flickr8k, tmp_path):
    images, text, _ = fake_flickr8k
    for out in ("first", "second"):
        result = run_cli("tfrecords_tools", "flickr8k", "--images", str(images), "--text", str(text),
                         "--out", str(tmp_path / out), "--images-per-shard", "2", "--no-progress")
        assert result.returncode == 0, result.stderr
    first, second = _files(tmp_path / "first"), _files(tmp_path / "second")
    assert first.keys() == second.keys()
    for name in first:
        if name != "manifest.json":  # holds the creation time
            assert first[name] == second[name], name


def test_flickr8k_errors_name_the_missing_file(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "text").mkdir()
    with pytest.raises(source_api.ConversionError, match=r"lacks Flickr8k\.token\.txt"):
        flickr8k.convert_flickr8k(tmp_path / "images", tmp_path / "text", tmp_path / "out",
                                  progress=False, verbose=False)
    with pytest.raises(source_api.ConversionError, match="does not exist"):
        flickr8k.convert_flickr8k(tmp_path / "images", tmp_path / "nope", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- writer


def test_writer_empty_splits_duplicates_and_no_train(tmp_path):
    (tmp_path / "a.jpg").write_bytes(_jpeg(1))
    (tmp_path / "b.png").write_bytes(b"")
    item = source_api.Item("a.jpg", str(tmp_path / "a.jpg"), ("a cat",))
    manifest = writer.write_dataset(
        tmp_path / "out", {"train": [item, item], "test": [item]}, source="unit",
        min_word_count=1, progress=False, verbose=False)
    assert manifest["splits"]["val"] == {"num_images": 0, "num_captions": 0, "num_shards": 0,
                                         "files": []}
    assert manifest["splits"]["test"]["num_images"] == 0
    assert manifest["skipped"]["duplicate"] == {"count": 2,
                                               "examples": ["train:a.jpg", "test:a.jpg"]}
    assert manifest["vocab_size"] == len(vocab_lib.SPECIAL_TOKENS) + 2
    assert manifest_lib.load(str(tmp_path / "out")).split("val").files == ()

    bad = source_api.Item("b.png", str(tmp_path / "b.png"), ("a cat",))
    with pytest.raises(source_api.ConversionError, match="no usable train image"):
        writer.write_dataset(tmp_path / "out2", {"train": [bad]}, source="unit",
                             progress=False, verbose=False)
    with pytest.raises(source_api.ConversionError, match="'train'"):
        writer.write_dataset(tmp_path / "out3", {"val": [item]}, source="unit")


def test_writer_failure_midway_leaves_the_old_data_dir(fake_flickr8k, tmp_path, monkeypatch):
    images, text, _ = fake_flickr8k
    out = tmp_path / "out"
    flickr8k.convert_flickr8k(images, text, out, progress=False, verbose=False)
    assert (out / "manifest.json").exists() and (out / "train-00000-of-00001.tfrecord").exists()
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    calls = []
    real = records.make_example

    def failing(*args):
        calls.append(args[0])
        if len(calls) == 4:  # inside the second shard (8 train images: shards of 2, 3, 3)
            raise RuntimeError("disk full")
        return real(*args)

    monkeypatch.setattr(records, "make_example", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        flickr8k.convert_flickr8k(images, text, out, images_per_shard=3, progress=False,
                                  verbose=False)
    # The new data dir was built beside the old one (hidden, now deleted): the old one is untouched.
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert manifest_lib.load(str(out)).split("train").files == ("train-00000-of-00001.tfrecord",)

    monkeypatch.setattr(records, "make_example", real)
    flickr8k.convert_flickr8k(images, text, out, images_per_shard=3, progress=False,
                              verbose=False)
    assert manifest_lib.load(str(out)).split("train").num_images == 8


# ---------------------------------------------------------------------------- the real subset


def _shared_flickr8k() -> Path | None:
    candidates = [Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k_1k"]
    if os.environ.get("SHARED_DIR"):
        candidates.append(Path(os.environ["SHARED_DIR"]) / "data" / "flickr8k_1k")
    return next((c for c in candidates if (c / "Flickr8k_text").is_dir()), None)


@pytest.mark.slow
def test_real_flickr8k_subset(tmp_path):
    root = _shared_flickr8k()
    if root is None:
        pytest.skip("the Flickr8k 1k subset (../shared/data/flickr8k_1k or "
                    "$SHARED_DIR/data/flickr8k_1k) is absent")
    out = tmp_path / "out"
    manifest = flickr8k.convert_flickr8k(root / "Flicker8k_Dataset", root / "Flickr8k_text",
                                         out, progress=False, verbose=False)
    splits = manifest["splits"]
    assert [splits[s]["num_images"] for s in ("train", "val", "test")] == [753, 113, 125]
    assert [splits[s]["num_captions"] for s in ("train", "val", "test")] == [3765, 565, 625]
    listed = sum(len(_split_names(root / "Flickr8k_text", s)) for s in ("train", "val", "test"))
    assert manifest["skipped"]["missing"]["count"] == listed - 991
    assert set(manifest["skipped"]) == {"missing"}
    present = set(os.listdir(root / "Flicker8k_Dataset"))
    assert not set(manifest["skipped"]["missing"]["examples"]) & present
    loaded = manifest_lib.load(str(out))
    assert loaded.max_captions_per_image == 5 and loaded.max_caption_words > 10
    first = read_records(out, "val")[0]
    assert first["encoded"] == (root / "Flicker8k_Dataset" / first["image_id"]).read_bytes()


# ---------------------------------------------------------------------------- CLI


def _cli(*args: str) -> subprocess.CompletedProcess:
    return run_cli("tfrecords_tools", *args)


def test_cli_shapes(tmp_path):
    out = tmp_path / "shapes"
    result = _cli("shapes", "--out", str(out), "--num-train", "20", "--num-val", "4",
                  "--num-test", "4", "--image-size", "32", "--min-word-count", "1",
                  "--num-workers", "2", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "train:" in result.stdout and str(out) in result.stdout
    loaded = manifest_lib.load(str(out))
    assert loaded.split("train").num_images == 20 and loaded.split("test").num_captions == 20
    assert loaded.raw["source"] == "shapes"
    assert loaded.raw["source_info"]["held_out_pairs"] == [list(p) for p in shapes.HELD_OUT_PAIRS]
    assert (out / "raw" / "images").is_dir()


def test_cli_missing_token_file_is_a_clear_error(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "text").mkdir()
    result = _cli("flickr8k", "--images", str(tmp_path / "images"), "--text",
                  str(tmp_path / "text"), "--out", str(tmp_path / "out"))
    assert result.returncode != 0
    assert "Flickr8k.token.txt" in result.stderr and "error:" in result.stderr
    assert "Traceback" not in result.stderr


def _defaults(fn) -> dict:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}


@pytest.mark.parametrize("argv, fn, names", [
    (["shapes"], shapes.convert_shapes, ("seed", "num_train", "num_val", "num_test", "image_size")),
    (["flickr30k", "--token", "t", "--images", "i"], flickr30k.convert_flickr30k, ("val_fraction", "test_fraction")),
    (["jsonl", "--file", "f"], jsonl_csv.convert_records,
     ("image_key", "caption_key", "split_key", "val_fraction", "test_fraction")),
    (["csv", "--file", "f"], jsonl_csv.convert_records, ("image_key", "caption_key", "split_key")),
    (["tfds"], tfds_source.convert_tfds, ("image_key", "captions_key", "id_key")),
    (["coco", "--annotations", "a", "--images", "i"], coco.convert_coco, ("split_scheme",)),
    (["karpathy", "--json", "j", "--images", "i"], karpathy.convert_karpathy, ("restval",)),
    (["flickr8k", "--images", "i", "--text", "t"], writer.write_dataset, ("min_word_count", "images_per_shard")),
])
def test_cli_defaults_are_the_source_modules_defaults(argv, fn, names):
    args = cli.build_parser().parse_args([*argv, "--out", "o"])
    assert {n: getattr(args, n) for n in names} == {n: _defaults(fn)[n] for n in names}
    if argv[0] == "tfds":
        assert args.name == tfds_source.DEFAULT_NAME == "coco_captions"


def test_cli_help_does_not_load_tensorflow():
    code = "import sys, tfrecords_tools.__main__ as m; m.build_parser(); print('tensorflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                            env=cli_env(), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_cli_part_flags_and_their_deprecated_shard_names(capsys):
    def part(*flags):
        return cli.parse_part(cli.build_parser().parse_args(["csv", "--file", "f", "--out", "o", *flags]))

    assert part() is None
    assert part("--num-parts", "3", "--part-index", "2") == (2, 3)
    assert capsys.readouterr().err == ""
    assert part("--num-shards", "3", "--shard-index", "2") == (2, 3)  # old names still work ...
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "deprecated" in err and "--num-parts/--part-index" in err  # ... with a note
    assert part("--num-parts", "3", "--shard-index", "1") == (1, 3)
    with pytest.raises(SystemExit, match="not also --num-shards"):
        part("--num-parts", "3", "--num-shards", "3", "--part-index", "0")
    with pytest.raises(SystemExit, match="go together"):
        part("--num-parts", "3")


# ---------------------------------------------------------------------------- module structure


def _package_imports() -> dict[str, set[str]]:
    """tfrecords_tools module -> the tfrecords_tools modules it imports (at the top or inside a function)."""
    import ast

    package = REPO_ROOT / "tfrecords_tools"
    modules = {p.stem for p in package.glob("*.py")}
    graph = {}
    for path in package.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "tfrecords_tools":
                found |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tfrecords_tools."):
                found.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("tfrecords_tools.")}
        graph[path.stem] = found - {path.stem}
    return graph


def test_converter_modules_import_one_way():
    graph = _package_imports()
    assert "writer" not in graph["beam_pipeline"] and "items" in graph["beam_pipeline"]
    assert {"items", "beam_pipeline"} <= graph["writer"]

    def reaches(start: str, goal: str, seen: set) -> bool:
        return any(m == goal or (m not in seen and not seen.add(m) and reaches(m, goal, seen))
                   for m in graph.get(start, ()))

    cycles = sorted(m for m in graph if reaches(m, m, set()))
    assert not cycles, f"import cycles through {cycles}"


@pytest.mark.parametrize("module", ["writer", "beam_pipeline", "items"])
def test_converter_modules_open_with_one_line_saying_their_idea(module):
    text = (REPO_ROOT / "tfrecords_tools" / f"{module}.py").read_text()
    first = text.split('"""')[1].splitlines()[0]
    assert text.startswith('"""') and first.strip() and first.endswith(".")


# ---------------------------------------------------------------------------- inspect


@pytest.mark.parametrize("damage", ["truncated", "flipped byte"])
def test_inspect_of_a_damaged_shard_is_one_error_line(tmp_path, capsys, damage):
    (tmp_path / "a.jpg").write_bytes(_jpeg(1))
    (tmp_path / "b.jpg").write_bytes(_jpeg(2))
    items = [source_api.Item(n, str(tmp_path / n), ("a cat on a mat",)) for n in ("a.jpg", "b.jpg")]
    out = tmp_path / "out"
    writer.write_dataset(out, {"train": items}, source="unit", min_word_count=1, progress=False, verbose=False)
    capsys.readouterr()  # the empty val and test splits' warnings
    shard = out / "train-00000-of-00001.tfrecord"
    data = shard.read_bytes()
    if damage == "truncated":
        shard.write_bytes(data[:len(data) - 100])
    else:  # same length, so the manifest's count still matches; the record's CRC does not
        shard.write_bytes(data[:200] + bytes([data[200] ^ 0xFF]) + data[201:])
    assert cli.main(["inspect", str(out)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith("error: ") and str(shard) in lines[0] and "re-convert" in lines[0]
    assert ("truncated" if damage == "truncated" else "damaged") in lines[0]
    assert not (out / "inspect.html").exists()
