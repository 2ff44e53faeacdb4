"""The conversion as an Apache Beam pipeline: the same data dir, on any Beam runner.

    python -m tfrecords_tools SOURCE ... --out OUT --runner direct|DataflowRunner|FlinkRunner|SparkRunner \\
        [Beam pipeline options, e.g. --direct_num_workers=2 --direct_running_mode=multi_processing]

`writer.write_dataset(..., runner=...)` does everything it does for the
threaded converter (argument checks, `layout.check_out_dir`, the staging dir,
the source's own skips, duplicate ids, the "no train image" error,
`layout.write_vocab_and_manifest` and `layout.swap_in`, which moves the
manifest in last); only its image and caption pass runs here, as a pipeline:

1. the unique items (`items.unique_items`, on the launching machine: ids only)
   become a PCollection (`beam.Create`, then `Reshuffle` so that workers share it);
2. each worker reads and checks its images (`images.check_image`) and cleans
   their captions (`items.clean_captions`, a batch of images at a time: one
   tokenizer call), emitting the kept item (id, kept captions, checked size,
   re-encode reason) or why it was skipped; skips and re-encodes are counted
   per reason in Beam metrics ("skipped/REASON", "reencoded/REASON");
3. kept items are numbered within their split by input order and grouped into
   the threaded writer's shards (same names, same records per shard, same
   order: `records.shard_name`); the worker writing a shard reads its images
   again, as the threaded writer's second pass does (`images.stored_bytes`,
   re-encoded where needed; `items.serialize`: image bytes never go through
   the shuffle) and writes it
   with `layout.write_shard` (a `.tmp` name renamed when complete, so a
   retried bundle rewrites it whole);
4. train words are counted with `CombinePerKey(sum)`, words below
   `min_word_count` dropped (the vocabulary rule, `Vocabulary.build`, is applied
   again on what is left), the skip/re-encode/caption-cap counts combined with
   the threaded writer's examples (the first names in input order);
5. a last step writes those results to a summary file in the staging dir,
   which the launcher reads (`convert` returns what the threaded pass returns).

The launching machine and the workers must see the same file system for OUT and
the images (true for the DirectRunner; on Dataflow/Flink/Spark, a shared mount).
"""

from __future__ import annotations

import bisect
import collections
import heapq
import math
import os
from typing import Mapping, Sequence

try:
    import apache_beam as beam
    from apache_beam.metrics import Metrics
    from apache_beam.options.pipeline_options import PipelineOptions
except ImportError:  # an optional extra: `pip install .[beam]`
    beam = None

from caption_app import io_utils
from caption_app.data import manifest as manifest_lib
from caption_app.data import records
from caption_app.data import vocabulary as vocab_lib
from tfrecords_tools import images, items, layout, report
from tfrecords_tools.source_api import ConversionError, Item

RUNNERS = ("direct", "DataflowRunner", "FlinkRunner", "SparkRunner")
BATCH = 64  # images per worker call at most (one tokenizer call for their captions)
SUMMARY_FILE = "beam-summary.json"  # in the staging dir; read and deleted before the swap
_METRICS = "tfrecords_tools"
# Phases of the examples' order (the threaded writer adds them in this order).
_CHECK, _CAPTIONS = 1, 2


def check_available() -> None:
    """Raises ConversionError when apache-beam is not installed."""
    if beam is None:
        raise ConversionError("--runner needs Apache Beam: pip install -r requirements.txt "
                              "(or pip install '.[beam]')")


def pipeline_options(runner: str, pipeline_args: Sequence[str], num_workers: int | None) -> "PipelineOptions":
    """Beam options from --runner and the extra command-line options. "direct" is the
    DirectRunner, multi-process with `num_workers` (default: the CPUs) unless the
    options say otherwise."""
    check_available()
    if runner not in RUNNERS:
        raise ConversionError(f"--runner {runner!r}: use one of {', '.join(RUNNERS)}")
    args = list(pipeline_args)
    if runner == "direct":
        runner = "DirectRunner"
        if not any(a.startswith("--direct_num_workers") for a in args):
            args.append(f"--direct_num_workers={num_workers or os.cpu_count() or 1}")
        if not any(a.startswith("--direct_running_mode") for a in args):
            args.append("--direct_running_mode=multi_processing")
        if not any(a.startswith("--default_sdk_harness_log_level") for a in args):
            args.append("--default_sdk_harness_log_level=WARNING")  # not every worker's start-up INFO lines
    return PipelineOptions(args + [f"--runner={runner}"])


