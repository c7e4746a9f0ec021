"""The run folder's life cycle: one writer at a time, and a consistent state at every instant.

A run folder is in one of these states (``state``):

- ``empty``: nothing of a run (a missing folder, or only leftovers of a start that never
  finished an epoch: config.yaml, env.json, temp files);
- ``partial``: ``last.pt`` holds the completed epochs; ``metrics.jsonl`` never has a line the
  checkpoint does not cover (the trainer writes the checkpoint first, then the line, and a
  start restores the line from the checkpoint if a kill came between the two);
- ``finished``: ``summary.json`` exists (even if last.pt was deleted afterwards).

``RunLock`` is an exclusive ``flock`` on ``run.lock`` held for the life of the run by the
process that writes the folder (rank 0). The kernel drops it when the process dies, so a
killed run never leaves a stale lock; the pid inside only names the holder in messages.
"""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path

from absa.run.checkpoint import LAST
from absa.run.runlog import SUMMARY

LOCK = "run.lock"
_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")  # atomic_write_bytes' mkstemp names


class RunFolderError(RuntimeError):
    """A run folder that cannot be used as asked; one line for the user."""


def state(run_dir: Path) -> str:
    """``finished`` | ``partial`` | ``empty`` (see the module docstring)."""
    run_dir = Path(run_dir)
    if (run_dir / SUMMARY).is_file():
        return "finished"
    if (run_dir / LAST).is_file():
        return "partial"
    return "empty"


def holder(run_dir: Path) -> int | None:
    """The pid holding ``run_dir``'s lock, or None when no live process holds it."""
    path = Path(run_dir) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_pid(fd) or -1
    except OSError:
        return None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


class RunLock:
    """Exclusive lock on a run folder for this process's lifetime (or until ``release``)."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = Path(run_dir)
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Create the folder and take the lock; RunFolderError if another process has it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / LOCK
        try:  # O_NOFOLLOW: a planted symlink must not make the pid overwrite another file
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        except OSError as err:
            if path.is_symlink():
                raise RunFolderError(
                    f"{path}: is a symlink; refusing to use it as a lock"
                ) from None
            raise err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            who = f"pid {pid}" if pid else "another process"
            raise RunFolderError(
                f"{self.dir}: in use by {who} (a run writing this folder); wait for it to "
                "finish or choose another train.run_name"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def clean_temps(run_dir: Path) -> list[str]:
    """Delete temp files that killed atomic writes left behind (call with the lock held)."""
    removed = []
    for p in Path(run_dir).iterdir():
        if p.is_file() and _TEMP.match(p.name):
            p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed
