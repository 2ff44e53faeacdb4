"""Learning quality on generated shapes sets: train, evaluate, score against the ground truth.

    python bench/shapes_quality.py data OUT [--scenes night] [--image-size 96]
    python bench/shapes_quality.py run DATA RUN [--set train.epochs=6 ...] [--seed 1]
    python bench/shapes_quality.py score DATA RUN     evaluate and score an already trained RUN
    python bench/shapes_quality.py words RUN          per-word-class validation loss at every kept checkpoint
    python bench/shapes_quality.py probe RUN          colour probe on the image embedding + single-colour patches
    python bench/shapes_quality.py veto RUN           the reference words' log-probabilities on single objects
    python bench/shapes_quality.py attention RUN      where the colour and shape words look (attention runs)

`run` trains the `shapes` preset (plus overrides) on DATA, evaluates the test
split and prints `tfrecords_tools.shapes_report`'s report plus one JSON line
(BLEU-4, the report's headline numbers, training seconds, load average) to
collect into bench/RESULTS.md ("Learning quality"). `words`, `probe` and `veto` are
the evidence for why a recipe learns colour or not: the validation loss of
colour, shape and size words against all other words, checkpoint by
checkpoint; and whether the image embedding carries each object's colour
(a linear probe on single-object images) and what it gives for plain colour
patches. `attention` captions the test split as `evaluate` does (the run's
decode settings) with each word's attention map from the same search, and
scores the maps of the colour and shape words against where the generator drew
the object each names (`shapes_report.attention_looks`).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from tfrecords_tools import flickr8k  # noqa: E402
from tfrecords_tools import shapes as shapes_lib  # noqa: E402
from tfrecords_tools import shapes_report  # noqa: E402

SCENES = {"shapes": shapes_lib.SHAPES_SCENES, "night": shapes_lib.NIGHT_SCENES}


def make_data(out: str, scenes: str, image_size: int, seed: int) -> None:
    shapes_lib.convert_shapes(out, scenes=SCENES[scenes], image_size=image_size, seed=seed, progress=False,
                              verbose=False)
    print(f"data: {out}")


def objects_file(data_dir: str) -> str:
    with open(os.path.join(data_dir, "manifest.json")) as f:
        info = json.load(f)["source_info"]
    return info.get("objects_file") or os.path.join(info["raw_dir"], shapes_lib.OBJECTS_FILE)


def run(data_dir: str, run_dir: str, assignments: list[str], config_name: str) -> dict:
    from caption_app import config as config_lib
    from caption_app.training.train import train

    config = config_lib.override(config_lib.get_preset(config_name), assignments)
    load_before = os.getloadavg()
    history = train(config, data_dir, run_dir, verbose=2)
    return score(data_dir, run_dir, {"set": assignments, "train_seconds": round(history["seconds"], 1),
                                     "load_before": [round(x, 1) for x in load_before]})


def score(data_dir: str, run_dir: str, extra: dict) -> dict:
    """Evaluate RUN's test split, print the shapes report and the RESULT line."""
    from caption_app.evaluation.evaluate import evaluate

    began = time.time()
    metrics = evaluate(run_dir, "test", verbose=False)
    eval_seconds = time.time() - began
    report = shapes_report.score(shapes_report.load_captions(shapes_report.captions_file(run_dir)),
                                 shapes_lib.load_objects(objects_file(data_dir)))
    print(shapes_report.format_report(report))
    result = {"run_dir": run_dir, "BLEU-4": metrics["BLEU-4"], "CIDEr": metrics["CIDEr"],
              **{k: round(v, 4) for k, v in report.summary().items()}, **extra,
              "eval_seconds": round(eval_seconds, 1), "load_after": [round(x, 1) for x in os.getloadavg()]}
    print("RESULT " + json.dumps(result), flush=True)
    return result


def _word_classes(vocab, scenes: dict) -> np.ndarray:
    """id -> 0 other, 1 colour, 2 shape, 3 size."""
    classes = np.zeros(vocab.size, np.int32)
    for k, words in enumerate((scenes["colours"], scenes["shapes"], scenes["sizes"]), start=1):
        for w in words:
            i = vocab.word_to_id(w) if hasattr(vocab, "word_to_id") else vocab.tokens.index(w)
            classes[i] = k
    return classes


