"""Hostile input to serving and captioning: bounded memory for any bytes, every failure in plain words.

Decompression bombs (a PNG that declares 20000 x 20000 pixels in ~50 KB, a
GIF of 500 frames of 2000 x 2000) are refused or cut down before decoding
(caption_app/data/image_bytes.py); the export loads and serves the same way
from C++ (tensorflow::LoadSavedModel, what TF Serving is built on); the
`caption` command reports a missing path, an empty folder, a symlink loop or
an undecodable file per file and still captions the rest.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from caption_app.__main__ import main as cli_main
from caption_app.data import image_bytes
from caption_app.data.pipeline import decode_image
from export import saved_model
from tests import image_bombs
from tests.conftest import cli_env, encode_image, run_cli

IMAGE_SIZE = 32


def _pixels(height: int, width: int, seed: int) -> np.ndarray:
    """Blocky random colours, [h, w, 3] uint8."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.kron(blocks, np.ones((height // 4 + 1, width // 4 + 1, 1), np.uint8))[:height, :width]


def _animated_gif(frames: list[np.ndarray]) -> bytes:
    images = [Image.fromarray(f).convert("P") for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, "GIF", save_all=True, append_images=images[1:], duration=40, loop=0)
    return buf.getvalue()


def _decoded(data: list[bytes], max_pixels: int) -> list[int]:
    """The rows of `data` that image_bytes.decode_images decodes."""
    _, index = image_bytes.decode_images(tf.constant(data), IMAGE_SIZE, max_pixels)
    return index.numpy().tolist()


# ----------------------------------------------------------------------------- the header reader


@pytest.mark.parametrize("fmt, code", [("JPEG", image_bytes.JPEG), ("PNG", image_bytes.PNG),
                                       ("GIF", image_bytes.GIF), ("BMP", image_bytes.BMP)])
def test_declared_size_reads_each_format_without_decoding(fmt, code):
    data = encode_image(_pixels(37, 53, seed=1), fmt)
    found = [int(t) for t in image_bytes.declared_size(tf.constant(data))]
    assert found == [code, 37, 53]
    # The same inside a graph function (serving runs it in a tf.data map function).
    graph = tf.function(image_bytes.declared_size, input_signature=[tf.TensorSpec([], tf.string)])
    assert [int(t) for t in graph(tf.constant(data))] == found


def test_declared_size_of_a_top_down_bmp_and_of_unknown_bytes():
    bmp = bytearray(encode_image(_pixels(6, 9, seed=2), "BMP"))
    bmp[22:26] = struct.pack("<i", -6)  # a negative height: rows stored top-down
    assert [int(t) for t in image_bytes.declared_size(tf.constant(bytes(bmp)))] == [image_bytes.BMP, 6, 9]
    for data in (b"", b"GET / HTTP/1.1\r\n\r\n", b"RIFF\0\0\0\0WEBPVP8 "):
        assert [int(t) for t in image_bytes.declared_size(tf.constant(data))] == [image_bytes.UNKNOWN, -1, -1]


def test_the_pixel_limit_is_checked_before_decoding():
    small, large = encode_image(_pixels(20, 30, seed=3), "PNG"), encode_image(_pixels(40, 30, seed=4), "PNG")
    assert _decoded([small, large], max_pixels=600) == [0]  # 600 pixels and 1200
    assert _decoded([small, large], max_pixels=1200) == [0, 1]
    # Width x height never overflows: 2**32 - 1 on each side.
    huge = bytearray(image_bombs.png_bomb(8))
    huge[16:24] = struct.pack(">II", 2 ** 32 - 1, 2 ** 32 - 1)
    assert not image_bytes.within_limit(tf.constant(2 ** 32 - 1, tf.int64), tf.constant(2 ** 32 - 1, tf.int64),
                                        2 ** 62)
    assert _decoded([bytes(huge), small], max_pixels=2 ** 62) == [1]


def test_formats_other_than_jpeg_png_gif_bmp_are_not_decoded():
    pixels = _pixels(16, 16, seed=5)
    webp = encode_image(pixels, "WEBP")
    assert decode_image(tf.constant(webp), IMAGE_SIZE).shape == (IMAGE_SIZE, IMAGE_SIZE, 3)  # TensorFlow decodes it
    assert _decoded([webp, encode_image(pixels, "PNG")], image_bytes.DEFAULT_MAX_IMAGE_PIXELS) == [1]


