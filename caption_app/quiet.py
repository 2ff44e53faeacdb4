"""Keeps the command-line tools' stderr for what the user needs to read.

TensorFlow writes lines from C++ that say nothing actionable: the oneDNN
notices, CUDA probing (`failed call to cuInit` on hosts without a GPU
driver), the CPU-feature note; pycocoevalcap's PTB tokenizer writes a line per
call. Some are logged by absl before its logging is initialized, where
TF_CPP_MIN_LOG_LEVEL does not reach them, and some at ERROR level. So
`import_tensorflow` sets TF_CPP_MIN_LOG_LEVEL=2 and, for the rest of the
process, passes what is written to stderr (file descriptor 2, C++ included)
through a filter that drops exactly the lines `NOISE` matches; every other
line goes through as it comes.

The entry points call `import_tensorflow(verbose)` after parsing their
arguments (so `--help` never waits for TensorFlow). `--verbose`, or a
TF_CPP_MIN_LOG_LEVEL the user set, leaves everything as TensorFlow does it.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading

LOG_LEVEL_VAR = "TF_CPP_MIN_LOG_LEVEL"

# Start-up, probing and platform notices of TensorFlow's C++ runtime, and pycocoevalcap's tokenizer line.
NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called"
    r"|oneDNN custom operations are on|oneDNN supports DT_\w+ only on platforms with"
    r"|cudart_stub\.cc|Could not find cuda drivers"
    r"|cpu_feature_guard\.cc|^To enable the following instructions"
    r"|failed call to cuInit|cuda_(?:diagnostics|executor|platform|dnn|fft|blas)\.cc"
    r"|Unable to register cu(?:DNN|FFT|BLAS) factory"
    r"|computation_placer\.cc"
    r"|PTBTokenizer tokenized \d+ tokens")

# A line, or a progress bar's update (tqdm ends none with a newline but starts each with \r).
_SEGMENT = re.compile(rb"[^\r\n]*(?:\r\n|\n|\r)")


def wants_quiet(verbose: bool) -> bool:
    """True unless `--verbose` was given or the user set TF_CPP_MIN_LOG_LEVEL themselves."""
    return not verbose and LOG_LEVEL_VAR not in os.environ


class StderrFilter:
    """Drops the lines matching `noise` from file descriptor 2 between `start` and `stop`."""

    def __init__(self, noise: re.Pattern = NOISE):
        self.noise = noise
        self._saved: int | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "StderrFilter":
        sys.stderr.flush()
        self._saved = os.dup(2)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self._thread = threading.Thread(target=self._pump, args=(read_fd, os.dup(self._saved)),
                                        name="stderr-filter", daemon=True)
        self._thread.start()
        return self

    def _pump(self, read_fd: int, out_fd: int) -> None:
        pending = b""
        while True:
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            pending += chunk
            end = 0
            for match in _SEGMENT.finditer(pending):
                end = match.end()
                if not self.noise.search(match.group().decode("utf-8", errors="replace")):
                    os.write(out_fd, match.group())
            pending = pending[end:]
        if pending and not self.noise.search(pending.decode("utf-8", errors="replace")):
            os.write(out_fd, pending)
        os.close(read_fd)
        os.close(out_fd)

    def stop(self) -> None:
        """Puts stderr back and passes on what is still in the pipe (children holding it aside)."""
        if self._saved is None:
            return
        sys.stderr.flush()
        os.dup2(self._saved, 2)  # the pipe's last write end in this process closes: the pump ends
        os.close(self._saved)
        self._saved = None
        self._thread.join(timeout=5)


def import_tensorflow(verbose: bool = False) -> None:
    """Imports TensorFlow for a command-line tool, quietly (see the module docstring) unless
    `wants_quiet(verbose)` is False. Call it before anything else imports TensorFlow; called
    in a process that already has (a test calling `main`), it changes nothing."""
    if not wants_quiet(verbose) or "tensorflow" in sys.modules:
        return
    os.environ[LOG_LEVEL_VAR] = "2"  # C++ INFO and WARNING lines logged after start-up
    atexit.register(StderrFilter().start().stop)
    import tensorflow as tf

    tf.config.list_physical_devices()  # CUDA is probed now (not a context initialization)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)  # TensorFlow's Python-side absl warnings
