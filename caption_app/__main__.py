"""python -m caption_app train | evaluate | caption | cache-features | import-im2txt — argument parsing only."""

from __future__ import annotations

import argparse
import json
import sys

from caption_app import decoding


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m caption_app", description="Show-and-Tell image captioning.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train (or resume) a captioner")
    t.add_argument("--config", default="shapes", help="preset name: shapes, im2txt, tiny")
    t.add_argument("--data", required=True, help="converted data dir (manifest.json, vocab.txt, shards)")
    t.add_argument("--run-dir", required=True)
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=3 (repeatable)")
    t.add_argument("--quiet", action="store_true", help="no per-epoch Keras lines")

    f = sub.add_parser("cache-features", help="compute the frozen backbone's features once (train.feature_cache)")
    f.add_argument("--config", default="shapes", help="preset name: shapes, im2txt, tiny")
    f.add_argument("--data", required=True, help="converted data dir")
    f.add_argument("--run-dir", required=True, help="the run dir training will use (the cache goes inside)")
    f.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="the same overrides as for train (train.feature_cache=true is needed)")

    e = sub.add_parser("evaluate", help="perplexity + BLEU/METEOR/ROUGE-L/CIDEr, once")
    e.add_argument("--run-dir", required=True)
    e.add_argument("--split", default="test")
    e.add_argument("--data", default=None, help="data dir (default: the one the run trained on)")
    e.add_argument("--json", default=None, help="metrics file (default RUN/metrics.json)")
    e.add_argument("--checkpoint", default=None, help="checkpoint path (default: the latest)")
    decoding.add_arguments(e, num_captions=False)
    e.add_argument("--report-images", type=int, default=None,
                   help="thumbnails in the HTML report, worst images first (default: the run's eval.report_images)")
    e.add_argument("--watch", action="store_true",
                   help="re-evaluate new checkpoints until training has finished")
    e.add_argument("--poll-seconds", type=float, default=30.0)
    e.add_argument("--idle-timeout", type=float, default=3600.0,
                   help="with --watch: stop after this many seconds without a new checkpoint")

    c = sub.add_parser("caption", help="caption image files, folders or globs")
    c.add_argument("--run-dir", required=True)
    c.add_argument("images", nargs="+")
    decoding.add_arguments(c)
    c.add_argument("--max-image-pixels", type=int, default=None,
                   help="images whose header declares more pixels (width x height) are reported, not decoded "
                        "(default 40000000)")
    c.add_argument("--json", action="store_true", help="print JSON")

    i = sub.add_parser("import-im2txt", help="an im2txt checkpoint + word_counts.txt -> a run dir (docs/im2txt.md)")
    i.add_argument("--checkpoint", required=True, help="im2txt checkpoint prefix (e.g. model.ckpt-2000000) or dir")
    i.add_argument("--word-counts", required=True, help="its word_counts.txt")
    i.add_argument("--run-dir", required=True, help="the run dir to write (new or empty)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            from caption_app import config as config_lib
            from caption_app.train import train

            config = config_lib.override(config_lib.get_preset(args.config), args.set)
            history = train(config, args.data, args.run_dir, verbose=0 if args.quiet else 2)
            print(f"trained {history['epochs_done']} epochs in {history['seconds']:.0f}s; "
                  f"val perplexity {history['val_perplexity']}; run dir: {args.run_dir}")
        elif args.command == "cache-features":
            from caption_app import config as config_lib
            from caption_app.feature_cache import cache_features

            config = config_lib.override(config_lib.get_preset(args.config), args.set)
            print(f"feature cache ready: {cache_features(config, args.data, args.run_dir)}")
        elif args.command == "evaluate":
            from caption_app import evaluate as evaluate_lib

            kwargs = dict(data_dir=args.data, json_path=args.json, beam_size=args.beam_size,
                          max_length=args.max_length, length_normalization=args.length_normalization,
                          report_images=args.report_images)
            if args.watch:
                evaluate_lib.watch(args.run_dir, args.split, poll_seconds=args.poll_seconds,
                                   idle_timeout=args.idle_timeout, **kwargs)
            else:
                evaluate_lib.evaluate(args.run_dir, args.split, checkpoint=args.checkpoint, **kwargs)
        elif args.command == "caption":
            from caption_app.caption import caption_files
            from caption_app.data.image_bytes import DEFAULT_MAX_IMAGE_PIXELS

            results = caption_files(args.run_dir, args.images, beam_size=args.beam_size,
                                    max_length=args.max_length, length_normalization=args.length_normalization,
                                    num_results=args.num_captions,
                                    max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS if args.max_image_pixels is None
                                    else args.max_image_pixels)
            if args.json:
                print(json.dumps(results, indent=2))
            else:
                for r in results:
                    print(r["image"])
                    if "error" in r:
                        print(f"  error: {r['error']}")
                        continue
                    for i, c in enumerate(r["captions"], 1):
                        print(f"  {i}. {c['caption']}  (log p = {c['log_prob']:.3f})")
            failed = sum("error" in r for r in results)
            if failed:
                captioned = len(results) - failed
                print(f"{failed} of {len(results)} failed"
                      + ("; nothing was captioned" if not captioned else f"; {captioned} captioned"), file=sys.stderr)
                return 1
        elif args.command == "import-im2txt":
            from caption_app import im2txt_import

            record = im2txt_import.import_im2txt(args.checkpoint, args.word_counts, args.run_dir)
            print(im2txt_import.describe(record, args.run_dir))
    except (ValueError, OSError, RuntimeError) as err:  # incl. FileNotFoundError, FileExistsError
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # a TensorFlow OpError (not a ValueError): still one line, no traceback
        tf = sys.modules.get("tensorflow")
        if tf is None or not isinstance(err, tf.errors.OpError):
            raise
        print(f"error: {type(err).__name__}: {(err.message or str(err)).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