# ----------------------------------------------------------------------------- animated GIFs


def test_only_the_first_gif_frame_is_decoded():
    frames = [_pixels(24, 40, seed=s) for s in range(4)]
    gif = _animated_gif(frames)
    cut, height, width = image_bytes.first_gif_frame(tf.constant(gif))
    assert (int(height), int(width)) == (24, 40)
    assert tf.io.decode_gif(gif).shape[0] == 4
    assert tf.io.decode_gif(cut).shape[0] == 1  # one frame left to decode
    # Its pixels are the first frame's, as the pipeline's decode of the whole GIF gives them.
    images, index = image_bytes.decode_images(tf.constant([gif]), IMAGE_SIZE)
    assert index.numpy().tolist() == [0]
    np.testing.assert_array_equal(images[0].numpy(), decode_image(tf.constant(gif), IMAGE_SIZE).numpy())


def _first_image(gif: bytes) -> tuple[int, int]:
    """(offset of the first image descriptor, offset of its LZW data's first sub-block)."""
    def table(packed):
        return 3 << ((packed & 7) + 1) if packed & 0x80 else 0

    pos = 13 + table(gif[10])
    while gif[pos] == 0x21:
        pos += 2
        while gif[pos]:
            pos += gif[pos] + 1
        pos += 1
    assert gif[pos] == 0x2C
    return pos, pos + 10 + table(gif[pos + 9]) + 1


def test_broken_gifs_are_refused():
    gif = _animated_gif([_pixels(24, 40, seed=s) for s in range(2)])
    first_image, first_block = _first_image(gif)
    # A first frame larger than the limit behind a small logical screen.
    big_frame = bytearray(gif)
    big_frame[first_image + 5:first_image + 9] = struct.pack("<HH", 3000, 3000)
    # A first frame cut off inside its data.
    truncated = gif[:first_block + 5]
    # A first frame in sub-blocks of alternating sizes (1, 2, 1, ...), more of them than the walk takes.
    fragmented = gif[:first_block] + b"\x01\x00\x02\x00\x00" * image_bytes.MAX_GIF_STEPS + b"\x00\x3b"
    good = encode_image(_pixels(8, 8, seed=6), "GIF")
    assert _decoded([bytes(big_frame), truncated, fragmented, good], max_pixels=1_000_000) == [3]
    walk = tf.function(image_bytes.first_gif_frame, input_signature=[tf.TensorSpec([], tf.string)])
    assert walk(tf.constant(fragmented))[1].numpy() == -1


# ----------------------------------------------------------------------------- the export


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory) -> str:
    return saved_model.export(trained_run.run_dir, str(tmp_path_factory.mktemp("hostile_export")), warmup=False)


def _test_jpeg(trained_run) -> bytes:
    raw = Path(trained_run.data_dir) / "raw" / "images"
    return sorted(raw.glob("*test*.jpg"))[0].read_bytes()