def convert(target: str, split_names: Sequence[str], items_by_split: Mapping[str, Sequence[Item]],
            skipped: report.Counted, *, options: "PipelineOptions", images_per_shard: int,
            settings: vocab_lib.TokenizerSettings, max_pixels: int, limits: images.ReadLimits,
            max_captions: int, min_word_count: int, verbose: bool = True) -> dict:
    """Runs the pipeline writing the shards into `target`; returns what the threaded
    pass (`writer._convert`) returns, with `skipped` holding every skip."""
    check_available()
    candidates = items.unique_items(split_names, items_by_split, skipped)
    work = [(split, pos, item) for pos, (split, item) in
            enumerate((split, item) for split in split_names for item in candidates[split])]
    check = _Check(settings=settings, max_pixels=max_pixels, limits=limits, max_captions=max_captions)
    p = beam.Pipeline(options=options)
    try:
        _build(p, work, check, target=target, limits=limits, images_per_shard=images_per_shard,
               min_word_count=min_word_count)
        result = p.run()
        result.wait_until_finish()
    except Exception as e:  # a worker's error, after the runner's retries: one line, no output written
        last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ConversionError(f"the Beam pipeline failed ({last}); nothing was written to the data dir. "
                              "Fix the cause and run again") from e
    if verbose:
        metrics = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(_METRICS))["counters"]
        line = ", ".join(f"{m.key.metric.name} {m.committed if m.committed is not None else m.attempted}"
                         for m in sorted(metrics, key=lambda m: m.key.metric.name))
        print(f"Beam metrics: {line or 'nothing counted'}")
    return _read_summary(target, split_names, skipped, max_captions)


def _build(p, work: list, check: "_Check", *, target: str, limits: images.ReadLimits, images_per_shard: int,
           min_word_count: int) -> None:
    """The pipeline's steps (see the module doc)."""
    checked = (p | "Items" >> beam.Create(work) | "Spread" >> beam.Reshuffle()
               | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=BATCH)
               | "CheckAndEncode" >> beam.ParDo(check).with_outputs("stats", main="records"))
    counts = checked.stats | "Counts" >> beam.CombineGlobally(_CountsFn())
    words = (checked.stats | "TrainWords" >> beam.FlatMap(lambda stats: stats["words"].items())
             | "CountWords" >> beam.CombinePerKey(sum)
             | "MinCount" >> beam.Filter(lambda wc: wc[1] >= min_word_count)
             | "Vocabulary" >> beam.combiners.ToDict())
    kept = checked.records
    positions = (kept | "Positions" >> beam.Map(lambda o: (o["split"], o["pos"]))
                 | "BySplit" >> beam.GroupByKey() | "Sort" >> beam.MapTuple(lambda s, ps: (s, sorted(ps))))
    shards = (kept | "ToShard" >> beam.Map(_to_shard, beam.pvalue.AsDict(positions), images_per_shard)
              | "ByShard" >> beam.GroupByKey()
              | "WriteShards" >> beam.ParDo(_WriteShard(target, limits))
              | "Shards" >> beam.combiners.ToList())
    (p | "Once" >> beam.Create([None])
     | "Summary" >> beam.Map(_write_summary, target, beam.pvalue.AsSingleton(counts),
                             beam.pvalue.AsSingleton(words), beam.pvalue.AsSingleton(shards)))


