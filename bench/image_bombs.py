"""Benchmark (not a test): decompression bombs sent to `serving_default`, peak memory and time.

    python bench/image_bombs.py [--export DIR] [--batch 8] [--json out.json]

Exports an untrained `tiny` run dir (or uses `--export`), writes the bombs
(tests/image_bombs.py: a PNG that declares 20000 x 20000 pixels in ~50 KB, a
GIF of 500 frames of 2000 x 2000 in ~2 MB) and, each in a fresh process,
sends `serving_default` one batch of `--batch` copies of each bomb plus two
good images, and prints the call's peak RSS growth (VmHWM after a reset),
its seconds and `valid`. Bombs must come back within a second and 200 MB:
the PNGs with valid=false (never decoded), the GIFs with their first frame
captioned (the other 499 never decoded).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_export(work: str) -> str:
    """An untrained `tiny` run dir (random weights), exported."""
    import tensorflow as tf

    from caption_app import config as config_lib
    from caption_app.runs import checkpoints as checkpoints_lib
    from caption_app.runs import layout as run_layout
    from caption_app.data.manifest import Manifest
    from caption_app.data.pipeline import TensorSizes
    from caption_app.data.vocabulary import TokenizerSettings, Vocabulary
    from caption_app.model import show_and_tell
    from export import saved_model

    config = config_lib.get_preset("tiny")
    run_dir, data_dir = os.path.join(work, "run"), os.path.join(work, "data")
    os.makedirs(data_dir)
    words = [f"w{i}" for i in range(20)]
    vocab = Vocabulary(words, list(range(len(words) + 4, 4, -1)))
    vocab.save(os.path.join(data_dir, "vocab.txt"))
    raw = {"format_version": 1, "vocab_size": vocab.size, "splits": {}, "note": "benchmark: no data"}
    manifest = Manifest(data_dir=data_dir, splits={}, tokenizer=TokenizerSettings(), vocab_size=vocab.size,
                        vocab_file="vocab.txt", max_caption_words=8, max_captions_per_image=5, raw=raw)
    sizes = TensorSizes(image_size=config.data.image_size, num_captions=5, caption_length=10)
    run_layout.prepare(run_dir, config, manifest, vocab, sizes)
    model = show_and_tell.build_model(config, vocab.size, backbone_weights="none")
    tf.train.CheckpointManager(tf.train.Checkpoint(model=model), checkpoints_lib.checkpoint_dir(run_dir),
                               max_to_keep=1).save()
    return saved_model.export(run_dir, os.path.join(work, "models"), warmup=False)


def probe(export_dir: str, files: list[str], good: int) -> dict:
    """tests/image_bombs.py in a fresh process: one serving_default call on `files`."""
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tests", "image_bombs.py"), export_dir, *files,
                           "--good", str(good)], capture_output=True, text=True, timeout=1800,
                          env=dict(os.environ, PYTHONPATH=REPO))
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}",
                "returncode": proc.returncode}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    from tests import image_bombs

    p = argparse.ArgumentParser()
    p.add_argument("--export", default=None, help="an export's version dir (default: export an untrained tiny run)")
    p.add_argument("--batch", type=int, default=8, help="copies of each bomb in the call")
    p.add_argument("--png-side", type=int, default=20000, help="the PNG bomb's declared width and height")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()

    from bench.export_bench import uptime

    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs; load before: {uptime()}")
    work = tempfile.mkdtemp(prefix="image_bombs_")
    export_dir = args.export or tiny_export(work)
    bombs = {f"png_{args.png_side}x{args.png_side}": image_bombs.png_bomb(args.png_side),
             "gif_500x2000x2000": image_bombs.gif_animation(500, 2000)}
    good_files = []
    for name, data in (("good.png", image_bombs.png_bomb(64)), ("one_frame.gif", image_bombs.gif_animation(1, 64))):
        good_files.append(os.path.join(work, name))
        with open(good_files[-1], "wb") as f:
            f.write(data)
    results = {}
    for name, data in bombs.items():
        path = os.path.join(work, name)
        with open(path, "wb") as f:
            f.write(data)
        report = probe(export_dir, [path] * args.batch + good_files, good=len(good_files))
        report.pop("captions", None)
        report.pop("captions_alone", None)
        results[name] = {"bytes": len(data), **report}
        print(f"{name}: {len(data) / 1e6:.2f} MB x {args.batch} + 2 good -> "
              + (report["error"] if "error" in report else
                 f"peak RSS +{report['peak_rss_growth_mb']:.0f} MB, {report['seconds']:.2f} s, "
                 f"valid {report['valid']}"))
    print(f"load after: {uptime()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