@pytest.mark.slow
def test_a_batch_of_bombs_stays_within_memory(exported, trained_run, tmp_path):
    """4 PNGs of 20000 x 20000 and 4 GIFs of 500 frames of 2000 x 2000 in one call, with 2 good images.

    Before: one such PNG took the serving process from 0.74 to 6.8 GB, one such GIF added 1.9 GB.
    """
    files = []
    bombs = {"png": image_bombs.png_bomb(20000), "gif": image_bombs.gif_animation(500, 2000)}
    for i in range(8):
        kind = "png" if i % 2 == 0 else "gif"
        files.append(tmp_path / f"bomb{i}.{kind}")
        files[-1].write_bytes(bombs[kind])
    # Good ones: a JPEG, and the animation's first frame as a GIF of its own.
    files.append(tmp_path / "good.jpg")
    files[-1].write_bytes(_test_jpeg(trained_run))
    files.append(tmp_path / "one_frame.gif")
    files[-1].write_bytes(image_bombs.gif_animation(1, 2000))
    proc = subprocess.run([sys.executable, image_bombs.__file__, exported, *map(str, files), "--good", "2"],
                          capture_output=True, text=True, timeout=300, env=cli_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    if not report["peak_was_reset"]:
        pytest.skip("this kernel does not let a process reset its peak RSS (/proc/self/clear_refs)")
    # The PNGs declare 400 megapixels: refused unread. The GIFs are 4 megapixels: their first
    # frame is captioned, the other 499 are never decoded.
    assert report["valid"] == [False, True] * 4 + [True, True]
    assert report["peak_rss_growth_mb"] < 200, report
    assert all(c == [""] * len(c) for c in report["captions"][0:8:2])
    assert report["captions"][8:] == report["captions_alone"]
    assert all(c == report["captions_alone"][1] for c in report["captions"][1:8:2])


@pytest.mark.slow
def test_the_limit_is_an_export_option(trained_run, tmp_path):
    proc = run_cli("export", "--run-dir", trained_run.run_dir, "--out", str(tmp_path), "--no-warmup",
                   "--max-image-pixels", "1500")
    assert proc.returncode == 0, proc.stderr[-2000:]
    version = tmp_path / "caption" / "1"
    assert json.loads((version / "assets" / "config.json").read_text())["max_image_pixels"] == 1500
    serve = tf.saved_model.load(str(version)).signatures["serving_default"]
    batch = [encode_image(_pixels(31, 50, seed=7), "PNG"), encode_image(_pixels(30, 40, seed=8), "JPEG")]
    assert serve(image_bytes=tf.constant(batch))["valid"].numpy().tolist() == [False, True]  # 1550 / 1200 px
    proc = run_cli("export", "--run-dir", trained_run.run_dir, "--out", str(tmp_path), "--max-image-pixels", "0")
    assert proc.returncode == 2 and "--max-image-pixels must be a positive integer" in proc.stderr
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- the caption command


def test_caption_reports_each_failure_and_captions_the_rest(trained_run, tmp_path, capsys):
    good = tmp_path / "good.jpg"
    good.write_bytes(_test_jpeg(trained_run))
    empty = tmp_path / "empty"
    empty.mkdir()
    loop = tmp_path / "loop.jpg"
    os.symlink(loop, loop)
    broken = tmp_path / "broken.png"
    broken.write_bytes(encode_image(_pixels(30, 30, seed=10), "PNG")[:60])  # cut inside its pixel data
    text = tmp_path / "notes.jpg"
    text.write_text("a text file with an image extension")
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(image_bombs.png_bomb(2000))
    missing = tmp_path / "missing.jpg"
    huge = tmp_path / "huge.jpg"  # 2 GB, sparse: refused after a stat, never read into memory
    with open(huge, "wb") as f:
        f.truncate(2 << 30)
    paths = [good, missing, empty, loop, broken, text, fifo, bomb, huge, good]
    args = ["caption", "--run-dir", trained_run.run_dir, "--json", "--beam-size", "2",
            "--max-image-pixels", "1000000"]
    assert cli_main(args + [str(p) for p in paths]) == 1
    captured = capsys.readouterr()
    results = json.loads(captured.out)
    assert [r["image"] for r in results] == [str(p) for p in paths]
    errors = {Path(r["image"]).name: r.get("error") for r in results}
    assert errors == {
        "good.jpg": None,
        "missing.jpg": "no such file or folder",
        "empty": "no images in this folder (looked for .jpg, .jpeg, .png, .gif, .bmp)",
        "loop.jpg": "cannot read: a symlink loop",
        "broken.png": "cannot caption: a damaged or truncated PNG image (it does not decode)",
        "notes.jpg": "cannot caption: not a JPEG, PNG, GIF or BMP image",
        "pipe.jpg": "cannot read: not a regular file",
        "bomb.png": "cannot caption: its PNG header declares 2000x2000 pixels, more than the limit of 1000000 "
                    "(--max-image-pixels); not decoded",
        "huge.jpg": f"cannot read: the file has {2 << 30} bytes, more than the limit of {64 << 20} "
                    "(--max-file-bytes); not read",
    }
    assert results[0]["captions"] == results[-1]["captions"] and len(results[0]["captions"]) == 2
    assert "function_node" not in captured.out + captured.err
    assert "8 of 10 failed; 2 captioned" in captured.err
    # --max-file-bytes lowers the limit; a name with a newline stays on one line of the text output.
    odd = tmp_path / "two\nlines.jpg"
    shutil.copy(good, odd)
    assert cli_main(["caption", "--run-dir", trained_run.run_dir, "--max-file-bytes", "100", str(odd)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str(odd).replace("\n", "\\n") and out[1].startswith("  error: cannot read: the file has")
    assert len(out) == 2


def test_caption_with_nothing_to_caption_fails(trained_run, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli_main(["caption", "--run-dir", trained_run.run_dir, str(empty), str(tmp_path / "none*.png")]) == 1
    captured = capsys.readouterr()
    assert f"{empty}\n  error: no images in this folder" in captured.out
    assert "none*.png\n  error: no file matches this pattern" in captured.out
    assert "2 of 2 failed; nothing was captioned" in captured.err


@pytest.mark.slow
def test_caption_cli_process_reports_a_missing_path_and_goes_on(trained_run, tmp_path):
    good = tmp_path / "good.jpg"
    good.write_bytes(_test_jpeg(trained_run))
    proc = run_cli("caption_app", "caption", "--run-dir", trained_run.run_dir, str(tmp_path / "nope.jpg"),
                   str(good))
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"{tmp_path / 'nope.jpg'}\n  error: no such file or folder" in proc.stdout
    assert f"{good}\n  1. " in proc.stdout
    assert "Traceback" not in proc.stderr and "function_node" not in proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- the C++ loader

CPP_SOURCE = Path(__file__).parent / "cpp" / "serve_saved_model.cc"


@pytest.fixture(scope="session")
def cpp_client(tmp_path_factory) -> str:
    """tests/cpp/serve_saved_model.cc built against the installed TensorFlow wheel (once per session)."""
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ is not installed (make gxx installs it)")
    package = Path(tf.__file__).parent
    if not (package / "include" / "tensorflow" / "cc" / "saved_model" / "loader.h").exists():
        pytest.skip(f"the TensorFlow wheel at {package} has no C++ headers")
    binary = tmp_path_factory.mktemp("cpp") / "serve_saved_model"
    command = [gxx, "-std=c++17", "-w", "-O0", "-D_GLIBCXX_USE_CXX11_ABI=1", "-DEIGEN_MAX_ALIGN_BYTES=64",
               f"-I{package / 'include'}", str(CPP_SOURCE), "-o", str(binary), f"-L{package}",
               f"-Wl,-rpath,{package}", "-Wl,--no-as-needed", "-l:libtensorflow_cc.so.2",
               "-l:libtensorflow_framework.so.2"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return str(binary)


@pytest.mark.slow
def test_the_cpp_loader_serves_the_export_as_python_does(cpp_client, exported, trained_run, tmp_path):
    """tensorflow::LoadSavedModel (TF Serving's loader) + serving_default by tensor names, on good and bad bytes."""
    files = {
        "good.jpg": _test_jpeg(trained_run),
        "good.png": encode_image(_pixels(36, 52, seed=9), "PNG"),
        "animated.gif": _animated_gif([_pixels(24, 40, seed=s) for s in range(3)]),
        "bomb.png": image_bombs.png_bomb(20000),
        "junk.jpg": b"GET / HTTP/1.1\r\n\r\n",
        "empty.png": b"",
    }
    paths = []
    for name, data in files.items():
        paths.append(tmp_path / name)
        paths[-1].write_bytes(data)
    proc = subprocess.run([cpp_client, exported, *map(str, paths)], capture_output=True, text=True, timeout=300,
                          env=cli_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    from_cpp = json.loads(proc.stdout.strip().splitlines()[-1])
    python = tf.saved_model.load(exported).signatures["serving_default"](image_bytes=tf.constant(list(files.values())))
    assert from_cpp["valid"] == python["valid"].numpy().tolist() == [True, True, True, False, False, False]
    assert from_cpp["captions"] == python["captions"].numpy().astype(str).tolist()
    log_probs = np.array([[np.nan if v is None else v for v in row] for row in from_cpp["log_probs"]], float)
    expected = python["log_probs"].numpy()
    np.testing.assert_allclose(log_probs[:3], expected[:3], atol=1e-5)
    assert np.isnan(log_probs[3:]).all() and np.isneginf(expected[3:]).all()  # -inf, written as null
