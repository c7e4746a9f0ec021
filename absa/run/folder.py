"""The run folder: the names of its files, its lock and state, and the writes into it.

One run folder per training run (``train.out_dir/train.run_name``, or a sweep's
``runs/<point>``). Every file the package puts there is named here:

=====================  =============================  =====================================
file (constant)        writer                         readers
=====================  =============================  =====================================
config.yaml CONFIG     RunLog.write_config (a start)  absa train --resume, report, sweep
env.json ENV           RunLog.write_env               RunLog.write_env (appends a start)
metrics.jsonl METRICS  RunLog.append_metrics,         read_metrics: loop (replay), api,
                       RunLog.restore_metrics         report (strict=True), scripts
summary.json SUMMARY   RunLog.write_summary (end)     state, point_status, report, sweep,
                                                      loop (replay)
last.pt LAST           checkpoint.save (each epoch)   checkpoint.load, state, point_status
prev.pt PREV           checkpoint.save (the last.pt   checkpoint.load_for_resume
                       it replaces)
last.pt.unreadable     checkpoint.load_for_resume     people
  UNREADABLE
run.lock LOCK          RunLock (rank 0's pid)         holder, point_status
steps.jsonl STEPS      loggers (log.jsonl)            people
tensorboard/           loggers (log.tensorboard)      TensorBoard
  TENSORBOARD
micro_batch.json       loop (batch.micro_batch auto)  people
  MICRO_BATCH
point.yaml             sweep (a point's config)       absa train -c (the point's process)
  POINT_CONFIG
status.json MARKER     sweep (a failed attempt)       point_status, failure, sweep
log.txt LOG            sweep (the point's output)     sweep (error line), people
job.json JOB           sweep (submitit job ids)       people
=====================  =============================  =====================================

(loop, loggers: absa.engine; report, sweep: absa.fleet; checkpoint: absa.run.checkpoint.)

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

Only rank 0 writes; every write is atomic (temp file, fsync, rename: ``atomic_write_bytes``)
or append-only by line (metrics.jsonl).
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from absa import __version__
from absa.run.config import Config, dump_yaml

CONFIG = "config.yaml"
ENV = "env.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
LAST = "last.pt"
PREV = "prev.pt"  # the checkpoint before last.pt, kept by save(); resume falls back to it
UNREADABLE = f"{LAST}.unreadable"
LOCK = "run.lock"
STEPS = "steps.jsonl"
TENSORBOARD = "tensorboard"
MICRO_BATCH = "micro_batch.json"
POINT_CONFIG = "point.yaml"
MARKER = "status.json"
LOG = "log.txt"
JOB = "job.json"


def rank_log(rank: int) -> str:
    """The console log of rank ``rank`` > 0 of a sweep point run per Slurm task (rank 0: LOG)."""
    return f"log.rank{rank}.txt"


_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")  # atomic_write_bytes' mkstemp names

# metrics.jsonl fields the reports and plots compute with: numbers or null
METRIC_NUMBERS = (
    "epoch",
    "batch_size",
    "lr",
    "lambda_max",
    "test_acc",
    "test_loss",
    "updates",
    "samples",
    "adv_samples",
    "hessian_hvps",
    "seconds",
)


class RunFolderError(RuntimeError):
    """A run folder that cannot be used as asked; one line for the user."""


class DiskFullError(OSError):
    """A write that ran out of space, as one line naming the folder; the old file is kept."""


class MetricsError(ValueError):
    """A metrics.jsonl that ``read_metrics(strict=True)`` refuses; the message starts with it."""


# --- atomic writes ----------------------------------------------------------------------------


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (thread-safe)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: read by setting, then restore at once
    os.umask(mask)
    return mask


_FULL = (errno.ENOSPC, errno.EDQUOT)


def _full(err: BaseException) -> bool:
    """True when ``err`` or an exception it was raised from is ENOSPC (or EDQUOT): torch's
    writer reports a full disk as RuntimeError [enforce fail at inline_container.cc]."""
    seen: BaseException | None = err
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, OSError) and seen.errno in _FULL:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _write_failure(path: Path, err: BaseException) -> DiskFullError | None:
    """The one-line error for a failed write of ``path`` that a full disk explains."""
    torch_writer = isinstance(err, RuntimeError) and "inline_container" in str(err)
    if not (_full(err) or torch_writer):
        return None
    why = "the disk is full" if _full(err) else "torch's writer failed (is the disk full?)"
    return DiskFullError(
        f"{path.parent}: {why} while writing {path.name}; the previous {path.name}, if any, is "
        "kept: free some space, then run the command again"
    )


def atomic_write_bytes(
    path: Path,
    write: Callable[[IO[bytes]], Any],
    before_replace: Callable[[], Any] | None = None,
) -> None:
    """Call ``write(fileobj)`` on a temp file next to ``path`` and rename it into place
    (calling ``before_replace()`` just before); a full disk raises DiskFullError and leaves
    the old file as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide shared run folders
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        failure = _write_failure(path, err)
        if failure is not None:
            raise failure from None
        raise
    _fsync_dir(path.parent)  # the rename itself survives a power loss too


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a directory; the file itself is synced
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda fh: fh.write(text.encode()))


