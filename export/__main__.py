"""python -m export --run-dir RUN --out DIR [--name caption] [--version N] ... — argument parsing only."""

from __future__ import annotations

import argparse
import sys

from caption_app import decoding


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export",
        description="Export a trained run dir as a TF Serving SavedModel: DIR/<name>/<version>/.")
    p.add_argument("--run-dir", required=True, help="a trained run dir")
    p.add_argument("--out", required=True, help="parent of the model base path (DIR/<name> is served)")
    p.add_argument("--name", default="caption", help="model name (default: caption)")
    p.add_argument("--version", type=int, default=None,
                   help="version number (default: the next free one); an existing version is never overwritten")
    decoding.add_arguments(p)
    p.add_argument("--checkpoint", default=None, help="checkpoint path (default: the run's latest)")
    p.add_argument("--max-image-pixels", type=int, default=None,
                   help="serving_default answers valid=false, without decoding, for images whose header "
                        "declares more pixels (width x height; default 40000000)")
    p.add_argument("--no-warmup", action="store_true", help="do not write assets.extra/tf_serving_warmup_requests")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from caption_app.data.image_bytes import DEFAULT_MAX_IMAGE_PIXELS
    from export.saved_model import SIGNATURES, export

    try:
        path = export(args.run_dir, args.out, name=args.name, version=args.version, beam_size=args.beam_size,
                      max_length=args.max_length, num_captions=args.num_captions,
                      length_normalization=args.length_normalization, checkpoint=args.checkpoint,
                      warmup=not args.no_warmup,
                      max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS if args.max_image_pixels is None
                      else args.max_image_pixels)
    except (ValueError, OSError, RuntimeError) as err:  # incl. FileNotFoundError, FileExistsError
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported {path}")
    print(f"signatures: {', '.join(SIGNATURES)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
