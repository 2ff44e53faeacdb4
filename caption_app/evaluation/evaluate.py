"""evaluate(run_dir, split): perplexity and caption metrics, once.

The old evaluator looped forever; this one evaluates one checkpoint (the
latest by default) and returns. `watch` re-evaluates new checkpoints and
returns once training has finished (or nothing new came for a while).

Each evaluation writes RUN/metrics.json, the captions as
RUN/eval/<split>-<checkpoint>.json, the HTML report beside it
(caption_app/evaluation/report.py), and the metrics to TensorBoard
(RUN/logs/eval_<split>, tags `metrics/<name>`) at the checkpoint's epoch,
the step the training scalars use.
"""

from __future__ import annotations

import os
import time

import tensorflow as tf

from caption_app.evaluation import report as eval_report
from caption_app import io_utils
from caption_app.evaluation import metrics as metrics_lib
from caption_app.runs import checkpoints as checkpoints_lib
from caption_app.runs import layout as run_layout
from caption_app.runs import loader as run_loader
from caption_app.data.image_bytes import DEFAULT_MAX_IMAGE_PIXELS
from caption_app.io_utils import write_json_atomic as write_json
from caption_app.data.pipeline import make_dataset
from caption_app.model.loss import batch_nll_sums
from caption_app.inference.captioner import TrainedCaptioner

# What `evaluate` returns and writes, in this order: perplexity, the caption metrics, the image count.
RESULT_KEYS = ("perplexity",) + tuple(metrics_lib.METRIC_KEYS) + ("num_images",)
METRICS_FILE = "metrics.json"


def evaluate(run_dir: str, split: str = "test", *, data_dir: str | None = None, json_path: str | None = None,
             checkpoint: str | None = None, report_images: int | None = None, verbose: bool = True,
             **decode) -> dict:
    """Evaluates one checkpoint of a run on one split, once.

    Args:
      run_dir: a run dir written by `train`.
      split: train | val | test.
      data_dir: the converted data (default: the one the run trained on).
      json_path: where to write the metrics (default RUN/metrics.json).
      checkpoint: a checkpoint path (default: the latest).
      **decode: override the run's `decode` config (strategy, beam_size, max_length,
        length_normalization, temperature, top_k, top_p, seed, no_repeat_ngram:
        caption_app/inference/settings.py; None or 0 keeps the run's value). The best caption of
        each image is scored.
      report_images: thumbnails in the HTML report (default: the run's
        `eval.report_images`). For a model with attention (and report_images > 0)
        the search also keeps each caption's attention maps, and the report
        shows the thumbnailed rows' words over them.
    Returns:
      {"perplexity", "BLEU-1".."BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "num_images"};
      METEOR is None when java is missing. Also written to `json_path`, the
      generated captions with notes and per-image CIDEr to
      RUN/eval/<split>-<checkpoint>.json, the report to the same name with
      .html, and TensorBoard scalars to RUN/logs/eval_<split>.
    """
    # Checked before the slow model load.
    if report_images is not None and report_images < 0:
        raise ValueError(f"report_images (--report-images) must be >= 0, got {report_images}")
    decode.pop("num_captions", None)  # the best caption is scored
    settings = run_loader.load_config(run_dir).decode.resolve(num_captions=1, **decode)
    manifest = run_loader.load_manifest(run_dir, data_dir)
    if not manifest.split(split).num_images:  # before the slow model load
        others = [s for s, info in manifest.splits.items() if info.num_images]
        raise ValueError(f"the {split} split of {manifest.data_dir} has no images, so there is nothing to evaluate; "
                         f"evaluate another split (--split {' or '.join(others)}) or re-convert with a {split} split")
    captioner = TrainedCaptioner.from_run_dir(run_dir, checkpoint)
    model, config, vocab, checkpoint = captioner.model, captioner.config, captioner.vocab, captioner.checkpoint
    sizes = run_loader.load_tensor_sizes(run_dir)
    report_images = config.eval.report_images if report_images is None else report_images
    # The maps come from the very search that captions (only the report's rows will show them).
    with_attention = captioner.attention_grid is not None and report_images > 0

    @tf.function(reduce_retracing=True)
    def run_batch(inputs, targets):
        # Perplexity and captions in one pass, so each image is decoded once.
        nll, tokens = batch_nll_sums(model, inputs, targets)
        result = captioner.generate(inputs["image"], settings, attention=with_attention)
        out = (nll, tokens, captioner.ids_to_text(result.ids[:, 0]), result.scores[:, 0])
        if with_attention:  # [B, T, h*w] and [B, T]: each position's map and word ("" for none)
            out += (result.traces[:, 0], vocab.ids_to_words(result.ids[:, 0]))
        return out

    dataset = make_dataset(config, manifest, vocab, split, training=False, sizes=sizes,
                           batch_size=config.eval.batch_size, with_ids=True)
    total_nll, total_tokens = 0.0, 0
    references, candidates, scores, attention = {}, {}, {}, {}
    began = time.time()
    for inputs, targets, meta in dataset:
        nll, tokens, texts, best, *maps = run_batch(inputs, targets)
        total_nll += float(nll)
        total_tokens += int(tokens)
        maps = [m.numpy() for m in maps]
        for i, (image_id, refs, text, score) in enumerate(zip(meta["image_id"].numpy(), meta["captions"].numpy(),
                                                              texts.numpy(), best.numpy())):
            key = image_id.decode("utf-8")
            if key in references:  # a duplicate record; the first one counts
                continue
            references[key] = [r.decode("utf-8") for r in refs if r]
            candidates[key] = text.decode("utf-8")
            scores[key] = float(score)
            if maps:  # the caption's words' maps, [words, h, w], float16 (5,000 images x 20 words x 64 cells: 13 MB)
                traces, words = maps[0][i], maps[1][i]
                attention[key] = traces[words != b""].reshape((-1, *captioner.attention_grid)).astype("float16")
    if not references:
        raise ValueError(f"split {split!r} has no images to evaluate")
    caption_scores = metrics_lib.score_captions(references, candidates)
    notes = caption_scores.notes
    result = {"perplexity": metrics_lib.perplexity(total_nll, total_tokens), **caption_scores.metrics,
              "num_images": len(references)}
    result = {k: result[k] for k in RESULT_KEYS}

    json_path = json_path or os.path.join(run_dir, METRICS_FILE)
    write_json(json_path, result)
    details_dir = os.path.join(run_dir, "eval")
    io_utils.makedirs(details_dir)
    details = os.path.join(details_dir, f"{split}-{os.path.basename(checkpoint)}.json")
    cider = caption_scores.per_image_cider
    content = {"checkpoint": checkpoint, "split": split, "metrics": result, "notes": notes,
               "beam_size": settings.beam_size, "max_length": settings.max_length,
               "length_normalization": settings.length_normalization, "strategy": settings.strategy,
               "seconds": time.time() - began,
               "captions": {k: {"generated": candidates[k], "score": scores[k], "cider": cider[k],
                                "references": references[k]} for k in sorted(candidates)}}
    write_json(details, content)
    report = os.path.splitext(details)[0] + ".html"
    eval_report.write_report(report, content, manifest.files(split), max_pixels=DEFAULT_MAX_IMAGE_PIXELS,
                             report_images=report_images, attention=attention or None)
    _write_summaries(run_dir, split, checkpoint, result)
    if verbose:
        print(f"evaluated {checkpoint} on {split} ({len(references)} images, {total_tokens} tokens, "
              f"{time.time() - began:.1f}s)")
        for k in RESULT_KEYS:
            v = result[k]
            print(f"  {k:<10} {v:.4f}" if isinstance(v, float) else f"  {k:<10} {v}")
        for note in notes:
            print(f"  note: {note}")
        print(f"metrics: {json_path}\ncaptions: {details}\nreport: {report}", flush=True)
    return result


