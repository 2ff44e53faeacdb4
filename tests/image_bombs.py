"""Decompression bombs, written small and fast, and a peak-memory probe of `serving_default`.

    png_bomb(side)                 a PNG that declares side x side pixels (1-bit grey, all black):
                                   20000 px is 400 megapixels in ~50 KB
    gif_animation(frames, side)    `frames` identical side x side frames (PIL encodes one, it is repeated):
                                   500 x 2000 px is ~2 MB

Run as a script in a fresh interpreter (the hostile-serving test and bench/image_bombs.py do):

    python tests/image_bombs.py EXPORT_DIR FILE... [--good N]

it loads the export, answers one call on the last N files alone (warm-up, and the captions
alone), resets the peak RSS (VmHWM, via /proc/self/clear_refs), makes one `serving_default`
call on all the files and prints one JSON line: the peak RSS growth of that call, its seconds,
`valid` and the captions.
"""

from __future__ import annotations

import io
import json
import struct
import sys
import time
import zlib

ROW_CHUNK = 1000  # PNG rows compressed at a time


def png_bomb(side: int) -> bytes:
    """A valid PNG of side x side 1-bit grey pixels, all 0, compressed chunk by chunk (no big buffer)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\0" * (1 + (side + 7) // 8)  # filter byte 0 + the packed bits
    compressor = zlib.compressobj(9)
    parts = []
    for start in range(0, side, ROW_CHUNK):
        parts.append(compressor.compress(row * min(ROW_CHUNK, side - start)))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # width, height, depth 1, grey
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def gif_animation(frames: int, side: int) -> bytes:
    """A GIF of `frames` identical side x side frames (each a full-canvas image, LZW-compressed by PIL)."""
    from PIL import Image

    image = Image.new("P", (side, side), 0)
    image.putpalette([0, 0, 0, 255, 255, 255])
    buf = io.BytesIO()
    image.save(buf, "GIF")
    data = buf.getvalue()
    packed = data[10]
    pos = 13 + (3 << ((packed & 7) + 1) if packed & 0x80 else 0)  # after the global colour table
    head = data[:pos]
    while data[pos] == 0x21:  # extensions: introducer, label, sub-blocks, terminator
        pos += 2
        while data[pos]:
            pos += data[pos] + 1
        pos += 1
    assert data[pos] == 0x2C and data[-1] == 0x3B, "PIL wrote an unexpected GIF layout"
    return head + data[pos:-1] * frames + b"\x3b"


def peak_rss_kb() -> int:
    """VmHWM of this process in kB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_peak_rss() -> bool:
    """Sets VmHWM back to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def main(argv: list[str]) -> None:
    import tensorflow as tf

    good = 0
    if "--good" in argv:
        i = argv.index("--good")
        good = int(argv[i + 1])
        argv = argv[:i] + argv[i + 2:]
    path, files = argv[0], argv[1:]
    data = []
    for name in files:
        with open(name, "rb") as f:
            data.append(f.read())
    serve = tf.saved_model.load(path).signatures["serving_default"]
    alone = serve(image_bytes=tf.constant(data[len(data) - good:] if good else [data[0][:0]]))
    rss_before = peak_rss_kb()
    reset = reset_peak_rss()
    baseline = peak_rss_kb()
    began = time.perf_counter()
    out = serve(image_bytes=tf.constant(data))
    seconds = time.perf_counter() - began
    peak = peak_rss_kb()
    print(json.dumps({
        "peak_rss_growth_mb": (peak - baseline) / 1024, "rss_before_mb": rss_before / 1024,
        "peak_rss_mb": peak / 1024, "peak_was_reset": reset, "seconds": seconds,
        "valid": out["valid"].numpy().tolist(), "captions": out["captions"].numpy().astype(str).tolist(),
        "captions_alone": alone["captions"].numpy().astype(str).tolist() if good else []}))


if __name__ == "__main__":
    main(sys.argv[1:])
