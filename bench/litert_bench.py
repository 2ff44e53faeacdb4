"""Benchmark (not a test): a run's LiteRT package (float32, float16, int8) side by side with its SavedModel.

    python bench/litert_bench.py --run-dir RUN --images DATA/raw --out DIR [--reps 5] [--timed 20] [--json out.json]

Exports RUN twice into DIR (new versions, never overwriting): the SavedModel
(`python -m export`, without warmup records) and the LiteRT package with the
three variants (`python -m export --format litert`). Then, in this one process:

* sizes: each variant's model files, and the SavedModel's files;
* latency per image, batch 1, encoder + search (the image already decoded to
  S x S pixels; no JPEG decoding timed): the SavedModel's `caption_images`,
  and per variant the package's one-model search (`search.tflite`, one
  LiteRT call) and its runner's numpy search over `decode_step.tflite`
  (`--search steps`, what an app driving the step model does). Calls are
  interleaved image by image (SavedModel, then each LiteRT way, then the next
  image), `--reps` passes over `--timed` images; the median is reported;
* agreement on the test images (DATA/raw/Flickr_8k.testImages.txt, all of them):
  the share of images whose best caption is identical to the SavedModel's
  `serving_default` on the file's bytes, and, to separate the conversion from
  the decoding, to `caption_images` on the very pixels the runner decoded; and
  what decoding JPEGs with Pillow's accurate IDCT instead of TensorFlow's fast
  one (export/jpeg_fast.py) would cost in agreement, and each decoder's time.

LiteRT runs with `--threads` CPU threads (default 2, the cores TensorFlow uses
here). The load average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from export import litert, litert_runner, saved_model  # noqa: E402


def _size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def _test_images(images_dir: str, limit: int | None) -> list[str]:
    listing = os.path.join(images_dir, "Flickr_8k.testImages.txt")
    with open(listing, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    return [os.path.join(images_dir, "images", n) for n in names][:limit]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", required=True)
    p.add_argument("--checkpoint", default=None, help="default: the run's latest")
    p.add_argument("--images", required=True, help="a Flickr8k-layout raw dir: Flickr_8k.testImages.txt, images/")
    p.add_argument("--out", default=None, help="where the exports go (default: a temporary dir)")
    p.add_argument("--reps", type=int, default=5, help="timed passes over the --timed images")
    p.add_argument("--timed", type=int, default=20, help="images in the latency passes")
    p.add_argument("--limit", type=int, default=None, help="agreement on the first N test images only")
    p.add_argument("--threads", type=int, default=2, help="LiteRT interpreter threads")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    out = args.out or tempfile.mkdtemp(prefix="litert_bench_")
    print(f"load average before: {os.getloadavg()}")

    started = time.perf_counter()
    sm_path = saved_model.export(args.run_dir, out, warmup=False, checkpoint=args.checkpoint)
    sm_seconds = time.perf_counter() - started
    started = time.perf_counter()
    package = litert.export(args.run_dir, out, variants=litert.VARIANTS, checkpoint=args.checkpoint)
    litert_seconds = time.perf_counter() - started
    print(f"exported {sm_path} ({sm_seconds:.0f} s) and {package} ({litert_seconds:.0f} s, 3 variants)")

    loaded = tf.saved_model.load(sm_path)
    serving, pixels_fn = loaded.signatures["serving_default"], loaded.signatures["caption_images"]
    captioners = {v: litert_runner.LiteRTCaptioner(package, v, args.threads) for v in litert.VARIANTS}
    described = captioners["float32"].described
    has_search = "search" in described["variants"]["float32"]

    files = _test_images(args.images, args.limit)
    reader = captioners["float32"]
    pixels = [reader.pixels(f) for f in files]  # [S, S, 3] float32, Pillow-decoded (the runner's)

    # Sizes.
    sizes = {v: {role: entry["bytes"] for role, entry in described["variants"][v].items()} for v in litert.VARIANTS}
    sizes["saved_model"] = {"total": _size(sm_path)}

    # Latency, interleaved image by image.
    ways = [("saved_model", None, None)] + [(f"{v} {how}", v, how == "search model")
                                            for v in litert.VARIANTS
                                            for how in (["search model"] if has_search else []) + ["steps"]]
    times = {name: [] for name, _, _ in ways}
    timed = pixels[:args.timed]
    for name, variant, model in ways:  # one untimed call each: first-call costs are not per image
        if variant is None:
            pixels_fn(images=tf.constant(timed[0][None]))
        else:
            captioners[variant].search(timed[0], None, model)
    for _ in range(args.reps):
        for image in timed:
            for name, variant, model in ways:
                started = time.perf_counter()
                if variant is None:
                    pixels_fn(images=tf.constant(image[None]))["captions"].numpy()
                else:
                    captioners[variant].search(image, None, model)["ids"]
                times[name].append(time.perf_counter() - started)
    latency = {name: statistics.median(t) * 1000 for name, t in times.items()}

    # Agreement on every test image: best captions.
    def best(captions) -> list[str]:
        return [c.decode() for c in captions[:, 0].numpy()]

    reference_bytes, reference_pixels = [], []
    for start in range(0, len(files), 50):
        chunk = files[start:start + 50]
        data = [open(f, "rb").read() for f in chunk]
        reference_bytes += best(serving(image_bytes=tf.constant(data))["captions"])
        reference_pixels += best(pixels_fn(images=tf.constant(np.stack(pixels[start:start + 50])))["captions"])
    agreement = {}
    for name, variant, model in ways[1:]:
        captioner = captioners[variant]
        ours = [litert_runner.ids_to_text(captioner.search(image, None, model)["ids"][0, 0], captioner.tokens)
                for image in pixels]
        agreement[name] = {
            "same_as_serving_default": sum(a == b for a, b in zip(ours, reference_bytes)) / len(files),
            "same_as_caption_images_on_the_same_pixels": sum(a == b for a, b in zip(ours, reference_pixels)) / len(files),
        }
    decode_same = sum(a == b for a, b in zip(reference_bytes, reference_pixels)) / len(files)
    # What decoding JPEGs with Pillow (its accurate IDCT) instead of jpeg_fast.py would cost in agreement.
    pillow = litert_runner.LiteRTCaptioner(package, "float32", args.threads, jpeg_idct="accurate")
    pillow_same = sum(litert_runner.ids_to_text(pillow.search(pillow.pixels(f))["ids"][0, 0], pillow.tokens) == b
                      for f, b in zip(files, reference_bytes)) / len(files)
    decode_ms = {}
    for name, idct in (("jpeg_fast", "fast"), ("pillow", "accurate")):
        spent = []
        for f in files[:args.timed] * args.reps:
            started = time.perf_counter()
            litert_runner.read_image(f, described["max_image_pixels"], idct)
            spent.append(time.perf_counter() - started)
        decode_ms[name] = statistics.median(spent) * 1000
    load_after = os.getloadavg()
    print(f"load average after: {load_after}")

    print(f"\n{len(files)} test images; latency: median of {args.reps} x {len(timed)} interleaved calls, batch 1, "
          f"LiteRT threads {args.threads}; search: {described['decode']}")
    print("| variant | encoder + step (+ search model) bytes | way | ms / image | vs SavedModel | same best caption as "
          "serving_default (bytes) | same as caption_images (same pixels) |")
    print("|---|---|---|---|---|---|---|")
    print(f"| SavedModel | {sizes['saved_model']['total']:,} (whole dir) | caption_images | "
          f"{latency['saved_model']:.1f} | 1.00x | - | caption_images on the runner's pixels vs serving_default: "
          f"{decode_same:.1%} |")
    for name, variant, model in ways[1:]:
        s = sizes[variant]
        files_bytes = f"{s['encoder']:,} + {s['decode_step']:,}" + (f" (+ {s['search']:,})" if "search" in s else "")
        a = agreement[name]
        print(f"| {variant} | {files_bytes} | {'search model' if model else 'numpy steps'} | {latency[name]:.1f} | "
              f"{latency[name] / latency['saved_model']:.2f}x | {a['same_as_serving_default']:.1%} | "
              f"{a['same_as_caption_images_on_the_same_pixels']:.1%} |")
    print(f"\nfloat32, the runner decoding JPEGs with Pillow (--jpeg-idct accurate): {pillow_same:.1%} the same best "
          f"caption as serving_default. JPEG decoding, median ms per image: jpeg_fast {decode_ms['jpeg_fast']:.1f}, "
          f"Pillow {decode_ms['pillow']:.1f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"sizes": sizes, "latency_ms": latency, "agreement": agreement, "decode_same": decode_same,
                       "images": len(files), "pillow_same": pillow_same,
                       "decode_ms": decode_ms, "saved_model": sm_path, "package": package,
                       "load_after": load_after, "settings": described["decode"]}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
