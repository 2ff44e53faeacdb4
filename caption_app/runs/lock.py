"""FolderLock: one writer per folder; RunDirLock is it for run dirs (`train`, `cache-features`).

tfrecords_tools takes the same lock on a conversion's --out (`layout.out_lock`,
OUT/.convert.lock, removed on release). The lock is `fcntl.flock` on `RUN/run.lock`, whose content names the holder
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


class FolderLocked(CaptionAppError, RuntimeError):
    """Another process holds a folder's lock (the message names it and the holder)."""


class RunDirLocked(FolderLocked):
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


class FolderLock:
    """Holds `FOLDER/lock_file` from `acquire` until `release` (or the process's end).

    The one lock of the project (see the module docstring): `RunDirLock` for run dirs,
    tfrecords_tools' `layout.out_lock` for a conversion's --out.

    Args:
      folder: an existing directory.
      command: what the holder does ("train", "tfrecords_tools jsonl"), for the message.
      lock_file: the lock file's name inside `folder`.
      what: how a message names the folder ("run dir", "--out").
      advice: the refusal's end: what the second writer can do.
      error: the exception a refusal raises (a FolderLocked or another class taking one message).
      remove_on_release: delete the lock file on release, so the folder keeps nothing of the
        lock. Safe with flock: an acquirer checks, once it holds the lock, that the path still
        names the file it locked, and starts again if the file was removed meanwhile.
    """

    def __init__(self, folder: str, command: str, *, lock_file: str = LOCK_FILE, what: str = "run dir",
                 advice: str = "", error: type[Exception] = FolderLocked, remove_on_release: bool = False):
        self.folder, self.command, self.what, self.advice, self.error = folder, command, what, advice, error
        self.remove_on_release = remove_on_release
        self.path = os.path.join(folder, lock_file)
        self._fd: int | None = None

    def _read_holder(self, fd: int) -> dict:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            text = os.read(fd, 65536).decode("utf-8", "replace")
            holder = json.loads(text) if text.strip() else {}
            return holder if isinstance(holder, dict) else {}
        except (OSError, ValueError):
            return {}

    def _open_locked(self) -> int:
        """An fd of the lock file, flock'ed (raises `error` when another process holds it)."""
        for _ in range(100):  # a file removed by its releasing holder between open and flock: again
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                holder = self._read_holder(fd)
                os.close(fd)
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise self.error(
                    f"{self.what} {self.folder} is in use by {describe(holder) if holder else 'another process'}"
                    + (f"; {self.advice}" if self.advice else "")) from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)
        raise self.error(f"{self.what} {self.folder}: its lock file {self.path} keeps being replaced; "
                         "stop the other writer and run again")

    def acquire(self) -> "FolderLock":
        """Takes the lock or raises `error` naming the holder (never waits).

        A folder on a URL is not locked (see the module's docstring): one note, nothing written.
        """
        if io_utils.is_remote(self.folder):
            print(f"note: {self.folder} is not on a local file system, so it is not locked against a second "
                  f"{self.command}; run one writer at a time", file=sys.stderr, flush=True)
            return self
        fd = self._open_locked()
        previous = self._read_holder(fd)
        if previous.get("pid"):
            same_host = previous.get("host") == socket.gethostname()
            if same_host and previous.get("pid") != os.getpid() and not _alive(int(previous["pid"])):
                print(f"note: taking over the lock of {self.folder} left by {describe(previous)}, which is "
                      "no longer running", file=sys.stderr, flush=True)
            elif not same_host:
                print(f"note: taking over the lock of {self.folder} last held by {describe(previous)} "
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
        """Releases the lock; the file stays, emptied (no holder), unless `remove_on_release`."""
        if self._fd is None:
            return
        try:
            if self.remove_on_release:
                os.remove(self.path)  # still locked: whoever opened it meanwhile sees it gone and opens again
            else:
                os.ftruncate(self._fd, 0)
        except OSError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire() if self._fd is None else self

    def __exit__(self, *exc) -> None:
        self.release()


class RunDirLock(FolderLock):
    """Holds `RUN/run.lock` from `acquire` until `release` (or the process's end).

    Args:
      run_dir: an existing directory.
      command: what the holder does ("train", "cache-features"), for the message.
    """

    def __init__(self, run_dir: str, command: str):
        super().__init__(run_dir, command, lock_file=LOCK_FILE, what="run dir", error=RunDirLocked,
                         advice="only one train or cache-features may write into a run dir. Wait for it to "
                                "finish (or stop it), or use another --run-dir")
        self.run_dir = run_dir
