"""The dataset sources: COCO, Karpathy, Flickr30k, JSONL/CSV, TFDS; conversion in parts + merge; inspect.

Every fixture is generated here in the real formats (tiny JSON, token, JSONL
and CSV files and JPEGs made with PIL).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from caption_app.data import manifest as manifest_lib
from caption_app.data import records
from caption_app.data import vocabulary as vocab_lib
from tests.conftest import read_records, run_cli
from tfrecords_tools import coco, flickr30k, inspection, jsonl_csv, karpathy, layout, merge, source_api


def _jpeg(seed: int, size: int = 24) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size + 4, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _convert_kwargs(**kw):
    return dict(min_word_count=1, progress=False, verbose=False, **kw)


# ---------------------------------------------------------------------------- COCO


def _coco_files(root: Path, year: int = 2014, num_train: int = 6, num_val: int = 20) -> tuple[Path, Path]:
    """captions_{train,val}YEAR.json + train/val image folders, as published."""
    files = {}
    for split, count, offset in (("train", num_train, 0), ("val", num_val, 1000)):
        folder = root / f"{split}{year}"
        folder.mkdir(parents=True)
        images, annotations = [], []
        for i in range(count):
            image_id = offset + i
            name = f"COCO_{split}{year}_{image_id:012d}.jpg" if year == 2014 else f"{image_id:012d}.jpg"
            (folder / name).write_bytes(_jpeg(image_id))
            images.append({"id": image_id, "file_name": name, "height": 24, "width": 28})
            for j in range(5 + (i % 3 == 0)):  # some images have 6 captions, as in COCO
                annotations.append({"id": 10 * image_id + j, "image_id": image_id,
                                    "caption": f"A {split} photo number {i} caption {j}."})
        annotations.reverse()  # annotation order is not image order in the real files
        path = root / f"captions_{split}{year}.json"
        path.write_text(json.dumps({"info": {}, "licenses": [], "images": images,
                                    "annotations": annotations}))
        files[split] = path
    return files["train"], files["val"]


def test_coco_file_scheme_2017(tmp_path):
    train, val = _coco_files(tmp_path, year=2017, num_train=4, num_val=3)
    out = tmp_path / "out"
    manifest = coco.convert_coco([train, val], [tmp_path / "train2017", tmp_path / "val2017"], out,
                                 **_convert_kwargs())
    assert manifest["source"] == "coco"
    assert {s: v["num_images"] for s, v in manifest["splits"].items()} == {"train": 4, "val": 3, "test": 0}
    got = read_records(out, "train")
    assert [r["image_id"] for r in got] == [f"{i:012d}.jpg" for i in range(4)]
    assert got[0]["encoded"] == (tmp_path / "train2017" / "000000000000.jpg").read_bytes()
    # Captions in annotation-file order (reversed above), all six of image 0 kept.
    assert got[0]["captions"] == [f"A train photo number 0 caption {j}." for j in reversed(range(6))]
    assert manifest["max_captions_per_image"] == 6

    with pytest.raises(source_api.ConversionError, match="one --splits name per"):
        coco.read_coco([tmp_path / "train2017" / "000000000000.jpg"], [tmp_path])
    renamed = tmp_path / "captions_mine.json"
    renamed.write_bytes(train.read_bytes())
    items, _, _ = coco.read_coco([renamed], [tmp_path / "train2017"], splits=["train"])
    assert len(items["train"]) == 4


def test_coco_im2txt_scheme_reproduces_build_mscoco_data(tmp_path):
    train, val = _coco_files(tmp_path, num_train=6, num_val=20)
    out = tmp_path / "out"
    manifest = coco.convert_coco([train, val], [tmp_path / "train2014", tmp_path / "val2014"], out,
                                 split_scheme="im2txt", **_convert_kwargs())
    # im2txt: train2014 + val[:int(0.85 n)], val[int(0.85 n):int(0.90 n)], val[int(0.90 n):], n = 20.
    val_names = [f"COCO_val2014_{1000 + i:012d}.jpg" for i in range(20)]
    train_names = [f"COCO_train2014_{i:012d}.jpg" for i in range(6)] + val_names[:17]
    assert [r["image_id"] for r in read_records(out, "train")] == train_names
    assert [r["image_id"] for r in read_records(out, "val")] == val_names[17:18]
    assert [r["image_id"] for r in read_records(out, "test")] == val_names[18:]
    assert manifest["source_info"]["im2txt_val_cutoffs"] == [17, 18]
    # Pairs as im2txt counts them: every caption of every train image.
    captions_per_image = [6 if i % 3 == 0 else 5 for i in range(20)]
    assert manifest["splits"]["train"]["num_captions"] == (
        sum(captions_per_image[:6]) + sum(captions_per_image[:17]))

    with pytest.raises(source_api.ConversionError, match="im2txt needs exactly"):
        coco.read_coco([train], [tmp_path / "train2014"], split_scheme="im2txt")


def test_coco_unsafe_duplicate_and_missing_entries(tmp_path):
    train, val = _coco_files(tmp_path, num_train=3, num_val=2)
    data = json.loads(train.read_text())
    data["images"].append({"id": 77, "file_name": "../../etc/passwd"})
    data["images"].append({"id": 78, "file_name": "/etc/hostname"})
    data["images"].append(dict(data["images"][0]))  # listed twice
    data["images"].append({"id": 79, "file_name": "COCO_train2014_gone.jpg"})
    data["annotations"] += [{"id": 1, "image_id": 77, "caption": "secret"},
                            {"id": 2, "image_id": 79, "caption": "a photo"},
                            {"image_id": 1}]  # no caption (16 + 2 annotations before it)
    train.write_text(json.dumps(data))
    out = tmp_path / "out"
    manifest = coco.convert_coco([train, val], [tmp_path / "train2014", tmp_path / "val2014"], out,
                                 **_convert_kwargs())
    skipped = manifest["skipped"]
    assert skipped["unsafe_path"] == {"count": 2, "examples": ["../../etc/passwd", "/etc/hostname"]}
    assert skipped["duplicate"]["count"] == 1
    assert skipped["missing"]["examples"] == ["COCO_train2014_gone.jpg"]
    assert skipped["bad_line"]["examples"] == ["captions_train2014.json:annotations[18]"]
    assert manifest["splits"]["train"]["num_images"] == 3
    assert all("secret" not in c for r in read_records(out, "train") for c in r["captions"])


# ---------------------------------------------------------------------------- Karpathy


def test_karpathy_coco_and_flickr_layouts(tmp_path):
    root = tmp_path / "coco"
    images = []
    for i, (folder, split) in enumerate([("train2014", "train"), ("val2014", "restval"), ("val2014", "val"),
                                         ("val2014", "test"), ("val2014", "train")]):
        name = f"COCO_{folder}_{i:012d}.jpg"
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / name).write_bytes(_jpeg(i))
        images.append({"filepath": folder, "filename": name, "imgid": i, "split": split, "cocoid": i,
                       "sentences": [{"raw": f"A man riding a wave {i}.", "tokens": ["a"], "imgid": i,
                                      "sentid": 2 * i},
                                     {"raw": "A surfer .", "tokens": ["a", "surfer"], "imgid": i,
                                      "sentid": 2 * i + 1}]})
    images.append({"filepath": "..", "filename": "passwd", "split": "train", "sentences": [{"raw": "x"}]})
    images.append({"filename": "no_split.jpg", "sentences": []})
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    out = tmp_path / "out"
    manifest = karpathy.convert_karpathy(path, root, out, **_convert_kwargs())
    assert manifest["source"] == "karpathy_coco"
    train = read_records(out, "train")
    assert [r["image_id"] for r in train] == ["train2014/COCO_train2014_000000000000.jpg",
                                              "val2014/COCO_val2014_000000000001.jpg",  # restval -> train
                                              "val2014/COCO_val2014_000000000004.jpg"]
    assert train[1]["captions"] == ["A man riding a wave 1.", "A surfer ."]  # "raw", untokenized
    assert [r["image_id"] for r in read_records(out, "val")] == ["val2014/COCO_val2014_000000000002.jpg"]
    assert [r["image_id"] for r in read_records(out, "test")] == ["val2014/COCO_val2014_000000000003.jpg"]
    assert manifest["skipped"]["unsafe_path"]["examples"] == ["../passwd"]
    assert manifest["skipped"]["bad_line"]["examples"] == ["dataset_coco.json:images[6]"]

    items, _ = karpathy.read_karpathy(path, root, restval="drop")
    assert len(items["train"]) == 2
    items, _ = karpathy.read_karpathy(path, root, restval="val")
    assert len(items["val"]) == 2

    # Flickr layout: no filepath, images directly in the folder.
    flat = tmp_path / "flickr"
    flat.mkdir()
    (flat / "1.jpg").write_bytes(_jpeg(9))
    (tmp_path / "dataset_flickr8k.json").write_text(json.dumps({"images": [
        {"filename": "1.jpg", "split": "train", "sentences": [{"raw": "a dog"}]}]}))
    items, _ = karpathy.read_karpathy(tmp_path / "dataset_flickr8k.json", flat)
    assert items["train"][0].path == str(flat / "1.jpg") and items["train"][0].image_id == "1.jpg"


# ---------------------------------------------------------------------------- Flickr30k


def test_flickr30k_token_file_and_hash_split(tmp_path):
    images = tmp_path / "flickr30k-images"
    images.mkdir()
    names = [f"{1000 + i}.jpg" for i in range(40)]
    lines = []
    for i, name in enumerate(names):
        (images / name).write_bytes(_jpeg(i, size=16))
        lines += [f"{name}#{j}\tA person number {i} is doing thing {j} ." for j in range(5)]
    lines.append("a broken line")
    token = tmp_path / flickr30k.TOKEN_FILE
    token.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    manifest = flickr30k.convert_flickr30k(token, images, out, val_fraction=0.2, test_fraction=0.2,
                                           **_convert_kwargs())
    counts = {s: v["num_images"] for s, v in manifest["splits"].items()}
    assert sum(counts.values()) == 40 and all(counts[s] > 0 for s in ("train", "val", "test"))
    for split in ("train", "val", "test"):
        for r in read_records(out, split):
            assert source_api.hash_split(r["image_id"], 0.2, 0.2) == split
            assert len(r["captions"]) == 5
    assert manifest["skipped"]["bad_line"]["examples"] == [f"{flickr30k.TOKEN_FILE}:201"]
    # The split depends on the name only, not on the file order.
    reordered = tmp_path / "reordered.token"
    reordered.write_text("\n".join(reversed(lines[:-1])) + "\n")
    again, _ = flickr30k.read_flickr30k(reordered, images, val_fraction=0.2, test_fraction=0.2)
    assert {s: sorted(i.image_id for i in v) for s, v in again.items()} == {
        s: sorted(r["image_id"] for r in read_records(out, s)) for s in ("train", "val", "test")}


# ---------------------------------------------------------------------------- JSONL / CSV


def _own_images(root: Path, n: int) -> list[str]:
    (root / "imgs").mkdir(parents=True)
    names = []
    for i in range(n):
        (root / "imgs" / f"{i}.jpg").write_bytes(_jpeg(50 + i, size=16))
        names.append(f"imgs/{i}.jpg")
    return names


def test_jsonl_captions_lists_splits_and_bad_lines(tmp_path):
    names = _own_images(tmp_path, 6)
    lines = [json.dumps({"image": names[0], "caption": "a red ball", "split": "train"}),
             json.dumps({"image": names[0], "caption": "a ball on grass", "split": "train"}),  # merged
             json.dumps({"image": names[1], "captions": ["a cat", "a cat on a mat"], "split": "TRAIN"}),
             json.dumps({"image": names[2], "caption": ["a dog"], "split": "dev"}),  # dev -> val
             json.dumps({"image": names[3], "caption": "a bird", "split": "test"}),
             json.dumps({"image": names[3], "caption": "a bird again", "split": "train"}),  # conflict
             json.dumps({"image": names[4], "caption": "a fish", "split": "holdout"}),  # unknown split
             json.dumps({"image": "../outside.jpg", "caption": "nope"}),
             json.dumps({"caption": "no image"}),
             "{not json",
             json.dumps({"image": names[5], "caption": "no split given"})]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    manifest = jsonl_csv.convert_records(path, "jsonl", out, **_convert_kwargs())
    train = {r["image_id"]: r["captions"] for r in read_records(out, "train")}
    assert train["imgs/0.jpg"] == ["a red ball", "a ball on grass"]
    assert train["imgs/1.jpg"] == ["a cat", "a cat on a mat"]
    assert [r["image_id"] for r in read_records(out, "val")] == ["imgs/2.jpg"] + (
        ["imgs/5.jpg"] if source_api.hash_split("imgs/5.jpg", 0.05, 0.05) == "val" else [])
    assert {r["image_id"]: r["captions"] for r in read_records(out, "test")}["imgs/3.jpg"] == ["a bird"]
    skipped = manifest["skipped"]
    assert skipped["split_conflict"]["examples"] == ["data.jsonl:6"]
    assert skipped["bad_line"]["examples"] == ["data.jsonl:7 (split 'holdout')", "data.jsonl:9",
                                               "data.jsonl:10"]
    assert skipped["unsafe_path"]["examples"] == ["../outside.jpg"]
    expected_5 = source_api.hash_split("imgs/5.jpg", 0.05, 0.05)
    assert "imgs/5.jpg" in {r["image_id"] for r in read_records(out, expected_5)}


def test_csv_rows_root_and_custom_keys(tmp_path):
    data = tmp_path / "data"
    names = _own_images(data, 3)
    path = tmp_path / "meta" / "captions.csv"
    path.parent.mkdir()
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "text", "part"])
        w.writerow([names[0], "a dog, running", "train"])  # comma inside a quoted cell
        w.writerow([names[0], 'a "quoted" dog', "train"])
        w.writerow([names[1], "a cat", "val"])
        w.writerow([names[2], "a bird", ""])  # empty split: hash split
        w.writerow([names[2]])  # too few cells
    out = tmp_path / "out"
    manifest = jsonl_csv.convert_records(path, "csv", out, root=data, image_key="file", caption_key="text",
                                         split_key="part", val_fraction=0.0, test_fraction=0.0,
                                         **_convert_kwargs())
    train = {r["image_id"]: r["captions"] for r in read_records(out, "train")}
    assert train == {"imgs/0.jpg": ["a dog, running", 'a "quoted" dog'], "imgs/2.jpg": ["a bird"]}
    assert [r["image_id"] for r in read_records(out, "val")] == ["imgs/1.jpg"]
    assert manifest["skipped"]["bad_line"]["examples"] == ["captions.csv:6"]
    with pytest.raises(source_api.ConversionError, match="image root"):
        jsonl_csv.read_records(path, "csv", root=tmp_path / "nope")


# ---------------------------------------------------------------------------- TFDS


def test_tfds_coco_captions_with_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    from tfrecords_tools import tfds_source

    originals = {}

    def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
        # coco_captions examples built and serialized with the builder's own
        # FeaturesDict, then decoded by TFDS with the caller's decoders.
        features = self.info.features
        serialized = []
        for i in range(3):
            image_id = {"train": 0, "restval": 100, "val": 200, "test": 300}[split] + i
            # A smooth image (random noise loses too much to JPEG to compare pixels).
            y, x = np.mgrid[0:20, 0:24]
            pixels = np.stack([x * 10, y * 12, np.full_like(x, image_id % 256)], -1).astype(np.uint8)
            name = f"COCO_{split}_{image_id:012d}.jpg"
            example = {"image": pixels, "image/filename": name, "image/id": image_id, "objects": [],
                       "captions": [{"id": 10 * image_id + j, "text": f"a {split} picture {j}"}
                                    for j in range(2 + i)]}
            originals[name] = pixels
            serialized.append(features.serialize_example(example))
        return tf.data.Dataset.from_tensor_slices(serialized).map(
            lambda s: features.deserialize_example(s, decoders=decoders))

    out = tmp_path / "out"
    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        manifest = tfds_source.convert_tfds("coco_captions", out, data_dir=str(tmp_path / "tfds"),
                                            **_convert_kwargs())
    assert manifest["source"] == "tfds:coco_captions"
    assert {s: v["num_images"] for s, v in manifest["splits"].items()} == {"train": 6, "val": 3, "test": 3}
    train = read_records(out, "train")
    assert [r["image_id"] for r in train][:4] == ["COCO_train_000000000000.jpg", "COCO_train_000000000001.jpg",
                                                  "COCO_train_000000000002.jpg", "COCO_restval_000000000100.jpg"]
    assert train[1]["captions"] == ["a train picture 0", "a train picture 1", "a train picture 2"]
    for r in train:  # the JPEG TFDS stored, decodable, close to the original pixels
        decoded = tf.io.decode_image(r["encoded"], channels=3).numpy().astype(int)
        assert r["encoded"][:2] == b"\xff\xd8"
        assert np.abs(decoded - originals[r["image_id"]]).mean() < 4
    assert not [p for p in out.iterdir() if p.name.startswith(".tfds_staging")]


def test_tfds_not_prepared_is_a_clear_error(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    from tfrecords_tools import tfds_source

    with pytest.raises(source_api.ConversionError, match="never downloads"):
        tfds_source.convert_tfds("coco_captions", tmp_path / "out", data_dir=str(tmp_path / "empty"),
                                 **_convert_kwargs())
    assert not [p for p in (tmp_path / "out").iterdir()]  # staging removed


# ---------------------------------------------------------------------------- many machines


def test_conversion_in_parts_merges_into_the_single_run_output(tmp_path):
    names = _own_images(tmp_path, 24)
    lines = [json.dumps({"image": n, "captions": [f"a thing number {i % 5}", "a photo"],
                         "split": ("train", "train", "val", "test")[i % 4]}) for i, n in enumerate(names)]
    lines.insert(2, "{bad")
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    single = jsonl_csv.convert_records(path, "jsonl", tmp_path / "single", images_per_shard=4,
                                       **_convert_kwargs())

    out = tmp_path / "in_parts"
    parts = [jsonl_csv.convert_records(path, "jsonl", out, images_per_shard=4, part=(i, 3), **_convert_kwargs())
             for i in (2, 0)]
    assert all(p["splits"]["train"]["num_images"] > 0 for p in parts)
    with pytest.raises(source_api.ConversionError, match="part 1 of 3 is missing"):
        merge.merge_parts(out, verbose=False)
    jsonl_csv.convert_records(path, "jsonl", out, images_per_shard=4, part=(1, 3), **_convert_kwargs())
    merged = merge.merge_parts(out, verbose=False)

    assert not (out / layout.PARTS_DIR).exists()
    assert merged["vocab_size"] == single["vocab_size"]
    assert (out / "vocab.txt").read_text() == (tmp_path / "single" / "vocab.txt").read_text()
    assert merged["skipped"] == single["skipped"]  # the bad line counted once, not per part
    for split in ("train", "val", "test"):
        assert merged["splits"][split]["num_images"] == single["splits"][split]["num_images"]
        assert merged["splits"][split]["num_captions"] == single["splits"][split]["num_captions"]
        got = read_records(out, split)
        want = read_records(tmp_path / "single", split)
        assert sorted((r["image_id"], r["encoded"], r["captions"]) for r in got) == sorted(
            (r["image_id"], r["encoded"], r["captions"]) for r in want)
        # Each image in exactly the part its id hashes to.
    loaded = manifest_lib.load(str(out))
    assert loaded.max_caption_words == single["max_caption_words"]
    # The parts' longest-caption histograms add up to the single conversion's (length buckets).
    assert merged["train_longest_caption_words"] == single["train_longest_caption_words"]
    files = loaded.files("train")
    assert [Path(f).name for f in files] == [records.shard_name("train", i, len(files)) for i in range(len(files))]

    assert sum(source_api.in_part(n, i, 3) for n in names for i in range(3)) == len(names)
    with pytest.raises(source_api.ConversionError, match="part index 3 of 3"):
        source_api.check_part(3, 3)


@pytest.mark.slow
def test_cli_parts_then_merge_then_inspect(tmp_path):
    names = _own_images(tmp_path, 8)
    path = tmp_path / "data.csv"
    path.write_text("image,caption,split\n" + "".join(
        f"{n},a small picture number {i},{'train' if i < 6 else 'val'}\n" for i, n in enumerate(names)))
    out = tmp_path / "out"
    # Part 0 with the flags' names, part 1 with their deprecated names (a "shard" is a record file).
    for i, flags in enumerate((("--num-parts", "2", "--part-index", "0"), ("--num-shards", "2", "--shard-index", "1"))):
        r = run_cli("tfrecords_tools", "csv", "--file", str(path), "--out", str(out), "--min-word-count", "1",
                    *flags, "--no-progress")
        assert r.returncode == 0, r.stderr
        assert f"Wrote part {i} of 2" in r.stdout
        assert ("--num-shards/--shard-index are deprecated" in r.stderr) == (i == 1)
    r = run_cli("tfrecords_tools", "merge", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "train:       6 images" in r.stdout
    r = run_cli("tfrecords_tools", "inspect", str(out), "--examples", "3")
    assert r.returncode == 0, r.stderr
    assert "vocabulary coverage 100.00%" in r.stdout
    page = (out / inspection.HTML_FILE).read_text()
    assert page.count("data:image/jpeg;base64,") == 3


# ---------------------------------------------------------------------------- inspect


def test_inspect_counts_histogram_coverage_and_html(tmp_path):
    names = _own_images(tmp_path, 5)
    rows = [(names[0], "a dog runs", "train"), (names[0], "a dog", "train"),
            (names[1], "a dog runs on the grass in the park today with " + "many " * 40, "train"),
            (names[2], "a dog <b>&amp;</b> zebra", "val"), (names[3], "a zebra", "test"),
            (names[4], "an unknown okapi", "test")]
    path = tmp_path / "d.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption", "split"])
        w.writerows(rows)
    out = tmp_path / "out"
    jsonl_csv.convert_records(path, "csv", out, **_convert_kwargs())
    html_path = tmp_path / "pages" / "examples.html"
    report = inspection.inspect_data(out, html_path=html_path, num_examples=2, verbose=False)
    train, val, test = (report["splits"][s] for s in ("train", "val", "test"))
    assert (train["num_images"], train["num_captions"]) == (2, 3)
    assert train["length_histogram"] == {"0-4": 2, "40+": 1}  # 3 and 2 words; 51 words
    assert train["max_words"] == 51 and train["vocab_coverage"] == 1.0
    # val: "a dog b amp b zebra": a, dog in the vocab (b, amp, zebra not) -> 2 of 6.
    assert (val["tokens"], val["in_vocab_tokens"]) == (6, 2)
    assert test["vocab_coverage"] == pytest.approx(1 / 5)  # "a" of: a zebra an unknown okapi
    page = html_path.read_text()
    assert page.count("<img ") == 2 and page.count("data:image/jpeg;base64,") == 2
    assert "<b>&amp;</b>" not in page  # captions are escaped
    assert not list(html_path.parent.glob("*.tmp"))
    vocab = vocab_lib.Vocabulary.load(str(out / "vocab.txt"))
    assert "zebra" not in vocab.words
