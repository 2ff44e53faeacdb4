"""The benchmark suite (not tests): ratios measured side by side in one process.

    make bench            # or: python bench/suite.py [--quick] [--backbone B --image-size S --batch N]

Rows (every pair is timed interleaved, A B A B ..., median per step):
  train step     XLA vs no XLA; fine-tuning vs frozen backbone; a step of the feature
                 cache's head (caption_app.training.feature_cache.build_head) on backbone features vs
                 the in-step frozen backbone
  input pipeline images/s of decode + resize + tokenize (caption_app.data.pipeline
                 on the Flickr8k subset in ../shared, converted with
                 `python -m tfrecords_tools flickr8k` into a temp dir) vs the
                 images/s the train step consumes
  inference      im2txt's per-image Python loop (bench/python_beam_search.py) vs the
                 in-graph batched beam search over the same step function, batch 1 and 32:
                 encode + search, and the search alone
  memory         peak RSS (ru_maxrss) of a few training steps of InceptionV3 at 299x299,
                 batch 32, frozen and fine-tuning, each in a fresh subprocess
  length buckets decoder positions per real target token on the Flickr8k subset's train
                 captions, one length vs buckets; the `shapes` preset's seconds per epoch,
                 one length vs buckets (bench/length_buckets.py; the feature cache's frozen-phase
                 epoch with buckets: bench/feature_cache.py)

The machine, TensorFlow version and `os.getloadavg()` around each row are
printed: on a shared machine compare only ratios of one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHARED_FLICKR8K = REPO.parent / "shared" / "data" / "flickr8k_1k"


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


@dataclasses.dataclass
class Row:
    section: str
    what: str
    a: str  # "label value unit"
    b: str
    ratio: float | None
    note: str = ""
    load: str = ""


def _interleaved(fns: dict, *, rounds: int, steps: int) -> dict[str, float]:
    """Seconds per call of each fn: compile/warm up each, then rounds of `steps` calls, A B A B ..."""
    for fn in fns.values():
        fn()
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            began = time.perf_counter()
            for _ in range(steps):
                fn()
            samples[name].append((time.perf_counter() - began) / steps)
    return {name: statistics.median(v) for name, v in samples.items()}


def _config(args, **train):
    from caption_app import config as config_lib

    return config_lib.override(config_lib.get_preset("im2txt"), [
        f"model.backbone={args.backbone}", "model.backbone_weights=none", f"data.image_size={args.image_size}",
        f"model.lstm_dropout={args.dropout}", "data.augment=", "data.cache=false",
        *[f"train.{k}={v}" for k, v in train.items()]])


def _batch(args, vocab_size: int, batch: int | None = None):
    import numpy as np

    rng = np.random.default_rng(0)
    b = batch or args.batch
    images = rng.uniform(0, 255, (b, args.image_size, args.image_size, 3)).astype(np.float32)
    ids = rng.integers(4, vocab_size, (b, args.captions, args.length + 1)).astype(np.int32)
    ids[:, :, 0] = 1
    return images, ids


def _fit_model(model, jit: bool, learning_rate: float = 1e-3):
    import keras

    from caption_app.training.distribute import FitModel
    from caption_app.model.loss import MaskedCrossEntropy

    fit_model = FitModel(model)
    fit_model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss=MaskedCrossEntropy(), jit_compile=jit)
    assert fit_model.jit_compile == jit
    return fit_model


def train_step_rows(args, vocab_size: int = 1000) -> tuple[list[Row], dict]:
    import keras

    from caption_app.training import feature_cache
    from caption_app.model import show_and_tell

    config = _config(args)
    keras.utils.set_random_seed(0)
    frozen = show_and_tell.build_model(config, vocab_size)
    show_and_tell.set_backbone_trainable(frozen, False)
    tuned = show_and_tell.build_model(config, vocab_size)
    images, ids = _batch(args, vocab_size)
    x, y = {"image": images, "input_ids": ids[..., :-1]}, ids[..., 1:]
    features = keras.ops.convert_to_numpy(feature_cache.backbone_extractor(frozen)(images))  # [B, F]: cached
    head = feature_cache.build_head(frozen)
    xla, plain, fine_tune, cached = (_fit_model(frozen, True), _fit_model(frozen, False),
                                     _fit_model(tuned, True), _fit_model(head, True))
    hx = {"features": features, "input_ids": ids[..., :-1]}
    load = _load()
    t = _interleaved({
        "xla": lambda: xla.train_on_batch(x, y),
        "plain": lambda: plain.train_on_batch(x, y),
        "fine_tune": lambda: fine_tune.train_on_batch(x, y),
        "cached": lambda: cached.train_on_batch(hx, y),
    }, rounds=args.rounds, steps=args.steps)
    load += " -> " + _load()
    b = args.batch
    shape = f"{args.backbone} {args.image_size}px, batch {b}x{args.captions}x{args.length}"
    cache_note = "feature_cache.build_head on in-memory features (reading the cache: bench/feature_cache.py)"
    rows = [
        Row("train step", f"XLA / no XLA (frozen backbone; {shape})", f"XLA {t['xla'] * 1e3:.0f} ms",
            f"no XLA {t['plain'] * 1e3:.0f} ms", t["xla"] / t["plain"], load=load),
        Row("train step", "fine-tuning / frozen backbone (XLA)", f"fine-tune {t['fine_tune'] * 1e3:.0f} ms",
            f"frozen {t['xla'] * 1e3:.0f} ms", t["fine_tune"] / t["xla"], load=load),
        Row("train step", "cached features / in-step frozen backbone (XLA)", f"cached {t['cached'] * 1e3:.0f} ms",
            f"in-step {t['xla'] * 1e3:.0f} ms", t["cached"] / t["xla"], cache_note, load=load),
    ]
    consumed = {"frozen": b / t["xla"], "fine_tune": b / t["fine_tune"], "cached": b / t["cached"]}
    return rows, {"model": frozen, "consumed": consumed, "vocab_size": vocab_size}


def _convert_flickr8k(out: str) -> str | None:
    if not (SHARED_FLICKR8K / "Flicker8k_Dataset").is_dir():
        return None
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-m", "tfrecords_tools", "flickr8k",
                    "--images", str(SHARED_FLICKR8K / "Flicker8k_Dataset"),
                    "--text", str(SHARED_FLICKR8K / "Flickr8k_text"), "--out", out, "--no-progress"],
                   cwd=REPO, env=env, check=True, capture_output=True, timeout=900)
    return out


def pipeline_rows(args, consumed: dict) -> list[Row]:
    from caption_app.data import manifest as manifest_lib
    from caption_app.data.pipeline import make_dataset, resolve_tensor_sizes
    from caption_app.data.vocabulary import Vocabulary

    with tempfile.TemporaryDirectory(prefix="bench_flickr8k_") as tmp:
        data = _convert_flickr8k(os.path.join(tmp, "data"))
        if data is None:
            return [Row("input pipeline", "decode+resize+tokenize", "n/a", "n/a", None,
                        f"{SHARED_FLICKR8K} not found")]
        manifest = manifest_lib.load(data)
        vocab = Vocabulary.load(manifest.vocab_path)
        rows = []
        for size in dict.fromkeys([args.image_size, 299]):
            config = _config(_with_size(args, size))
            sizes = resolve_tensor_sizes(config, manifest)
            ds = make_dataset(config, manifest, vocab, "train", training=True, batch_size=args.batch,
                              sizes=sizes).repeat()
            it = iter(ds)
            next(it)
            load = _load()
            began, images = time.perf_counter(), 0
            while images < args.pipeline_images:
                images += int(next(it)[0]["image"].shape[0])
            rate = images / (time.perf_counter() - began)
            load += " -> " + _load()
            if size == args.image_size:
                for mode in ("frozen", "fine_tune", "cached"):
                    rows.append(Row("input pipeline", f"pipeline / train step consumption ({mode}, {size}px)",
                                    f"pipeline {rate:.0f} img/s", f"step {consumed[mode]:.0f} img/s",
                                    rate / consumed[mode], "> 1: the pipeline keeps up", load))
            else:
                rows.append(Row("input pipeline", f"pipeline at {size}px (no step measured at this size)",
                                f"pipeline {rate:.0f} img/s", "-", None, "", load))
        return rows


def _with_size(args, size: int):
    return argparse.Namespace(**{**vars(args), "image_size": size})


def inference_rows(args, model) -> list[Row]:
    import tensorflow as tf

    from caption_app.inference.beam_search import beam_search
    from caption_app.data.vocabulary import END_ID, START_ID
    from caption_app.inference.settings import DecodeSettings
    from caption_app.inference.captioner import TrainedCaptioner
    from python_beam_search import python_beam_search

    captioner = TrainedCaptioner(model)
    beam, max_length = args.beam_size, args.max_length
    spec = tf.TensorSpec([None, args.image_size, args.image_size, 3], tf.float32)

    @tf.function(input_signature=[spec])
    def in_graph(images):
        return captioner.generate(images, DecodeSettings(beam_size=beam, max_length=max_length))

    encode = tf.function(captioner.encode, input_signature=[spec])

    @tf.function(reduce_retracing=True)
    def search(state):
        return beam_search(captioner.decode_step, state, start_id=START_ID, end_id=END_ID, beam_size=beam,
                           max_length=max_length)

    step = tf.function(captioner.decode_step, reduce_retracing=True)
    rows = []
    # Sampling K=5 captions per image vs one beam-3 search, batch 32, encode included (the bound: 1.5x).
    # Random weights would end beam search after a word or two while samples run on: <end> is held at
    # -1e4 for both, so every caption runs max_length steps (the worst case; a trained run's own
    # captions: bench/decode_cost.py).
    images32, _ = _batch(args, 10, 32)

    def never_end(ids, state):
        log_probs, state = captioner.decode_step(ids, state)
        return log_probs + tf.one_hot(END_ID, tf.shape(log_probs)[-1], on_value=-1e4), state

    strategies = {"sample": DecodeSettings(strategy="sample", num_captions=5, max_length=max_length, top_p=0.9),
                  "beam": DecodeSettings(beam_size=beam, max_length=max_length),
                  "greedy": DecodeSettings(strategy="greedy", num_captions=1, max_length=max_length)}
    generate = {name: tf.function(lambda images, s=s: s.to_strategy().search(
                    never_end, captioner.encode(images), start_id=START_ID, end_id=END_ID, max_length=max_length),
                    input_signature=[spec]) for name, s in strategies.items()}
    load = _load()
    t = _interleaved({name: (lambda f=f: f(images32)) for name, f in generate.items()}, rounds=args.rounds, steps=1)
    load += " -> " + _load()
    rows.append(Row("inference", f"sample K=5 (top-p 0.9) / beam {beam}, batch 32, encode + {max_length} steps",
                    f"sample {t['sample'] * 1e3:.0f} ms", f"beam {t['beam'] * 1e3:.0f} ms", t["sample"] / t["beam"],
                    f"greedy {t['greedy'] * 1e3:.0f} ms ({t['greedy'] / t['beam']:.2f}x beam)", load))
    for batch in (1, 32):
        images, _ = _batch(args, 10, batch)

        def python_loop():
            return [python_beam_search(encode, step, image, start_id=START_ID, end_id=END_ID, beam_size=beam,
                                       max_length=max_length) for image in images]

        load = _load()
        t = _interleaved({"graph": lambda: in_graph(images), "python": python_loop}, rounds=args.rounds, steps=1)
        load += " -> " + _load()
        graph_ids = in_graph(images).ids.numpy()[:, 0]
        same = sum(list(graph_ids[i][:len(r[0][1])]) == r[0][1] for i, r in enumerate(python_loop()))
        rows.append(Row("inference", f"Python loop / in-graph batched, batch {batch}, encode + beam {beam}",
                        f"python {t['python'] * 1e3:.0f} ms", f"graph {t['graph'] * 1e3:.0f} ms",
                        t["python"] / t["graph"], f"same best caption {same}/{batch}", load))
        # The search alone, from the encoded states (the backbone's cost is the same in both).
        states = [s.numpy() for s in encode(images)]

        def python_search():
            return [python_beam_search(lambda _, i=i: [s[i:i + 1] for s in states], step, images[i],
                                       start_id=START_ID, end_id=END_ID, beam_size=beam, max_length=max_length)
                    for i in range(batch)]

        load = _load()
        t = _interleaved({"graph": lambda: search(states), "python": python_search}, rounds=args.rounds, steps=1)
        load += " -> " + _load()
        rows.append(Row("inference", f"Python loop / in-graph batched, batch {batch}, beam search only",
                        f"python {t['python'] * 1e3:.0f} ms", f"graph {t['graph'] * 1e3:.0f} ms",
                        t["python"] / t["graph"], f"{max_length} words max", load))
    return rows


def memory_rows(args) -> list[Row]:
    rows = []
    for mode in args.memory_modes.split(","):
        env = dict(os.environ, PYTHONPATH=str(REPO))
        load = _load()
        done = subprocess.run([sys.executable, __file__, "--memory-child", mode, "--memory-size",
                               str(args.memory_size), "--memory-batch", str(args.memory_batch),
                               "--memory-steps", str(args.memory_steps)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=args.memory_timeout)
        load += " -> " + _load()
        if done.returncode != 0:
            rows.append(Row("memory", f"peak RSS, {mode}", "failed", "-", None, done.stderr.strip()[-200:], load))
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(Row("memory", f"peak RSS training InceptionV3 {args.memory_size}px batch {args.memory_batch}, "
                                  f"{mode} (XLA, {args.memory_steps} steps)",
                        f"peak {r['peak_gib']:.2f} GiB", f"RSS after build {r['built_gib']:.2f} GiB",
                        r["peak_gib"] / r["built_gib"], f"{r['seconds_per_step']:.1f} s/step", load))
    return rows


def _current_rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _memory_child(args) -> None:
    """A few training steps at im2txt's shapes in a fresh process; prints peak RSS as JSON."""
    import keras

    from caption_app.model import show_and_tell

    child = argparse.Namespace(**{**vars(args), "backbone": "inception_v3", "image_size": args.memory_size,
                                  "batch": args.memory_batch, "dropout": 0.3})
    config = _config(child)
    model = show_and_tell.build_model(config, 10000)
    show_and_tell.set_backbone_trainable(model, args.memory_child == "fine_tune")
    built = _current_rss_kib()
    fit_model = _fit_model(model, True)
    images, ids = _batch(child, 10000)
    x, y = {"image": images, "input_ids": ids[..., :-1]}, ids[..., 1:]
    fit_model.train_on_batch(x, y)  # compile
    began = time.perf_counter()
    for _ in range(args.memory_steps):
        fit_model.train_on_batch(x, y)
    per_step = (time.perf_counter() - began) / args.memory_steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    keras.backend.clear_session()
    print(json.dumps({"peak_gib": peak / 2**20, "built_gib": built / 2**20, "seconds_per_step": per_step}))


