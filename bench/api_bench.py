"""Benchmark (not a test): the Python API's load and caption times on a trained run dir.

    python bench/api_bench.py RUN_DIR IMAGE... [--repeats 3] [--json out.json]

Times, in one fresh process: `import caption_app.api` (TensorFlow and Keras load),
`Captioner.load(RUN_DIR)` (config, vocabulary, model rebuilt, checkpoint restored,
the caption graphs traced), then `caption` of the given images (8 for the README
number) as files: the first call, the second, and `--repeats` more (median), and
the same images as decoded uint8 arrays. It also reports the graphs' tracing count
before and after the calls (it must not change) and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("images", nargs="+")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    load_before = os.getloadavg()

    began = time.perf_counter()
    import numpy as np
    from PIL import Image

    from caption_app import api
    imported = time.perf_counter() - began

    began = time.perf_counter()
    captioner = api.Captioner.load(args.run_dir)
    loaded = time.perf_counter() - began
    traced_at_load = captioner.tracing_count()

    def timed(batch) -> float:
        began = time.perf_counter()
        results = captioner.caption(batch)
        assert all(r.error is None for r in results), results
        return time.perf_counter() - began

    first = timed(args.images)
    second = timed(args.images)
    more = statistics.median(timed(args.images) for _ in range(args.repeats))
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in args.images]
    first_arrays = timed(arrays)
    more_arrays = statistics.median(timed(arrays) for _ in range(args.repeats))
    result = {
        "images": len(args.images), "import_s": imported, "load_s": loaded,
        "first_call_s": first, "second_call_s": second, f"median_of_{args.repeats}_more_s": more,
        "arrays_first_call_s": first_arrays, f"arrays_median_of_{args.repeats}_s": more_arrays,
        "tracing_count_at_load": traced_at_load, "tracing_count_after": captioner.tracing_count(),
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "cpus": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
