"""python -m caption_app train | evaluate | caption | cache-features | import-im2txt — argument parsing only."""

from __future__ import annotations

import argparse
import json
import os
import sys

from caption_app import cli, io_utils, quiet
from caption_app.inference import settings as decoding

PRESET_NAMES = ("shapes", "im2txt", "tiny")  # config.PRESETS' keys (config.py is not imported for --help)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m caption_app", description="Show-and-Tell image captioning.",
                                formatter_class=cli.HelpFormatter)
    cli.add_common_arguments(p, version=True)
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, **kwargs) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, formatter_class=cli.HelpFormatter, **kwargs)
        cli.add_common_arguments(parser)
        return parser

    def training(parser: argparse.ArgumentParser, set_help: str) -> None:
        parser.add_argument("--config", default=None,
                            help=f"a preset ({', '.join(PRESET_NAMES)}), a JSON config file such as an earlier "
                                 "run's RUN/config.json, or a run dir. Default: the run dir's own config when "
                                 "--run-dir already holds a run; a new run needs it")
        parser.add_argument("--data", default=None,
                            help="converted data dir (manifest.json, vocab.txt, shards). Default: the data the run "
                                 "dir's run trained on; a new run needs it")
        parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)

    t = command("train", help="train (or resume) a captioner")
    training(t, "override a config value, e.g. --set train.epochs=3 (repeatable)")
    t.add_argument("--run-dir", required=True, help="where checkpoints, logs and config.json go; an existing "
                                                    "run dir resumes where it stopped")
    t.add_argument("--quiet", action="store_true",
                   help="no Keras progress (default: a progress bar on a terminal, one line per epoch otherwise)")

    f = command("cache-features", help="compute the frozen backbone's features once (train.feature_cache)")
    training(f, "the same overrides as for train (train.feature_cache=true is needed)")
    f.add_argument("--run-dir", required=True, help="the run dir training will use (the cache goes inside)")

    e = command("evaluate", help="perplexity + BLEU/METEOR/ROUGE-L/CIDEr, once")
    e.add_argument("--run-dir", required=True, help="a trained run dir")
    e.add_argument("--split", default="test", help="the data split to score: train, val or test")
    e.add_argument("--data", default=None, help="data dir (default: the one the run trained on)")
    e.add_argument("--json", default=None, help="metrics file (default RUN/metrics.json)")
    e.add_argument("--checkpoint", default=None, help="checkpoint path (default: the latest)")
    decoding.add_arguments(e, num_captions=False)
    e.add_argument("--report-images", type=int, default=None,
                   help="thumbnails in the HTML report, worst images first (default: the run's eval.report_images)")
    e.add_argument("--watch", action="store_true",
                   help="re-evaluate new checkpoints until training has finished")
    e.add_argument("--poll-seconds", type=float, default=30.0,
                   help="with --watch: seconds between looks for a new checkpoint")
    e.add_argument("--idle-timeout", type=float, default=3600.0,
                   help="with --watch: stop after this many seconds without a new checkpoint")

    c = command("caption", help="caption image files, folders or globs")
    c.add_argument("--run-dir", required=True, help="a trained run dir")
    c.add_argument("images", nargs="+", help="image files, folders (their images) or globs")
    decoding.add_arguments(c)
    c.add_argument("--max-image-pixels", type=int, default=None,
                   help="images whose header declares more pixels (width x height) are reported, not decoded "
                        "(default 40000000)")
    c.add_argument("--max-file-bytes", type=int, default=None,
                   help="image files larger than this are reported, not read (default 67108864, as the converters)")
    c.add_argument("--json", action="store_true", help="print JSON")
    c.add_argument("--attention", metavar="DIR", default=None,
                   help="also write DIR/<image file name>.png per image: the best caption's words in a strip, "
                        "each over the image where the model looked (runs with model.attention_size)")

    i = sub.add_parser("import-im2txt", help="an im2txt checkpoint + word_counts.txt -> a run dir (docs/im2txt.md)")
    i.add_argument("--checkpoint", required=True, help="im2txt checkpoint prefix (e.g. model.ckpt-2000000) or dir")
    i.add_argument("--word-counts", required=True, help="its word_counts.txt")
    i.add_argument("--run-dir", required=True, help="the run dir to write (new or empty)")
    return p