def checkpoint_epoch(checkpoint: str) -> int:
    """The epochs a checkpoint had finished (its `epoch` variable): the TensorBoard step of its
    metrics, the step the training and validation scalars of that epoch use."""
    try:
        return int(tf.train.load_variable(checkpoint, "epoch/.ATTRIBUTES/VARIABLE_VALUE"))
    except (tf.errors.NotFoundError, ValueError):  # no such variable: the number of ckpt-N, an epoch too
        number = checkpoint.rsplit("-", 1)[-1]
        return int(number) if number.isdigit() else 0


def _write_summaries(run_dir: str, split: str, checkpoint: str, result: dict) -> None:
    """RUN/logs/eval_<split>: `metrics/<name>` for each computed metric, at the checkpoint's epoch."""
    writer = tf.summary.create_file_writer(os.path.join(run_dir, run_layout.LOGS, f"eval_{split}"))
    step = checkpoint_epoch(checkpoint)
    with writer.as_default():
        for key, value in result.items():
            if key != "num_images" and value is not None:
                tf.summary.scalar(f"metrics/{key}", value, step=step)
    writer.close()


def watch(run_dir: str, split: str = "val", *, poll_seconds: float = 30.0, idle_timeout: float = 3600.0,
          **kwargs) -> dict | None:
    """Evaluates each new latest checkpoint; returns when training has finished
    and its last checkpoint is evaluated, or when no new checkpoint came for
    `idle_timeout` seconds. Returns the last metrics (None if none)."""
    evaluated, last, last_change = None, None, time.time()
    while True:
        latest = tf.train.latest_checkpoint(checkpoints_lib.checkpoint_dir(run_dir))
        if latest is not None and latest != evaluated:
            last = evaluate(run_dir, split, checkpoint=latest, **kwargs)
            evaluated, last_change = latest, time.time()
        if run_layout.read_state(run_dir).get("finished") and latest == evaluated:
            print("training has finished; watch ends", flush=True)
            return last
        if time.time() - last_change > idle_timeout:
            print(f"no new checkpoint for {idle_timeout:.0f}s; watch ends", flush=True)
            return last
        time.sleep(poll_seconds)