def clean_temps(run_dir: Path) -> list[str]:
    """Delete temp files that killed atomic writes left behind (call with the lock held)."""
    removed = []
    for p in Path(run_dir).iterdir():
        if p.is_file() and _TEMP.match(p.name):
            p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed


# --- state and lock ---------------------------------------------------------------------------


def state(run_dir: Path) -> str:
    """``finished`` | ``partial`` | ``empty`` (see the module docstring)."""
    run_dir = Path(run_dir)
    if (run_dir / SUMMARY).is_file():
        return "finished"
    if (run_dir / LAST).is_file():
        return "partial"
    return "empty"


def point_status(run_dir: Path) -> str:
    """A sweep point's status: ``done`` (finished) | ``running`` (a live process holds the
    lock) | ``failed`` (the sweep's MARKER) | ``partial`` | ``pending``."""
    run_dir = Path(run_dir)
    if (run_dir / SUMMARY).is_file():
        return "done"
    if holder(run_dir) is not None:
        return "running"
    if (run_dir / MARKER).is_file():
        return "failed"
    return "partial" if state(run_dir) == "partial" else "pending"


def failure(run_dir: Path) -> str | None:
    """The error line a failed point's MARKER records, else None."""
    try:
        return str(json.loads((Path(run_dir) / MARKER).read_text()).get("error", "failed"))
    except (OSError, ValueError):
        return None


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


def _open_lock(path: Path) -> int:
    """The lock file's descriptor, never through a symlink (a planted one must not make the
    pid overwrite another file)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as err:
        if path.is_symlink():
            raise RunFolderError(f"{path}: is a symlink; refusing to use it as a lock") from None
        raise err


class RunLock:
    """Exclusive lock on a run folder for this process's lifetime (or until ``release``)."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = Path(run_dir)
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Create the folder and take the lock; RunFolderError if another process has it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = _open_lock(self.dir / LOCK)
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


# --- metrics.jsonl ----------------------------------------------------------------------------

_JSON_KINDS = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}


def _json_kind(value: Any) -> str:
    return "null" if value is None else _JSON_KINDS.get(type(value), type(value).__name__)


def _metrics_text(path: Path, strict: bool) -> str:
    if not strict:
        return path.read_text(errors="replace")
    try:
        return path.read_text(errors="replace")
    except OSError as err:
        raise MetricsError(f"{path}: cannot read: {err.strerror or err}") from None


