"""RunDirLock: one writer per run dir (`train`, `cache-features`).

The lock is `fcntl.flock` on `RUN/run.lock`, whose content names the holder
as JSON ({"host", "pid", "started", "command"}). flock rather than an
O_EXCL file: the kernel releases it when its process dies however it dies
(SIGKILL, OOM, power loss of a local disk), so a stale lock never blocks a
restart and no pid guessing decides who may write. The JSON is only for the
message: a second writer is refused at once, naming the holder; a lock file
left by a process that is gone is taken over with a note naming it.

On network file systems flock is as good as the server's locking (Linux NFS
maps it to POSIX locks). Only the chief of a multi-worker run takes it.
A run dir on a URL (gs://, s3://, hdfs://) is not locked: object stores have
no lock that dies with its holder (and no exclusive create in tf.io.gfile), so
`acquire` says so in one line and writes nothing; keep to one writer yourself.
No TensorFlow here: a lock is taken (and tested) in milliseconds.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys

from caption_app import io_utils
from caption_app.errors import CaptionAppError

LOCK_FILE = "run.lock"


class RunDirLocked(CaptionAppError, RuntimeError):
    """Another process is writing into the run dir."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def describe(holder: dict) -> str:
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started "
            f"{holder.get('started', '?')}" + (f" ({holder['command']})" if holder.get("command") else ""))


class RunDirLock:
    """Holds `RUN/run.lock` from `acquire` until `release` (or the process's end).

    Args:
      run_dir: an existing directory.
      command: what the holder does ("train", "cache-features"), for the message.
    """

    def __init__(self, run_dir: str, command: str):
        self.run_dir, self.command = run_dir, command
        self.path = os.path.join(run_dir, LOCK_FILE)
        self._fd: int | None = None

    def _read_holder(self, fd: int) -> dict:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            text = os.read(fd, 65536).decode("utf-8", "replace")
            holder = json.loads(text) if text.strip() else {}
            return holder if isinstance(holder, dict) else {}
        except (OSError, ValueError):
            return {}

    def acquire(self) -> "RunDirLock":
        """Takes the lock or raises RunDirLocked naming the holder (never waits).

        A run dir on a URL is not locked (see the module's docstring): one note, nothing written.
        """
        if io_utils.is_remote(self.run_dir):
            print(f"note: {self.run_dir} is not on a local file system, so it is not locked against a second "
                  f"{self.command}; run one writer at a time", file=sys.stderr, flush=True)
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = self._read_holder(fd)
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise RunDirLocked(
                f"run dir {self.run_dir} is in use by {describe(holder) if holder else 'another process'}; "
                f"only one train or cache-features may write into a run dir. Wait for it to finish (or stop "
                f"it), or use another --run-dir") from None
        previous = self._read_holder(fd)
        if previous.get("pid"):
            same_host = previous.get("host") == socket.gethostname()
            if same_host and previous.get("pid") != os.getpid() and not _alive(int(previous["pid"])):
                print(f"note: taking over the lock of {self.run_dir} left by {describe(previous)}, which is "
                      "no longer running", file=sys.stderr, flush=True)
            elif not same_host:
                print(f"note: taking over the lock of {self.run_dir} last held by {describe(previous)} "
                      "(no longer held)", file=sys.stderr, flush=True)
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "command": self.command,
                  "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(holder) + "\n").encode("utf-8"))
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Releases the lock; the file stays (emptied: no holder)."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunDirLock":
        return self.acquire() if self._fd is None else self

    def __exit__(self, *exc) -> None:
        self.release()