def words(run_dir: str) -> None:
    """Mean validation cross-entropy of colour / shape / size / other target words per checkpoint."""
    import tensorflow as tf

    from caption_app.runs import checkpoints as checkpoints_lib
    from caption_app.runs import loader as run_loader
    from caption_app.data.pipeline import make_dataset
    from caption_app.model.loss import token_nll

    manifest = run_loader.load_manifest(run_dir)
    truth = shapes_lib.load_objects(objects_file(manifest.data_dir))
    state = tf.train.get_checkpoint_state(checkpoints_lib.checkpoint_dir(run_dir))
    print("checkpoint   colour   shape    size   other   (mean nll per target word, val)")
    for path in state.all_model_checkpoint_paths:
        model, config, vocab, tensor_sizes, _ = run_loader.load_model(run_dir, path)
        classes = tf.constant(_word_classes(vocab, truth["scenes"]))
        sums, counts = np.zeros(4), np.zeros(4)
        for inputs, targets in make_dataset(config, manifest, vocab, "val", training=False, shapes=tensor_sizes,
                                            batch_size=64):
            nll, mask = token_nll(targets, model(inputs, training=False))
            cls = tf.gather(classes, targets)
            for k in range(4):
                m = mask * tf.cast(tf.equal(cls, k), tf.float32)
                sums[k] += float(tf.reduce_sum(nll * m))
                counts[k] += float(tf.reduce_sum(m))
        mean = sums / np.maximum(counts, 1)
        print(f"{os.path.basename(path):<10} {mean[1]:7.3f} {mean[2]:7.3f} {mean[3]:7.3f} {mean[0]:7.3f}", flush=True)


def veto(run_dir: str) -> None:
    """Teacher-forced on the references of single-object val + test images: for the colour and the
    shape word, the mean log-probability of the right word, how often it is the likeliest of its
    class, and its log-probability margin over the likeliest wrong word of the class; seen pairs
    against held-out pairs (where the words before have never been followed by the right one)."""
    import tensorflow as tf

    from caption_app.runs import checkpoints as checkpoints_lib
    from caption_app.runs import loader as run_loader
    from caption_app.data.pipeline import decode_image

    manifest = run_loader.load_manifest(run_dir)
    truth = shapes_lib.load_objects(objects_file(manifest.data_dir))
    scenes = truth["scenes"]
    held_out = {tuple(p) for p in scenes["held_out_pairs"]}
    model, config, vocab, sizes, _ = run_loader.load_model(run_dir)
    raw = os.path.join(manifest.data_dir, "raw")
    references, _ = flickr8k.read_token_file(os.path.join(raw, flickr8k.TOKEN_FILE))
    classes = {"colour": [vocab.word_to_id(w) for w in scenes["colours"]],
               "shape": [vocab.word_to_id(w) for w in scenes["shapes"]]}
    stats = {(group, kind): [] for group in ("seen", "held-out") for kind in classes}
    for name, info in sorted(truth["images"].items()):
        if info["split"] == "train" or len(info["objects"]) != 1:
            continue
        _, colour, shape = info["objects"][0]
        group = "held-out" if (colour, shape) in held_out else "seen"
        encoded = [vocab.encode(c) for c in references[name]]
        length = max(map(len, encoded))
        ids = np.array([e + [0] * (length - len(e)) for e in encoded], np.int32)
        with open(os.path.join(raw, "images", name), "rb") as f:
            image = decode_image(tf.constant(f.read()), sizes.image_size, config.data.preprocess)
        logits = model({"image": image[None], "input_ids": tf.constant(ids[None, :, :-1])}, training=False)[0]
        log_probs = tf.nn.log_softmax(logits, axis=-1).numpy()
        for c, row in enumerate(ids[:, 1:]):
            for t, target in enumerate(row):
                for kind, word in (("colour", colour), ("shape", shape)):
                    if target == vocab.word_to_id(word):
                        ranked = log_probs[c, t, classes[kind]]
                        right = log_probs[c, t, target]
                        wrong = max(v for i, v in zip(classes[kind], ranked) if i != target)
                        stats[(group, kind)].append((right, right > wrong, right - wrong))
    print("single objects (val + test), teacher-forced on every reference caption:")
    print("group     word    words  mean log p(right)  right is likeliest of its class  mean margin")
    for (group, kind), rows in stats.items():
        if rows:
            a = np.array(rows, np.float64)
            print(f"{group:<9} {kind:<7} {len(a):5d}  {a[:, 0].mean():16.3f}  {a[:, 1].mean():30.1%}  "
                  f"{a[:, 2].mean():11.3f}")