class _Check(beam.DoFn if beam else object):
    """A batch of items -> the kept items (main output), and one "stats" output
    per batch: skips and re-encodes (with the input positions of their examples),
    capped captions, longest caption per split, the train words. Captions are
    cleaned per batch: one tokenizer call for many images."""

    def __init__(self, *, settings, max_pixels, limits, max_captions):
        self.settings, self.max_pixels, self.limits, self.max_captions = settings, max_pixels, limits, max_captions

    def process(self, batch):
        batch = sorted(batch, key=lambda element: element[1])  # input order: examples as the threaded writer's
        stats = {"skipped": [], "reencoded": [], "cap": [0, 0, []], "max_words": {}, "max_captions": 0,
                 "words": collections.Counter(), "longest": collections.Counter()}
        survivors = collections.defaultdict(list)  # split -> [(pos, item, size, fix)]
        for split, pos, item in batch:
            reason, size, fix = images.check_image(item, self.max_pixels, self.limits)
            if reason:
                stats["skipped"].append((reason, 1, [((_CHECK, pos, 0), item.image_id)]))
                Metrics.counter(_METRICS, f"skipped/{reason}").inc()
                continue
            if fix:
                stats["reencoded"].append((fix, 1, [((_CHECK, pos, 0), item.image_id)]))
                Metrics.counter(_METRICS, f"reencoded/{fix}").inc()
            survivors[split].append((pos, item, size, fix))
        for split, group in survivors.items():
            skipped, cap = report.Counted(), report.CaptionCap(self.max_captions)
            kept, max_words, words, longest = items.clean_captions(
                split, [item for _, item, _, _ in group], settings=self.settings, max_captions=self.max_captions,
                skipped=skipped, caption_cap=cap)
            order = {}  # the names clean_captions counts -> their place in the input
            for pos, item, _, _ in group:
                order[item.image_id] = (_CAPTIONS, pos, 0)
                order.update({f"{item.image_id}#{i}": (_CAPTIONS, pos, i) for i in range(len(item.captions))})
            for reason, count in skipped.counts.items():
                stats["skipped"].append((reason, count, [(order[name], name) for name in skipped.examples[reason]]))
                Metrics.counter(_METRICS, f"skipped/{reason}").inc(count)
            stats["cap"][0] += cap.images
            stats["cap"][1] += cap.captions_dropped
            stats["cap"][2] += [(order[name], name) for name in cap.examples]
            stats["words"].update(words)
            stats["longest"].update(longest)
            if kept:
                stats["max_words"][split] = max_words
            by_id = {item.image_id: (pos, size, fix) for pos, item, size, fix in group}
            for item in kept:  # the image's bytes are read again where its shard is written
                pos, size, fix = by_id[item.image_id]
                stats["max_captions"] = max(stats["max_captions"], len(item.captions))
                yield {"split": split, "pos": pos, "item": item, "size": size, "fix": fix}
        stats["words"] = dict(stats["words"])
        stats["longest"] = dict(stats["longest"])
        yield beam.pvalue.TaggedOutput("stats", stats)


class _CountsFn(beam.CombineFn if beam else object):
    """Skips, re-encodes and capped captions per reason (count + the first names in
    input order), the longest caption per split, the most captions of an image."""

    def create_accumulator(self):
        return {"skipped": {}, "reencoded": {}, "cap": [0, 0, []], "max_words": {}, "max_captions": 0,
                "longest": {}}

    def add_input(self, acc, stats):
        return self.merge_accumulators([acc, {
            "skipped": _by_reason(stats["skipped"]), "reencoded": _by_reason(stats["reencoded"]),
            "cap": stats["cap"], "max_words": stats["max_words"], "max_captions": stats["max_captions"],
            "longest": stats["longest"]}])

    def merge_accumulators(self, accs):
        merged = self.create_accumulator()
        for acc in accs:
            for key in ("skipped", "reencoded"):
                for reason, (count, examples) in acc[key].items():
                    _add_reason(merged[key], reason, count, examples)
            merged["cap"][0] += acc["cap"][0]
            merged["cap"][1] += acc["cap"][1]
            merged["cap"][2] = heapq.nsmallest(report.NUM_EXAMPLES, merged["cap"][2] + list(acc["cap"][2]))
            for split, n in acc["max_words"].items():
                merged["max_words"][split] = max(merged["max_words"].get(split, 0), n)
            merged["max_captions"] = max(merged["max_captions"], acc["max_captions"])
            for words, images in acc["longest"].items():  # train images by their longest caption's words
                merged["longest"][words] = merged["longest"].get(words, 0) + images
        return merged

    def extract_output(self, acc):
        return acc


