"""Hard inputs: what the writer decodes, fixes (re-encodes) or skips, and why.

Every record must decode with the pipeline's `tf.io.decode_image(channels=3)`
into the picture a person sees: images TensorFlow would decode wrongly are
stored re-encoded as 8-bit RGB, everything else keeps its original bytes.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image, ImageOps

from caption_app.data import manifest as manifest_lib
from caption_app.data import pipeline, records
from caption_app.data import vocabulary as vocab_lib
from tfrecords_tools import flickr8k, images, jsonl_csv, report, source_api, writer


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _pixels(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    """A smooth picture (JPEG keeps it close) with a per-seed colour."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, np.full_like(x, 40 * seed % 256)], -1).astype(np.uint8)


def _convert(tmp_path: Path, files: dict[str, bytes], captions: dict[str, tuple[str, ...]] | None = None,
             **kwargs) -> tuple[dict, dict[str, dict]]:
    """Writes `files` into a folder and converts them all as train (plus one plain image)."""
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    files = {"plain.jpg": _encode(Image.fromarray(_pixels()), "JPEG"), **files}
    items = []
    for name, data in files.items():
        (folder / name).write_bytes(data)
        items.append(source_api.Item(name, str(folder / name), (captions or {}).get(name, ("a picture",))))
    manifest = writer.write_dataset(tmp_path / "out", {"train": items}, source="unit", min_word_count=1,
                                    progress=False, verbose=False, **kwargs)
    loaded = manifest_lib.load(str(tmp_path / "out"))
    got = {}
    for r in tf.data.TFRecordDataset(loaded.files("train")).map(records.parse_example):
        got[r["image_id"].numpy().decode()] = {"encoded": r["encoded"].numpy(),
                                               "captions": [c.decode() for c in r["captions"].numpy()]}
    return manifest, got


def _decoded(encoded: bytes) -> np.ndarray:
    """As the input pipeline decodes it."""
    return tf.io.decode_image(encoded, channels=3, expand_animations=False).numpy().astype(int)


def _reasons(manifest: dict, key: str) -> dict[str, list[str]]:
    return {r: v["examples"] for r, v in manifest[key].items()}


# ---------------------------------------------------------------------------- images