def _embed_model(model):
    import keras

    last = "image_embedding_norm" if any(l.name == "image_embedding_norm" for l in model.layers) \
        else "image_embedding"
    image = model.get_layer("image").output
    nets = [("image embedding", keras.Model(image, model.get_layer(last).output)),
            ("backbone features", model.image_encoder.feature_extractor)]
    if model.decoder.attention_size:  # the cells the decoder attends over, max over the map's positions
        cells = keras.layers.Reshape((-1, model.decoder.attention_size))(model.get_layer("image_cells").output)
        nets.append(("attention cells (max over positions)", keras.Model(image, keras.ops.max(cells, axis=1))))
    return nets


def probe(run_dir: str) -> None:
    """Does the trained image embedding carry colour and shape? Softmax probes on single-object images
    (train images to fit; test images of seen pairs, and val + test images of held-out pairs, to score),
    and the embeddings of plain colour patches."""
    import keras
    import tensorflow as tf

    from caption_app.runs import checkpoints as checkpoints_lib
    from caption_app.runs import loader as run_loader
    from caption_app.data import records
    from caption_app.data.pipeline import decode_image

    model, config, vocab, tensor_sizes, _ = run_loader.load_model(run_dir)
    manifest = run_loader.load_manifest(run_dir)
    truth = shapes_lib.load_objects(objects_file(manifest.data_dir))
    colours = list(truth["scenes"]["colours"])
    shapes = list(truth["scenes"]["shapes"])
    held_out = {tuple(p) for p in truth["scenes"]["held_out_pairs"]}
    nets = _embed_model(model)
    embed = nets[0][1]
    size = tensor_sizes.image_size

    def single_objects(splits, pairs):
        """Single-object images of `splits` whose (colour, shape) is held out (pairs="held") or not."""
        images, labels = [], []
        for split in splits:
            for r in tf.data.TFRecordDataset(manifest.files(split)).map(records.parse_example):
                objects = truth["images"][r["image_id"].numpy().decode()]["objects"]
                if len(objects) == 1 and ((tuple(objects[0][1:3]) in held_out) == (pairs == "held")):
                    images.append(decode_image(r["encoded"], size).numpy())
                    labels.append((colours.index(objects[0][1]), shapes.index(objects[0][2])))
        return np.stack(images), np.array(labels)

    train_x, train_y = single_objects(["train"], "seen")
    test_x, test_y = single_objects(["test"], "seen")
    held_x, held_y = single_objects(["val", "test"], "held")
    for name, net in nets:
        f_train, f_test, f_held = (net.predict(x, batch_size=64, verbose=0) for x in (train_x, test_x, held_x))
        mean, std = f_train.mean(0), f_train.std(0) + 1e-6
        for k, (attribute, classes) in enumerate((("colour", colours), ("shape", shapes))):
            keras.utils.set_random_seed(0)
            clf = keras.Sequential([keras.Input((f_train.shape[1],)), keras.layers.Dense(len(classes))])
            clf.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                        metrics=["accuracy"])
            clf.fit((f_train - mean) / std, train_y[:, k], epochs=100, batch_size=128, verbose=0)
            acc = clf.evaluate((f_test - mean) / std, test_y[:, k], verbose=0)[1]
            held = clf.evaluate((f_held - mean) / std, held_y[:, k], verbose=0)[1]
            print(f"linear {attribute} probe on the {name} ({f_train.shape[1]} wide): {100 * acc:.1f}% of "
                  f"{len(test_y)} single-object test images of seen pairs, {100 * held:.1f}% of {len(held_y)} "
                  f"val+test images of held-out pairs (fit on {len(train_y)} train images)")

    # Plain patches: a large square of each colour in the middle of a pale grey image.
    scenes = SCENES["night" if "white" in colours else "shapes"]
    background = np.array(scenes.backgrounds[1], np.float32)
    patches = np.tile(background, (len(colours), size, size, 1))
    lo, hi = size // 4, size - size // 4
    for i, c in enumerate(colours):
        patches[i, lo:hi, lo:hi] = truth["scenes"]["colours"][c]
    e = embed.predict(patches, verbose=0)
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    cos = e @ e.T
    print("cosine similarity of the image embeddings of plain colour squares:")
    print("        " + " ".join(f"{c[:6]:>6}" for c in colours))
    for i, c in enumerate(colours):
        print(f"{c[:7]:<7} " + " ".join(f"{v:6.2f}" for v in cos[i]))


