"""evaluate(run_dir, split): perplexity and caption metrics, once.

The old evaluator looped forever; this one evaluates one checkpoint (the
latest by default) and returns. `watch` re-evaluates new checkpoints and
returns once training has finished (or nothing new came for a while).
"""

from __future__ import annotations

import os
import time

import tensorflow as tf

from caption_app import io_utils
from caption_app import metrics as metrics_lib
from caption_app import run_dir as run_dir_lib
from caption_app.io_utils import write_json_atomic as write_json
from caption_app.data.pipeline import make_dataset
from caption_app.model.loss import batch_nll_sums
from caption_app.model.show_and_tell import Captioner

# What `evaluate` returns and writes, in this order: perplexity, the caption metrics, the image count.
RESULT_KEYS = ("perplexity",) + tuple(metrics_lib.METRIC_KEYS) + ("num_images",)
METRICS_FILE = "metrics.json"


def evaluate(run_dir: str, split: str = "test", *, data_dir: str | None = None, json_path: str | None = None,
             checkpoint: str | None = None, beam_size: int | None = None, max_length: int | None = None,
             length_normalization: float | None = None, verbose: bool = True) -> dict:
    """Evaluates one checkpoint of a run on one split, once.

    Args:
      run_dir: a run dir written by `train`.
      split: train | val | test.
      data_dir: the converted data (default: the one the run trained on).
      json_path: where to write the metrics (default RUN/metrics.json).
      checkpoint: a checkpoint path (default: the latest).
      beam_size, max_length, length_normalization: override the run's `decode`
        config (caption_app/decoding.py: None or 0 keeps the run's value).
    Returns:
      {"perplexity", "BLEU-1".."BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "num_images"};
      METEOR is None when java is missing. Also written to `json_path`, and the
      generated captions with notes to RUN/eval/<split>-<checkpoint>.json.
    """
    # Checked before the slow model load.
    settings = run_dir_lib.load_config(run_dir).decode.resolve(
        beam_size=beam_size, max_length=max_length, length_normalization=length_normalization, num_captions=1)
    model, config, vocab, sizes, checkpoint = run_dir_lib.load_model(run_dir, checkpoint)
    manifest = run_dir_lib.load_manifest(run_dir, data_dir)
    captioner = Captioner(model)

    @tf.function(reduce_retracing=True)
    def run_batch(inputs, targets):
        # Perplexity and captions in one pass, so each image is decoded once.
        nll, tokens = batch_nll_sums(model, inputs, targets)
        result = captioner.generate(inputs["image"], settings)
        return nll, tokens, vocab.ids_to_text(result.ids[:, 0]), result.scores[:, 0]

    dataset = make_dataset(config, manifest, vocab, split, training=False, sizes=sizes,
                           batch_size=config.eval.batch_size, with_ids=True)
    total_nll, total_tokens = 0.0, 0
    references, candidates, scores = {}, {}, {}
    began = time.time()
    for inputs, targets, meta in dataset:
        nll, tokens, texts, best = run_batch(inputs, targets)
        total_nll += float(nll)
        total_tokens += int(tokens)
        for image_id, refs, text, score in zip(meta["image_id"].numpy(), meta["captions"].numpy(),
                                               texts.numpy(), best.numpy()):
            key = image_id.decode("utf-8")
            if key in references:  # a duplicate record; the first one counts
                continue
            references[key] = [r.decode("utf-8") for r in refs if r]
            candidates[key] = text.decode("utf-8")
            scores[key] = float(score)
    if not references:
        raise ValueError(f"split {split!r} has no images to evaluate")
    scores_by_metric, notes = metrics_lib.caption_metrics(references, candidates)
    result = {"perplexity": metrics_lib.perplexity(total_nll, total_tokens), **scores_by_metric,
              "num_images": len(references)}
    result = {k: result[k] for k in RESULT_KEYS}

    json_path = json_path or os.path.join(run_dir, METRICS_FILE)
    write_json(json_path, result)
    details_dir = os.path.join(run_dir, "eval")
    io_utils.makedirs(details_dir)
    details = os.path.join(details_dir, f"{split}-{os.path.basename(checkpoint)}.json")
    write_json(details, {"checkpoint": checkpoint, "split": split, "metrics": result, "notes": notes,
                          "beam_size": settings.beam_size, "max_length": settings.max_length,
                          "length_normalization": settings.length_normalization,
                          "seconds": time.time() - began,
                          "captions": {k: {"generated": candidates[k], "score": scores[k],
                                           "references": references[k]} for k in sorted(candidates)}})
    if verbose:
        print(f"evaluated {checkpoint} on {split} ({len(references)} images, {total_tokens} tokens, "
              f"{time.time() - began:.1f}s)")
        for k in RESULT_KEYS:
            v = result[k]
            print(f"  {k:<10} {v:.4f}" if isinstance(v, float) else f"  {k:<10} {v}")
        for note in notes:
            print(f"  note: {note}")
        print(f"metrics: {json_path}\ncaptions: {details}", flush=True)
    return result


def watch(run_dir: str, split: str = "val", *, poll_seconds: float = 30.0, idle_timeout: float = 3600.0,
          **kwargs) -> dict | None:
    """Evaluates each new latest checkpoint; returns when training has finished
    and its last checkpoint is evaluated, or when no new checkpoint came for
    `idle_timeout` seconds. Returns the last metrics (None if none)."""
    evaluated, last, last_change = None, None, time.time()
    while True:
        latest = tf.train.latest_checkpoint(run_dir_lib.checkpoint_dir(run_dir))
        if latest is not None and latest != evaluated:
            last = evaluate(run_dir, split, checkpoint=latest, **kwargs)
            evaluated, last_change = latest, time.time()
        if run_dir_lib.read_state(run_dir).get("finished") and latest == evaluated:
            print("training has finished; watch ends", flush=True)
            return last
        if time.time() - last_change > idle_timeout:
            print(f"no new checkpoint for {idle_timeout:.0f}s; watch ends", flush=True)
            return last
        time.sleep(poll_seconds)
