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
    r"|NodeDef mentions attribute Truncate which is not in the op definition"  # the LiteRT converter, harmless
    r"|PTBTokenizer tokenized \d+ tokens")

# Where a line, or a progress bar's update, ends (tqdm ends none with a newline but starts each with \r).
_LINE_END = re.compile(rb"\r\n|\n|\r")
# The longest unfinished line held back to be judged: noise lines are short, so a longer one
# (a huge repr, a line without end) is passed through as it comes, undecided, in bounded memory.
MAX_HELD_LINE = 1 << 20


def wants_quiet(verbose: bool) -> bool:
    """True unless `--verbose` was given or the user set TF_CPP_MIN_LOG_LEVEL themselves."""
    return not verbose and LOG_LEVEL_VAR not in os.environ


class LineFilter:
    """Splits a byte stream into lines (and \\r progress updates) and drops those `noise`
    matches; everything else comes out byte for byte, in order.

    Linear in its input: each chunk is scanned once for line ends, each finished line
    searched once; the unfinished line is kept as a list of pieces (never re-joined per
    chunk). A line longer than `max_held` is passed through undecided (noise lines are
    short), so at most `max_held` bytes are held. `scanned` counts the bytes the regular
    expressions looked at (the tests check it stays proportional to the input).
    """

    def __init__(self, noise: re.Pattern = NOISE, max_held: int = MAX_HELD_LINE):
        self.noise, self.max_held = noise, max_held
        self._held: list[bytes] = []  # the unfinished line's pieces
        self._held_bytes = 0
        self._cr_pending = False  # the held line ended with the chunk's last byte, a \r
        self._passing = False  # the unfinished line went over max_held: its rest goes through as it comes
        self.scanned = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        """The pieces to write out now, given the next `chunk` of the stream."""
        out: list[bytes] = []
        start = 0
        if self._cr_pending:  # the last chunk ended with \r: a \n here belongs to that line end
            self._cr_pending = False
            if chunk.startswith(b"\n"):
                self._hold(b"\n", out)
                start = 1
            self._end_line(out)
        self.scanned += len(chunk) - start
        for match in _LINE_END.finditer(chunk, start):
            end = match.end()
            self._hold(chunk[start:end], out)
            start = end
            if end == len(chunk) and match.group() == b"\r":
                self._cr_pending = True
            else:
                self._end_line(out)
        if start < len(chunk):
            self._hold(chunk[start:], out)
        return out

    def finish(self) -> list[bytes]:
        """What is left at the end of the stream (a last line without an end)."""
        out: list[bytes] = []
        self._cr_pending = False
        self._end_line(out)
        return out

    def _hold(self, piece: bytes, out: list[bytes]) -> None:
        if self._passing:
            out.append(piece)
            return
        self._held.append(piece)
        self._held_bytes += len(piece)
        if self._held_bytes > self.max_held:  # too long to be noise: pass it on undecided
            out.extend(self._held)
            self._held, self._held_bytes, self._passing = [], 0, True

    def _end_line(self, out: list[bytes]) -> None:
        if self._held:
            line = b"".join(self._held)
            self.scanned += len(line)
            if not self.noise.search(line.decode("utf-8", errors="replace")):
                out.append(line)
        self._held, self._held_bytes, self._passing = [], 0, False


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
        lines = LineFilter(self.noise)
        while True:
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            for piece in lines.feed(chunk):
                os.write(out_fd, piece)
        for piece in lines.finish():
            os.write(out_fd, piece)
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