def bucket_rows(args) -> list[Row]:
    import length_buckets

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_buckets_") as tmp:
        data = _convert_flickr8k(os.path.join(tmp, "flickr8k"))
        if data is None:
            rows.append(Row("length buckets", "decoder positions per real token", "n/a", "n/a", None,
                            f"{SHARED_FLICKR8K} not found"))
        else:
            load = _load()
            settings = {k: length_buckets.TOKEN_SETTINGS[k] for k in ("one length", "buckets")}
            r = length_buckets.token_ratios(data, settings)
            one, buckets = r["one length"]["positions per real"], r["buckets"]["positions per real"]
            load += " -> " + _load()
            rows.append(Row("length buckets", "decoder positions per real target token (Flickr8k, im2txt batches)",
                            f"one length {one:.2f}", f"buckets {buckets:.2f}", one / buckets,
                            f"lengths {'/'.join(map(str, r['buckets']['lengths']))}", load))
        from tfrecords_tools.shapes import convert_shapes

        convert_shapes(os.path.join(tmp, "shapes"), progress=False, verbose=False)
        load = _load()
        r = length_buckets.shapes_epoch_times(os.path.join(tmp, "shapes"), tmp, steps=args.steps * 3,
                                              rounds=args.rounds)
        load += " -> " + _load()
        rows.append(Row("length buckets",
                        f"shapes preset s/epoch ({r['steps per epoch']} steps), one length / buckets",
                        f"one length {r['one length']:.1f} s", f"buckets {r['buckets']:.1f} s",
                        r["one length"] / r["buckets"], f"lengths {'/'.join(map(str, r['buckets lengths']))}",
                        load))
    return rows


