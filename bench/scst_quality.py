"""What self-critical training changed in the captions a person reads, on generated shapes sets.

    python bench/scst_quality.py DATA RUN [RUN ...]

For each evaluated run dir (`caption_app evaluate` or `bench/shapes_quality.py score` wrote
RUN/eval/test-<checkpoint>.json; the newest is read) prints one JSON line: BLEU-4, CIDEr, the
generator's ground truth scored by tfrecords_tools.shapes_report (exactly-right images, held-out
(colour, shape) pairs named right, attribute accuracies, distinct captions), plus

  bad_endings       captions whose last word is a/an/the/and/of/with (scst.BAD_ENDING_WORDS)
  shared_captions   distinct object sets whose caption another, different object set also got
                    (a collapse of content, unlike fewer wordings of the same set)
  mean_words        the mean caption length in words
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("runs", nargs="+")
    args = parser.parse_args()

    from caption_app.training.scst import bad_ending_share
    from tfrecords_tools import shapes as shapes_lib
    from tfrecords_tools import shapes_report

    with open(os.path.join(args.data, "manifest.json")) as f:
        info = json.load(f)["source_info"]
    truth = shapes_lib.load_objects(info.get("objects_file") or os.path.join(info["raw_dir"],
                                                                              shapes_lib.OBJECTS_FILE))
    for run in args.runs:
        path = shapes_report.captions_file(run)
        with open(path) as f:
            details = json.load(f)
        captions = shapes_report.load_captions(path)
        report = shapes_report.score(captions, truth)
        sets_of_caption = collections.defaultdict(set)
        for name, caption in captions.items():
            entry = truth["images"].get(os.path.basename(name))
            if entry is not None:
                sets_of_caption[caption].add(tuple(tuple(o) for o in entry["objects"]))
        shared = sum(len(sets) for sets in sets_of_caption.values() if len(sets) > 1)
        texts = list(captions.values())
        print(json.dumps({"run": run, "checkpoint": os.path.basename(details["checkpoint"]),
                          "BLEU-4": round(details["metrics"]["BLEU-4"], 4),
                          "CIDEr": round(details["metrics"]["CIDEr"], 4),
                          **{k: round(v, 4) for k, v in report.summary().items()},
                          "distinct_captions": report.distinct_captions,
                          "distinct_object_sets": report.distinct_object_sets,
                          "held_out": f"{report.held_out_objects[0]}/{report.held_out_objects[1]}",
                          "bad_endings": round(bad_ending_share(texts), 4),
                          "shared_captions": shared,
                          "mean_words": round(sum(len(t.split()) for t in texts) / max(1, len(texts)), 2)}),
              flush=True)


if __name__ == "__main__":
    main()