def test_truncated_jpeg_is_skipped(tmp_path):
    good = _encode(Image.fromarray(_pixels(64, 64)), "JPEG")
    manifest, got = _convert(tmp_path, {"cut.jpg": good[: len(good) * 2 // 3]})
    assert _reasons(manifest, "skipped") == {"truncated": ["cut.jpg"]}
    assert set(got) == {"plain.jpg"}


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    rgb = Image.fromarray(_pixels(seed=3))
    manifest, got = _convert(tmp_path, {"cmyk.jpg": _encode(rgb.convert("CMYK"), "JPEG", quality=95)})
    assert _reasons(manifest, "reencoded") == {"cmyk": ["cmyk.jpg"]}
    stored = got["cmyk.jpg"]["encoded"]
    with Image.open(io.BytesIO(stored)) as image:
        assert (image.format, image.mode) == ("JPEG", "RGB")
    assert np.abs(_decoded(stored) - _pixels(seed=3).astype(int)).mean() < 3


def test_png_with_alpha_is_composited_onto_white(tmp_path):
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0] = 255  # hidden red everywhere
    rgba[:, :8, 3] = 0  # left half transparent
    rgba[:, 8:, :3] = [10, 200, 30]
    rgba[:, 8:, 3] = 255
    manifest, got = _convert(tmp_path, {"alpha.png": _encode(Image.fromarray(rgba, "RGBA"), "PNG"),
                                        "la.png": _encode(Image.fromarray(rgba, "RGBA").convert("LA"), "PNG")})
    assert _reasons(manifest, "reencoded") == {"alpha": ["alpha.png", "la.png"]}
    image = _decoded(got["alpha.png"]["encoded"])
    assert (image[:, :8] == 255).all()  # white, not the hidden red TF would show
    assert (image[:, 8:] == [10, 200, 30]).all()  # lossless PNG


def test_16_bit_png_is_kept_and_decodes_to_8_bits(tmp_path):
    deep = (np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 100)
    data = _encode(Image.fromarray(deep).convert("I;16"), "PNG")
    manifest, got = _convert(tmp_path, {"deep.png": data})
    assert manifest["reencoded"] == {}
    assert got["deep.png"]["encoded"] == data  # TensorFlow scales 16-bit PNGs itself
    assert (_decoded(data) == (deep >> 8)[..., None]).all()


def test_gif_first_frame_bmp_and_tiff(tmp_path):
    frames = [Image.fromarray(np.full((12, 12, 3), c, np.uint8)) for c in ((200, 0, 0), (0, 0, 200))]
    gif = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    palette_bmp = _encode(Image.fromarray(_pixels(seed=5)).convert("P"), "BMP")
    manifest, got = _convert(tmp_path, {
        "anim.gif": gif,
        "rgb.bmp": _encode(Image.fromarray(_pixels(seed=4)), "BMP"),
        "palette.bmp": palette_bmp,
        "photo.tif": _encode(Image.fromarray(_pixels(seed=6)), "TIFF"),
    })
    assert got["anim.gif"]["encoded"] == gif  # TensorFlow reads GIFs (first frame) itself
    assert np.abs(_decoded(gif) - [200, 0, 0]).max() <= 2
    assert _reasons(manifest, "reencoded") == {"format": ["rgb.bmp", "palette.bmp", "photo.tif"]}
    assert (_decoded(got["rgb.bmp"]["encoded"]) == _pixels(seed=4)).all()
    assert (_decoded(got["photo.tif"]["encoded"]) == _pixels(seed=6)).all()
    with Image.open(io.BytesIO(palette_bmp)) as original:  # the case TF decodes with wrong colours
        assert (_decoded(got["palette.bmp"]["encoded"]) == np.asarray(original.convert("RGB"))).all()
    for name in ("rgb.bmp", "palette.bmp", "photo.tif"):
        assert got[name]["encoded"].startswith(b"\x89PNG")


def test_exif_rotated_photo_is_stored_upright(tmp_path):
    wide = Image.fromarray(_pixels(20, 40, seed=2))  # as the sensor stored it: 40 wide, 20 high
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    data = _encode(wide, "JPEG", quality=95, exif=exif.tobytes())
    manifest, got = _convert(tmp_path, {"rotated.jpg": data})
    assert _reasons(manifest, "reencoded") == {"exif_orientation": ["rotated.jpg"]}
    stored = _decoded(got["rotated.jpg"]["encoded"])
    assert stored.shape == (40, 20, 3)  # upright, as a viewer shows it
    with Image.open(io.BytesIO(data)) as original:
        upright = np.asarray(ImageOps.exif_transpose(original)).astype(int)
    assert np.abs(stored - upright).mean() < 3
    with Image.open(io.BytesIO(got["rotated.jpg"]["encoded"])) as image:
        assert image.getexif().get(0x0112, 1) == 1  # not rotated twice by EXIF-aware viewers


def _png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose IHDR header says width x height (CRC fixed, so only the size lies)."""
    data = bytearray(_encode(Image.new("RGB", (1, 1)), "PNG"))
    ihdr = 8  # after the signature: length (4), "IHDR" (4), data (13), crc (4)
    data[ihdr + 8:ihdr + 16] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr + 4:ihdr + 21]))
    data[ihdr + 21:ihdr + 25] = struct.pack(">I", crc)
    return bytes(data)


def test_absurd_dimensions_are_skipped_before_decoding(tmp_path):
    bomb = _png_claiming(30000, 30000)
    with Image.open(io.BytesIO(_png_claiming(300, 200))) as image:
        assert image.size == (300, 200)  # the header patch works
    manifest, got = _convert(tmp_path, {"bomb.png": bomb, "big.png": _encode(Image.new("RGB", (100, 100)), "PNG")},
                             max_pixels=5000)
    assert _reasons(manifest, "skipped") == {"too_large": ["bomb.png", "big.png"]}
    assert set(got) == {"plain.jpg"}  # 24 x 32 = 768 pixels <= 5000


def test_default_pixel_limit_is_the_one_serving_uses(tmp_path):
    from caption_app.data.image_bytes import DEFAULT_MAX_IMAGE_PIXELS

    manifest, _ = _convert(tmp_path, {"bomb.png": _png_claiming(30000, 30000)})
    assert manifest["skipped"]["too_large"]["count"] == 1
    assert images.DEFAULT_MAX_PIXELS == DEFAULT_MAX_IMAGE_PIXELS < Image.MAX_IMAGE_PIXELS < 30000 * 30000


# ---------------------------------------------------------------------------- names and captions


def test_path_traversal_in_a_split_list_is_rejected_and_counted(tmp_path):
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(_encode(Image.fromarray(_pixels()), "JPEG"))
    images, text = tmp_path / "root" / "images", tmp_path / "root" / "text"
    images.mkdir(parents=True)
    text.mkdir()
    (images / "ok.jpg").write_bytes(_encode(Image.fromarray(_pixels(seed=1)), "JPEG"))
    (text / flickr8k.TOKEN_FILE).write_text(
        "ok.jpg#0\ta dog\n../../secret.jpg#0\ta secret\n/etc/passwd#0\troot\n")
    (text / flickr8k.SPLIT_FILES["train"]).write_text("ok.jpg\n../../secret.jpg\n")
    (text / flickr8k.SPLIT_FILES["val"]).write_text("/etc/passwd\n")
    (text / flickr8k.SPLIT_FILES["test"]).write_text("")
    manifest = flickr8k.convert_flickr8k(images, text, tmp_path / "out", min_word_count=1, progress=False,
                                         verbose=False)
    assert manifest["skipped"]["unsafe_path"] == {"count": 2, "examples": ["../../secret.jpg", "/etc/passwd"]}
    assert manifest["splits"]["train"]["num_images"] == 1

    assert source_api.image_path("/data", "a/../b.jpg") == "/data/b.jpg"
    for bad in ("../x.jpg", "a/../../x.jpg", "/abs.jpg", "..", "C:\\x.jpg", "..\\x.jpg", ""):
        assert source_api.image_path("/data", bad) is None, bad


def test_duplicate_entries_keep_the_first(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(_encode(Image.fromarray(_pixels()), "JPEG"))
    first = source_api.Item("a.jpg", str(folder / "a.jpg"), ("a first caption",))
    second = source_api.Item("a.jpg", str(folder / "a.jpg"), ("a second caption",))
    manifest = writer.write_dataset(tmp_path / "out", {"train": [first, second], "test": [second]},
                                    source="unit", min_word_count=1, progress=False, verbose=False)
    assert manifest["skipped"]["duplicate"] == {"count": 2, "examples": ["train:a.jpg", "test:a.jpg"]}
    assert manifest["splits"]["train"]["num_captions"] == 1
    assert manifest["splits"]["test"]["num_images"] == 0  # never in two splits


def test_non_utf8_whitespace_and_500_word_captions(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (folder / name).write_bytes(_encode(Image.fromarray(_pixels()), "JPEG"))
    long_caption = " ".join(["word"] * 499 + ["end"])
    token = (b"a.jpg#0\ta caf\xc3\xa9 scene\n"  # valid UTF-8 (kept)
             b"a.jpg#1\ta caf\xe9 scene in latin-1\n"  # not UTF-8: dropped
             b"a.jpg#2\t \t  \n"  # whitespace only: dropped
             b"b.jpg#0\t\xff\xfe\n"  # b's only caption is not UTF-8: image dropped
             b"c.jpg#0\t" + long_caption.encode() + b"\n")
    (tmp_path / "results.token").write_bytes(token)
    captions, _ = flickr8k.read_token_file(tmp_path / "results.token")
    items = [source_api.Item(n, str(folder / n), tuple(captions[n])) for n in ("a.jpg", "b.jpg", "c.jpg")]
    manifest = writer.write_dataset(tmp_path / "out", {"train": items}, source="unit", min_word_count=1,
                                    progress=False, verbose=True)
    skipped = _reasons(manifest, "skipped")
    assert skipped == {"bad_encoding": ["a.jpg#1", "b.jpg#0"], "empty_caption": ["a.jpg#2"],
                       "no_captions": ["b.jpg"]}
    printed = capsys.readouterr().out
    assert "bad_encoding: 2" in printed and "a.jpg#1, b.jpg#0" in printed

    loaded = manifest_lib.load(str(tmp_path / "out"))
    got = {r["image_id"].numpy().decode(): [c.decode() for c in r["captions"].numpy()]
           for r in tf.data.TFRecordDataset(loaded.files("train")).map(records.parse_example)}
    assert got == {"a.jpg": ["a café scene"], "c.jpg": [long_caption]}  # the long caption kept raw
    assert manifest["max_caption_words"] == 500

    # Training cuts it to data.max_caption_length tokens: <start> + 31 words, no <end>.
    vocab = vocab_lib.Vocabulary.load(loaded.vocab_path)
    ids = pipeline.caption_ids(tf.constant([long_caption]), vocab.lookup_table(), loaded.tokenizer,
                               num_captions=1, caption_length=32).numpy()
    assert ids.shape == (1, 32)
    assert ids[0, 0] == vocab_lib.START_ID and vocab_lib.END_ID not in ids[0]
    assert (ids[0, 1:] == vocab.word_to_id("word")).all()


def test_jsonl_with_invalid_utf8_bytes_keeps_the_rest(tmp_path):
    (tmp_path / "a.jpg").write_bytes(_encode(Image.fromarray(_pixels()), "JPEG"))
    (tmp_path / "d.jsonl").write_bytes(b'{"image": "a.jpg", "caption": "a good caption"}\n'
                                       b'{"image": "a.jpg", "caption": "bad \xff byte"}\n')
    manifest = jsonl_csv.convert_records(tmp_path / "d.jsonl", "jsonl", tmp_path / "out", min_word_count=1,
                                         val_fraction=0, test_fraction=0, progress=False, verbose=False)
    assert _reasons(manifest, "skipped") == {"bad_encoding": ["a.jpg#1"]}
    assert manifest["splits"]["train"]["num_captions"] == 1


def test_summary_lists_reasons_with_first_files(tmp_path):
    files = {f"t{i}.bmp": _encode(Image.fromarray(_pixels(seed=i)), "BMP") for i in range(7)}
    files["empty.jpg"] = b""
    manifest, _ = _convert(tmp_path, files)
    text = report.format_summary(manifest, tmp_path / "out")
    assert "Re-encoded:\n  format: 7 (" in text
    assert "t0.bmp, t1.bmp, t2.bmp, t3.bmp, t4.bmp, ..." in text  # first NUM_EXAMPLES names
    assert "empty_file: 1" in text and "empty.jpg" in text
    assert len(manifest["reencoded"]["format"]["examples"]) == report.NUM_EXAMPLES