def _config(args):
    """--config (a preset, a JSON file or a run dir), else the existing run's own; then --set."""
    from caption_app import config as config_lib
    from caption_app.runs import layout as run_layout
    from caption_app.runs import loader as run_loader

    if args.config is not None:
        config = config_lib.from_name_or_file(args.config)
    elif os.path.isfile(os.path.join(args.run_dir, run_layout.CONFIG)):
        config = run_loader.load_config(args.run_dir)
        print(f"config: the run's own ({os.path.join(args.run_dir, run_layout.CONFIG)})", flush=True)
    else:
        raise ValueError(f"{args.run_dir} holds no run yet: give --config, a preset "
                         f"({', '.join(PRESET_NAMES)}) or a JSON config file such as an earlier RUN/config.json")
    return config_lib.override(config, args.set)


def _data_dir(args) -> str:
    """--data, else the data dir an existing run trained on (RUN/manifest.json)."""
    from caption_app.data import manifest as manifest_lib
    from caption_app.runs import layout as run_layout

    if args.data is not None:
        return args.data
    path = os.path.join(args.run_dir, manifest_lib.MANIFEST)
    if io_utils.isfile(os.path.join(args.run_dir, run_layout.CONFIG)) and io_utils.isfile(path):
        try:
            data_dir = io_utils.read_json(path).get("data_dir")
        except (OSError, ValueError, AttributeError) as err:  # not JSON, not UTF-8, not an object
            raise ValueError(f"{path} does not say which data the run trained on ({type(err).__name__}); "
                             "give --data, a converted data dir") from None
        if isinstance(data_dir, str) and data_dir:
            print(f"data: the run's own ({data_dir})", flush=True)
            return data_dir
    raise ValueError(f"{args.run_dir} holds no run trained here yet: give --data, a converted data dir "
                     "(python -m tfrecords_tools ... --out DIR)")


def _shown(path: str) -> str:
    """A path on one line: one with a newline or another control character in its name is escaped
    (`a\\nb.jpg`), so the output stays one line per image."""
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        return path.encode("unicode_escape").decode("ascii")
    return path


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    quiet.import_tensorflow(args.verbose)
    try:
        if args.command == "train":
            from caption_app.training.train import train

            config = _config(args)
            # Keras' progress bar (with ETA) on a terminal; one line per epoch in a log file.
            verbose = 0 if args.quiet else 1 if sys.stdout.isatty() else 2
            history = train(config, _data_dir(args), args.run_dir, verbose=verbose)
            if not history.get("already_finished"):
                perplexity = history["val_perplexity"]
                print(f"trained {history['epochs_done']} epochs in {history['seconds']:.0f}s; "
                      + ("no validation split" if perplexity is None else f"val perplexity {perplexity:.3f}")
                      + f"; run dir: {args.run_dir}")
        elif args.command == "cache-features":
            from caption_app.training.feature_cache import cache_features

            print(f"feature cache ready: {cache_features(_config(args), _data_dir(args), args.run_dir)}")
        elif args.command == "evaluate":
            from caption_app.evaluation import evaluate as evaluate_lib

            kwargs = dict(data_dir=args.data, json_path=args.json, report_images=args.report_images,
                          **decoding.from_arguments(args))
            if args.watch:
                evaluate_lib.watch(args.run_dir, args.split, poll_seconds=args.poll_seconds,
                                   idle_timeout=args.idle_timeout, **kwargs)
            else:
                evaluate_lib.evaluate(args.run_dir, args.split, checkpoint=args.checkpoint, **kwargs)
        elif args.command == "caption":
            from caption_app.inference.image_files import caption_files
            from caption_app.data.image_bytes import DEFAULT_MAX_IMAGE_PIXELS

            results = caption_files(args.run_dir, args.images,
                                    max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS if args.max_image_pixels is None
                                    else args.max_image_pixels, max_file_bytes=args.max_file_bytes,
                                    attention_dir=args.attention, **decoding.from_arguments(args))
            if args.json:
                print(json.dumps(results, indent=2))
            else:
                for r in results:
                    print(_shown(r["image"]))
                    if "error" in r:
                        print(f"  error: {r['error']}")
                        continue
                    for i, c in enumerate(r["captions"], 1):
                        print(f"  {i}. {c['caption']}  (log p = {c['log_prob']:.3f})")
                    if "attention" in r:
                        print(f"  attention: {_shown(r['attention'])}")
            failed = sum("error" in r for r in results)
            if failed:
                captioned = len(results) - failed
                print(f"{failed} of {len(results)} failed"
                      + ("; nothing was captioned" if not captioned else f"; {captioned} captioned"), file=sys.stderr)
                return 1
        elif args.command == "import-im2txt":
            from caption_app.runs import im2txt_import

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
