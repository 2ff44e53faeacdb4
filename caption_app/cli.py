"""What every command-line tool's parser shares: help that shows defaults, --version, --verbose.

Imports nothing heavy: the parsers are built before TensorFlow is imported.
"""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to an option's help unless the help already says its default
    or there is none to show (None, False of a switch)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False, argparse.SUPPRESS) \
                or action.default == [] or not action.option_strings:
            return text
        return super()._get_help_string(action)


def add_common_arguments(parser: argparse.ArgumentParser, *, version: bool = False) -> None:
    """--verbose (and --version on a tool's top-level parser)."""
    if version:
        from caption_app import __version__

        parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--verbose", action="store_true",
                        help="keep TensorFlow's C++ start-up lines (oneDNN, CUDA probing) and its absl warnings; "
                             "a TF_CPP_MIN_LOG_LEVEL you set yourself is always kept")