def attention(run_dir: str, split: str = "test") -> dict:
    """Where the colour and shape words of RUN's captions of `split` look, against the ground truth."""
    import tensorflow as tf

    from caption_app.data import records
    from caption_app.data.pipeline import decode_image
    from caption_app.inference.captioner import TrainedCaptioner
    from caption_app.runs import loader as run_loader

    captioner = TrainedCaptioner.from_run_dir(run_dir)
    grid = captioner.check_attention()
    manifest = run_loader.load_manifest(run_dir)
    with open(os.path.join(manifest.data_dir, "manifest.json")) as f:
        info = json.load(f)["source_info"]
    truth = shapes_lib.load_objects(objects_file(manifest.data_dir))
    scenes = SCENES["night" if "white" in truth["scenes"]["colours"] else "shapes"]
    settings = captioner.decode

    @tf.function(reduce_retracing=True)
    def caption(images):  # the best caption's words [B, T] and their maps [B, T, h*w]
        result = captioner.generate(images, settings, attention=True)
        return captioner.vocab.ids_to_words(result.ids[:, 0]), result.traces[:, 0]

    def parse(serialized):
        record = records.parse_example(serialized)
        return record["image_id"], decode_image(record["encoded"], captioner.image_size, captioner.preprocess)

    began = time.time()
    looks, omitted, images = [], [], 0
    for names, pixels in tf.data.TFRecordDataset(manifest.files(split)).map(parse).batch(64):
        words, maps = (x.numpy() for x in caption(pixels))
        for name, row_words, row_maps in zip(names.numpy(), words, maps):
            name = name.decode()
            objects = shapes_lib.objects_with_boxes(name, seed=info["seed"], image_size=info["image_size"],
                                                    scenes=scenes)
            if [tuple(o[:3]) for o in objects] != truth["images"][name]["objects"]:
                raise SystemExit(f"{name}: the redrawn objects differ from {objects_file(manifest.data_dir)}")
            kept = row_words != b""
            said = [w.decode() for w in row_words[kept]]
            found, left_out = shapes_report.attention_looks(
                said, row_maps[kept].reshape(-1, *grid), objects, info["image_size"], truth["scenes"])
            looks += found
            omitted += left_out
            images += 1
    print(f"{images} {split} images, {grid[0]}x{grid[1]} cells of {info['image_size'] // grid[0]} px, "
          f"{time.time() - began:.0f}s")
    print(shapes_report.format_looks(looks, omitted))

    def share(attribute, held, field):
        group = [getattr(x, field) for x in looks if x.named and x.attribute == attribute and x.held_out == held
                 and (field != "nearest" or x.objects > 1)]  # nearest: among 2-3 objects
        return round(sum(group) / max(len(group), 1), 4)

    wrong = [x for x in looks if not x.named]
    result = {"run_dir": run_dir, "images": images, "grid": list(grid), "wrong_words": len(wrong),
              "wrong_words_peak_on_object": sum(x.on_object for x in wrong), "omitted_objects": len(omitted),
              "omitted_objects_under_a_peak": sum(omitted),
              **{f"{a}_{'held_out' if h else 'seen'}_{field}": share(a, h, field)
                 for a in ("colour", "shape") for h in (False, True) for field in ("on_object", "nearest", "mass")}}
    print("RESULT " + json.dumps(result), flush=True)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("data")
    d.add_argument("out")
    d.add_argument("--scenes", default="shapes", choices=sorted(SCENES))
    d.add_argument("--image-size", type=int, default=64)
    d.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("run")
    r.add_argument("data")
    r.add_argument("run_dir")
    r.add_argument("--config", default="shapes")
    r.add_argument("--set", action="append", default=[])
    sc = sub.add_parser("score")
    sc.add_argument("data")
    sc.add_argument("run_dir")
    for name in ("words", "probe", "veto", "attention"):
        sub.add_parser(name).add_argument("run_dir")
    args = p.parse_args(argv)
    if args.command == "data":
        make_data(args.out, args.scenes, args.image_size, args.seed)
    elif args.command == "run":
        run(args.data, args.run_dir, args.set, args.config)
    elif args.command == "score":
        score(args.data, args.run_dir, {})
    elif args.command == "words":
        words(args.run_dir)
    elif args.command == "veto":
        veto(args.run_dir)
    elif args.command == "attention":
        attention(args.run_dir)
    else:
        probe(args.run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
