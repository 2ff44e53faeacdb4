"""python -m export [--format saved_model|litert] --run-dir RUN --out DIR [--name NAME] [--model-version N] ... — argument parsing only."""

from __future__ import annotations

import argparse
import sys

from caption_app import cli, quiet
from caption_app.inference import settings as decoding

FORMATS = ("saved_model", "litert")
LITERT_VARIANTS = ("float32", "float16", "int8")  # export/litert.py's (this module imports no TensorFlow)


class _Version(argparse.Action):
    """`--version` prints the program's version, as on the other tools; `--version N` (this tool's
    flag for the model version before --model-version) still picks the model version."""

    def __call__(self, parser, namespace, value, option_string=None):
        if value is None:
            from caption_app import __version__

            print(f"{parser.prog} {__version__}")
            parser.exit()
        namespace.model_version = value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export",
        description="Export a trained run dir as a TF Serving SavedModel (DIR/<name>/<version>/), or as a LiteRT "
                    "package for on-device captioning (--format litert; docs/serving.md).",
        formatter_class=cli.HelpFormatter)
    cli.add_common_arguments(p)
    p.add_argument("--run-dir", required=True, help="a trained run dir")
    p.add_argument("--out", required=True, help="parent of the model base path (DIR/<name> is served)")
    p.add_argument("--format", choices=FORMATS, default="saved_model",
                   help="saved_model (default): TF Serving's; litert: .tflite models, the vocabulary, litert.json "
                        "and a runner (caption.py) that needs numpy, Pillow and ai-edge-litert only")
    p.add_argument("--name", default=None,
                   help="model name (default: caption; caption_litert for --format litert, so that TF Serving, "
                        "which loads every integer-named dir under DIR/caption, never meets a LiteRT package)")
    p.add_argument("--model-version", type=int, default=None,
                   help="the export's version number (default: the next free one); an existing version is "
                        "never overwritten")
    p.add_argument("--version", nargs="?", type=int, action=_Version, metavar="N",
                   help="alone: print this tool's version and exit; with N: the same as --model-version N")
    decoding.add_arguments(p)
    p.add_argument("--checkpoint", default=None, help="checkpoint path (default: the run's latest)")
    p.add_argument("--max-image-pixels", type=int, default=None,
                   help="serving_default answers valid=false (a LiteRT package's runner: an error), without "
                        "decoding, for images whose header declares more pixels (width x height; default 40000000)")
    p.add_argument("--no-warmup", action="store_true", help="do not write assets.extra/tf_serving_warmup_requests")
    p.add_argument("--variant", action="append", choices=LITERT_VARIANTS, default=None,
                   help="--format litert: the weights to convert, repeatable (default: all of float32, float16 "
                        "and int8, dynamic-range)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.variant and args.format != "litert":
        parser.error("--variant is for --format litert")
    quiet.import_tensorflow(args.verbose)
    from caption_app.data.image_bytes import DEFAULT_MAX_IMAGE_PIXELS

    pixels = DEFAULT_MAX_IMAGE_PIXELS if args.max_image_pixels is None else args.max_image_pixels
    common = dict(version=args.model_version, checkpoint=args.checkpoint, max_image_pixels=pixels,
                  **decoding.from_arguments(args))
    try:
        if args.format == "litert":
            from export import litert

            path = litert.export(args.run_dir, args.out, name=args.name or litert.DEFAULT_NAME,
                                 variants=tuple(args.variant or LITERT_VARIANTS), **common)
            what = f"run it: python {path}/{litert.RUNNER_FILE} IMAGE..."
            note = litert.search_note(path)
            what += f"\nnote: {note}" if note else ""
        else:
            from export.saved_model import SIGNATURES, export

            path = export(args.run_dir, args.out, name=args.name or "caption", warmup=not args.no_warmup, **common)
            what = f"signatures: {', '.join(SIGNATURES)}"
    except (ValueError, OSError, RuntimeError) as err:  # incl. FileNotFoundError, FileExistsError
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported {path}")
    print(what)
    return 0


if __name__ == "__main__":
    sys.exit(main())
