"""Benchmark (not a test): a self-critical step against a cross-entropy step on the same images, one process.

    python bench/scst_cost.py RUN_DIR [--rounds 7] [--baseline mean|greedy]

Loads a trained run (the `shapes` preset's, say), takes one train batch (train.batch_size images with
all their captions), and times, interleaved, median of `--rounds`:

  CE (backbone trainable)  the preset's cross-entropy step (`fit`'s XLA-compiled train step)
  CE (backbone frozen)     the same with the backbone frozen, as SCST has it
  SCST                     ScstTrainer's step: backbone, K samples, CIDEr-D rewards, baseline, XLA gradient

and the SCST step's parts on their own, each in one traced function: the backbone (XLA), the
sampling, the reward (CIDEr-D of the K samples, and the baseline), and the model's part (XLA).
Prints ms per step, the ratios and the parts' shares of the SCST step, and the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--baseline", default="mean", choices=("mean", "greedy"))
    parser.add_argument("--samples", type=int, default=5)
    args = parser.parse_args()

    import dataclasses

    import tensorflow as tf

    from caption_app.data.pipeline import make_dataset, resolve_tensor_sizes
    from caption_app.inference.strategies import Sample
    from caption_app.model import show_and_tell
    from caption_app.runs import layout, loader
    from caption_app.training import cider_reward, distribute, scst
    from caption_app.training.budget import budget_for
    from caption_app.training.optimizers import make_optimizer

    model, config, vocab, _, checkpoint = loader.load_model(args.run_dir)
    config = dataclasses.replace(config, train=dataclasses.replace(
        config.train, scst_samples=args.samples, scst_baseline=args.baseline))
    manifest = loader.load_manifest(args.run_dir)
    sizes = resolve_tensor_sizes(config, manifest)
    frequencies = cider_reward.DocumentFrequencies.for_run(args.run_dir, manifest, layout.vocab_sha1(vocab),
                                                           write=False)
    batch = config.train.batch_size
    inputs, targets, extras = next(iter(make_dataset(config, manifest, vocab, "train", training=False, sizes=sizes,
                                                     batch_size=batch, with_ids=True)))
    ref_tuple, ref_valid = cider_reward.reference_vectors(extras["captions"], manifest.tokenizer, frequencies,
                                                          scst.reference_width(manifest))
    keys, weights, first, norms, bigrams = ref_tuple
    references = {"keys": keys, "weights": weights, "first": first, "norms": norms, "bigrams": bigrams,
                  "valid": ref_valid}
    strategy = tf.distribute.get_strategy()
    budget = budget_for(config, manifest)
    phase = next(p for p in budget.phases if p.name == "phase1")
    scst_phase = dataclasses.replace(phase, name="scst", backbone_trainable=False)

    def ce_model(trainable: bool):
        show_and_tell.set_backbone_trainable(model, trainable)
        optimizer = make_optimizer(config, 1e-6, phase)
        optimizer.build(model.trainable_variables)
        return distribute.compile_for_fit(model, optimizer, config, strategy)

    ce_trainable = ce_model(True)
    ce_frozen = ce_model(False)
    optimizer = make_optimizer(config, 1e-6, scst_phase)
    optimizer.build(model.trainable_variables)
    trainer = scst.compile_for_scst(model, optimizer, config, vocab, frequencies, strategy)
    image_only = {"image": inputs["image"]}

    def run_ce_trainable():
        show_and_tell.set_backbone_trainable(model, True)
        ce_trainable.train_on_batch(inputs, targets)

    def run_ce_frozen():
        show_and_tell.set_backbone_trainable(model, False)
        ce_frozen.train_on_batch(inputs, targets)

    def run_scst():
        show_and_tell.set_backbone_trainable(model, False)
        trainer.train_on_batch(image_only, references)

    # The SCST step's parts on their own.
    ref_vectors = cider_reward.Vectors(keys, weights, first, norms, bigrams)
    backbone = trainer._backbone_fn
    outputs = backbone(inputs["image"])

    @tf.function
    def sample(outputs):
        state = model.decoder.initial_state(model.image_encoder.from_backbone_outputs(outputs, training=False))
        seeds = tf.range(tf.shape(inputs["image"])[0], dtype=tf.int64)
        result = trainer._search(Sample(num_samples=args.samples), state, seeds=seeds)
        return result.ids, result.lengths, result.log_probs, result.scores

    ids, lengths, log_probs, scores = sample(outputs)
    from caption_app.inference.beam_search import SearchResult

    sampled = SearchResult(ids=ids, scores=scores, log_probs=log_probs, lengths=lengths)

    @tf.function
    def reward(ids, lengths):
        result = SearchResult(ids=ids, scores=scores, log_probs=log_probs, lengths=lengths)
        rewards, _, _ = trainer._rewards(result, ref_vectors, ref_valid)
        return rewards - tf.reduce_mean(rewards, axis=1, keepdims=True)

    t = config.decode.max_length
    starts = tf.fill(tf.stack([tf.shape(ids)[0], args.samples, 1]), 1)
    input_ids = tf.concat([starts, sampled.ids[:, :, :-1]], axis=2)
    mask = tf.cast(tf.range(t)[None, None, :] < sampled.lengths[:, :, None], tf.float32)
    advantage = tf.zeros(tf.shape(mask)[:2])

    def gradients():
        trainer._grads_fn(outputs, input_ids, sampled.ids, mask, advantage, tf.constant(1.0))

    steps = {"CE (backbone trainable)": run_ce_trainable, "CE (backbone frozen)": run_ce_frozen, "SCST": run_scst,
             "  backbone": lambda: backbone(inputs["image"]), "  sampling": lambda: sample(outputs),
             "  reward + baseline": lambda: reward(ids, lengths), "  model part (grads)": gradients}
    for fn in steps.values():  # trace, compile, warm up
        fn()
        fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    for _ in range(args.rounds):
        for name, fn in steps.items():
            began = time.perf_counter()
            out = fn()
            if out is not None:
                tf.nest.map_structure(lambda x: x.numpy() if hasattr(x, "numpy") else x, out)
            times[name].append(time.perf_counter() - began)
    median = {name: statistics.median(v) * 1000 for name, v in times.items()}
    print(f"run {args.run_dir} ({os.path.basename(checkpoint)}), batch {batch} images, "
          f"{int(tf.shape(inputs['input_ids'])[1])} captions each, K={args.samples}, baseline {args.baseline}, "
          f"mean sample length {float(tf.reduce_mean(tf.cast(lengths, tf.float32))):.1f}; load before {load}, "
          f"after {'/'.join(f'{x:.1f}' for x in os.getloadavg())}")
    scst_ms = median["SCST"]
    for name, ms in median.items():
        if name.startswith("  "):
            print(f"{name:<28} {ms:8.1f} ms  {ms / scst_ms:6.1%} of the SCST step")
        else:
            print(f"{name:<28} {ms:8.1f} ms  SCST / this: {scst_ms / ms:5.2f}x")


if __name__ == "__main__":
    main()