def _check_record(path: Path, n: int, rec: Any) -> None:
    """MetricsError unless line ``n`` is a JSON object whose METRIC_NUMBERS are numbers."""
    if not isinstance(rec, dict):
        raise MetricsError(f"{path}: line {n} is not a JSON object (got {_json_kind(rec)})")
    for key in METRIC_NUMBERS:
        value = rec.get(key)
        if value is not None and _json_kind(value) != "number":
            raise MetricsError(
                f"{path}: line {n}: {key!r} is not a number (got {_json_kind(value)})"
            )


def read_metrics(run_dir: Path, strict: bool = False) -> list[dict[str, Any]]:
    """metrics.jsonl's records (none when the file is missing); lines that are not JSON at
    all (a killed run's torn last line) are skipped.

    Lenient (default): other lines that are not JSON objects are skipped too. ``strict``:
    such a line, or a METRIC_NUMBERS field that is not a number or null, or a file that
    cannot be read, raises MetricsError naming the file (and line).
    """
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    records = []
    for n, line in enumerate(_metrics_text(path, strict).splitlines(), 1):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if strict:
            _check_record(path, n, rec)
        if isinstance(rec, dict):
            records.append(rec)
    return records


# --- the run log --------------------------------------------------------------------------------


def git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment(world_size: int, argv: list[str] | None = None) -> dict[str, Any]:
    """env.json's record of one start: versions, machine, command, world size, time."""
    return {
        "absa": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_revision": git_revision(),
        "argv": argv if argv is not None else sys.argv,
        "world_size": world_size,
        "cuda": torch.cuda.is_available(),
        "threads": torch.get_num_threads(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


class RunLog:
    """Writes config.yaml, env.json, metrics.jsonl and summary.json into ``run_dir``;
    construct with ``enabled=False`` on non-zero ranks."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.dir = Path(run_dir)
        self.enabled = enabled
        if enabled:
            self.dir.mkdir(parents=True, exist_ok=True)

    def write_config(self, cfg: Config) -> None:
        if self.enabled:
            atomic_write_text(self.dir / CONFIG, dump_yaml(cfg))

    def write_env(self, env: dict[str, Any], append: bool = False) -> None:
        """env.json: the first start's environment at the top level (its command and start
        time are never lost) and ``starts``, one entry per start; ``append`` adds a resume."""
        if not self.enabled:
            return
        first, starts = env, []
        if append:
            try:
                old = json.loads((self.dir / ENV).read_text())
            except (OSError, ValueError):
                old = None
            if isinstance(old, dict):
                first = {k: v for k, v in old.items() if k != "starts"}
                starts = old.get("starts") if isinstance(old.get("starts"), list) else [first]
        doc = {**first, "starts": [*starts, env]}
        atomic_write_text(self.dir / ENV, json.dumps(doc, indent=2) + "\n")

    def write_summary(self, summary: dict[str, Any]) -> None:
        if self.enabled:
            atomic_write_text(self.dir / SUMMARY, json.dumps(_clean(summary), indent=2) + "\n")

    def append_metrics(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW  # never through a symlink
        fd = os.open(self.dir / METRICS, flags, 0o666)
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(_clean(record)) + "\n")
            fh.flush()

    def restore_metrics(self, epochs: int, last: dict[str, Any] | None) -> None:
        """Make metrics.jsonl hold exactly epochs 0..epochs-1, once each, as the checkpoint
        does: drop lines past it (and duplicates), and put back ``last`` (the checkpoint's
        own record of its final epoch) when a kill came between checkpoint and line."""
        if not self.enabled:
            return
        by_epoch: dict[int, dict[str, Any]] = {}
        for r in read_metrics(self.dir):
            e = r.get("epoch")
            if isinstance(e, int) and 0 <= e < epochs:
                by_epoch[e] = r
        if last is not None and epochs > 0 and epochs - 1 not in by_epoch:
            by_epoch[epochs - 1] = last
        kept = [by_epoch[e] for e in sorted(by_epoch)]
        path = self.dir / METRICS
        if kept or path.exists():
            atomic_write_text(path, "".join(json.dumps(_clean(r)) + "\n" for r in kept))