def _by_reason(events: list) -> dict:
    by_reason: dict = {}
    for reason, count, examples in events:
        _add_reason(by_reason, reason, count, examples)
    return by_reason


def _add_reason(by_reason: dict, reason: str, count: int, examples: list) -> None:
    old_count, old_examples = by_reason.get(reason, (0, []))
    by_reason[reason] = (old_count + count,
                         heapq.nsmallest(report.NUM_EXAMPLES, list(old_examples) + list(examples)))


def _to_shard(kept: dict, positions: Mapping[str, list[int]], images_per_shard: int):
    """((split, shard index, shard count), kept): the threaded writer's split of n records
    into ceil(n / images_per_shard) shards, records [n*k//S, n*(k+1)//S) in shard k."""
    split, pos = kept["split"], kept["pos"]
    in_split = positions[split]
    n = len(in_split)
    num_shards = math.ceil(n / images_per_shard)
    rank = bisect.bisect_left(in_split, pos)
    shard = min(rank * num_shards // n, num_shards - 1)
    while n * shard // num_shards > rank:
        shard -= 1
    while n * (shard + 1) // num_shards <= rank:
        shard += 1
    return (split, shard, num_shards), kept


class _WriteShard(beam.DoFn if beam else object):
    """One shard's records, in input order, into `target` (`layout.write_shard`): each
    image read again (`images.stored_bytes`: the checked bytes, re-encoded where needed),
    so image bytes never go through the runner's shuffle."""

    def __init__(self, target: str, limits: images.ReadLimits):
        self.target, self.limits = target, limits

    def process(self, element):
        (split, shard, num_shards), rows = element
        rows = sorted(rows, key=lambda row: row["pos"])
        name = records.shard_name(split, shard, num_shards)
        layout.write_shard(os.path.join(self.target, name), (self._record(row) for row in rows))
        yield {"split": split, "shard": shard, "name": name, "num_images": len(rows),
               "num_captions": sum(len(row["item"].captions) for row in rows)}

    def _record(self, row: dict) -> bytes:
        item = row["item"]
        data = images.stored_bytes(item, {item.image_id: (row["size"], row["fix"])}, self.limits)
        Metrics.counter(_METRICS, "images_written").inc()
        return items.serialize(item, data)


def _write_summary(_, target: str, counts: dict, words: dict, shards: list) -> None:
    """The pipeline's results, for the launcher (`_read_summary`); on any file system (io_utils)."""
    io_utils.write_json_atomic(os.path.join(target, SUMMARY_FILE),
                               {"counts": counts, "words": words, "shards": shards})


def _read_summary(target: str, split_names: Sequence[str], skipped: report.Counted, max_captions: int) -> dict:
    path = os.path.join(target, SUMMARY_FILE)
    summary = io_utils.read_json(path)
    io_utils.remove(path)
    counts = summary["counts"]
    for reason, (count, examples) in counts["skipped"].items():
        skipped.merge({reason: {"count": count, "examples": [name for _, name in examples]}})
    reencoded = report.Counted()
    for reason, (count, examples) in counts["reencoded"].items():
        reencoded.merge({reason: {"count": count, "examples": [name for _, name in examples]}})
    caption_cap = report.CaptionCap(max_captions)
    caption_cap.merge({"images_capped": counts["cap"][0], "captions_dropped": counts["cap"][1],
                       "examples": [name for _, name in counts["cap"][2]]})
    by_split = collections.defaultdict(list)
    for shard in summary["shards"]:
        by_split[shard["split"]].append(shard)
    splits_info = {}
    for split in split_names:
        shards = sorted(by_split[split], key=lambda s: s["shard"])
        splits_info[split] = manifest_lib.SplitInfo(
            num_images=sum(s["num_images"] for s in shards), num_captions=sum(s["num_captions"] for s in shards),
            files=tuple(s["name"] for s in shards))
    return {
        "splits": splits_info,
        "train_counts": collections.Counter(summary["words"]),
        "max_caption_words": counts["max_words"].get("train", 0),
        "max_captions_per_image": counts["max_captions"],
        "train_longest_caption_words": collections.Counter({int(k): v for k, v in counts["longest"].items()}),
        "skipped": skipped,
        "reencoded": reencoded,
        "caption_cap": caption_cap,
    }