def _print(rows: list[Row]) -> None:
    import tensorflow as tf

    cpus = os.cpu_count()
    model_name = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line),
                      platform.processor())
    print(f"\nmachine: {platform.machine()} {model_name}, {cpus} CPUs, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM, "
          f"GPUs: {len(tf.config.list_physical_devices('GPU'))}, TF {tf.__version__}, "
          f"Python {platform.python_version()}")
    width = max(len(r.what) for r in rows)
    print(f"{'section':<15}{'what':<{width + 2}}{'A':>22}{'B':>28}{'A/B':>8}  load 1/5/15 min (before -> after)  note")
    for r in rows:
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "-"
        print(f"{r.section:<15}{r.what:<{width + 2}}{r.a:>22}{r.b:>28}{ratio:>8}  {r.load:<34} {r.note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="inception_v3")
    parser.add_argument("--image-size", type=int, default=150, help="train-step and inference rows (px)")
    parser.add_argument("--batch", type=int, default=8, help="images per train step")
    parser.add_argument("--captions", type=int, default=5)
    parser.add_argument("--length", type=int, default=19, help="caption tokens per step")
    parser.add_argument("--dropout", type=float, default=0.0, help="LSTM dropout of the timed model")
    parser.add_argument("--steps", type=int, default=3, help="calls per timing round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (the median is kept)")
    parser.add_argument("--pipeline-images", type=int, default=1500)
    parser.add_argument("--beam-size", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=20)
    parser.add_argument("--memory-modes", default="frozen,fine_tune")
    parser.add_argument("--memory-size", type=int, default=299)
    parser.add_argument("--memory-batch", type=int, default=32)
    parser.add_argument("--memory-steps", type=int, default=2)
    parser.add_argument("--memory-timeout", type=int, default=1800)
    parser.add_argument("--skip", default="",
                        help="comma-separated sections to skip: train,pipeline,inference,memory,buckets")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes: small_cnn at 64px, batch 8, memory at 75px batch 8")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        return _memory_child(args)
    if args.quick:
        args.backbone, args.image_size, args.memory_size, args.memory_batch = "small_cnn", 64, 75, 8
        args.pipeline_images, args.rounds = 400, 2
    skip = set(filter(None, args.skip.split(",")))
    print(f"load before: {_load()}", flush=True)
    rows: list[Row] = []
    extra: dict = {}
    if "train" not in skip or "pipeline" not in skip or "inference" not in skip:
        train_rows, extra = train_step_rows(args)
        rows += train_rows
        print(f"train step rows done: {_load()}", flush=True)
    if "pipeline" not in skip:
        rows += pipeline_rows(args, extra["consumed"])
    if "inference" not in skip:
        rows += inference_rows(args, extra["model"])
    if "memory" not in skip:
        rows += memory_rows(args)
    if "buckets" not in skip:
        rows += bucket_rows(args)
    _print(rows)


if __name__ == "__main__":
    main()
