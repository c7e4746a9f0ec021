"""One attempt at a point, shared by the local executor and submitit jobs: the command that
trains it, the child's environment, and the log and failure marker around the process."""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from absa.fleet.sweep.spec import Point
from absa.run.folder import LOG, MARKER, METRICS, POINT_CONFIG, SUMMARY, atomic_write_text

# the folder holding the absa package: makes `-m absa` importable in children
REPO_ROOT = str(Path(__file__).resolve().parents[3])


@dataclass(frozen=True)
class PointTask:
    """What a worker needs to run one point (picklable for submitit)."""

    name: str
    folder: str
    runs_dir: str
    nproc: int = 1
    cwd: str = "."
    threads: int | None = None  # OMP_NUM_THREADS for the child unless already set


def command(task: PointTask, resume: bool, torchrun: bool) -> list[str]:
    """``python -m absa train -c point.yaml [--resume DIR] train.out_dir=.. train.run_name=..``."""
    folder = Path(task.folder)
    if torchrun and task.nproc > 1:
        head = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        head += ["--nproc-per-node", str(task.nproc), "-m", "absa", "train"]
    else:
        head = [sys.executable, "-m", "absa", "train"]
    cmd = head + ["-c", str(folder / POINT_CONFIG)]
    if resume:
        cmd += ["--resume", str(folder)]
    return cmd + [f"train.out_dir={task.runs_dir}", f"train.run_name={task.name}"]


def child_env(threads: int | None = None) -> dict[str, str]:
    """The training child's environment: unbuffered, absa importable, a thread share."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"  # keeps the log's order: the error line comes last
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + old if old else "")
    if threads is not None and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def begin_attempt(task: PointTask, resume: bool, cmd: list[str]) -> tuple[Any, int]:
    """Clear an old failure marker (and stale metrics of a fresh start); open the log."""
    folder = Path(task.folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).unlink(missing_ok=True)
    if not resume:  # a fresh start must not append to a dead attempt's metrics
        (folder / METRICS).unlink(missing_ok=True)
    log = (folder / LOG).open("a")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    log.write(f"=== absa sweep {stamp}: {'resume' if resume else 'start'}: {shlex.join(cmd)}\n")
    log.flush()
    return log, log.tell()


_ERROR_LINE = re.compile(r"^(error:|diverged:|\w+(Error|Exception|Interrupt)\b)")


def error_line(text: str) -> str:
    """The line of a process's output that says why it failed (else its last line)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if _ERROR_LINE.match(ln):
            return ln
    for ln in reversed(lines):
        if re.search(r"[A-Za-z0-9]", ln):
            return ln
    return "no output"


def end_attempt(task: PointTask, returncode: int | None, log_offset: int, reason: str = "") -> str:
    """Return "" when the point finished, else write the failure marker and return the error."""
    folder = Path(task.folder)
    if returncode == 0 and (folder / SUMMARY).is_file():
        return ""
    if not reason:
        try:
            with (folder / LOG).open("rb") as fh:
                fh.seek(log_offset)
                tail = fh.read().decode(errors="replace")
        except OSError:
            tail = ""
        if returncode == 0:
            reason = "exited 0 without writing summary.json"
        else:
            reason = f"{error_line(tail)} (exit {returncode})"
    marker = {
        "state": "failed",
        "error": reason,
        "returncode": returncode,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "log": str(folder / LOG),
    }
    atomic_write_text(folder / MARKER, json.dumps(marker, indent=2) + "\n")
    return reason


def threads_for(max_parallel: int) -> int | None:
    """Share the cores between points running side by side on one machine."""
    return max(1, (os.cpu_count() or 1) // max_parallel) if max_parallel > 1 else None


def task_for(point: Point, nproc: int, threads: int | None = None) -> PointTask:
    """The :class:`PointTask` of a point, run from the current directory."""
    folder = point.folder
    return PointTask(point.name, str(folder), str(folder.parent), nproc, os.getcwd(), threads)
