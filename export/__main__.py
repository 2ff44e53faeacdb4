"""python -m export --run-dir RUN --out DIR [--name caption] [--model-version N] ... — argument parsing only."""

from __future__ import annotations

import argparse
import sys

from caption_app import cli, quiet
from caption_app.inference import settings as decoding


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
        description="Export a trained run dir as a TF Serving SavedModel: DIR/<name>/<version>/.",
        formatter_class=cli.HelpFormatter)
    cli.add_common_arguments(p)
    p.add_argument("--run-dir", required=True, help="a trained run dir")
    p.add_argument("--out", required=True, help="parent of the model base path (DIR/<name> is served)")
    p.add_argument("--name", default="caption", help="model name (default: caption)")
    p.add_argument("--model-version", type=int, default=None,
                   help="the SavedModel's version number (default: the next free one); an existing version is "
                        "never overwritten")
    p.add_argument("--version", nargs="?", type=int, action=_Version, metavar="N",
                   help="alone: print this tool's version and exit; with N: the same as --model-version N")
    decoding.add_arguments(p)
    p.add_argument("--checkpoint", default=None, help="checkpoint path (default: the run's latest)")
    p.add_argument("--max-image-pixels", type=int, default=None,
                   help="serving_default answers valid=false, without decoding, for images whose header "
                        "declares more pixels (width x height; default 40000000)")
    p.add_argument("--no-warmup", action="store_true", help="do not write assets.extra/tf_serving_warmup_requests")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    quiet.import_tensorflow(args.verbose)
    from caption_app.data.image_bytes import DEFAULT_MAX_IMAGE_PIXELS
    from export.saved_model import SIGNATURES, export

    try:
        path = export(args.run_dir, args.out, name=args.name, version=args.model_version,
                      checkpoint=args.checkpoint, warmup=not args.no_warmup,
                      max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS if args.max_image_pixels is None
                      else args.max_image_pixels, **decoding.from_arguments(args))
    except (ValueError, OSError, RuntimeError) as err:  # incl. FileNotFoundError, FileExistsError
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported {path}")
    print(f"signatures: {', '.join(SIGNATURES)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
