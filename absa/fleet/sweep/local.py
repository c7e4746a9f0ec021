"""The local executor: points as child processes, at most ``max_parallel`` at once."""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

from absa.fleet.sweep.attempt import (
    begin_attempt,
    child_env,
    command,
    end_attempt,
    task_for,
    threads_for,
)
from absa.fleet.sweep.procs import die_with_parent, stop, terminate_as_interrupt
from absa.fleet.sweep.result import Say, SweepResult, record
from absa.fleet.sweep.spec import Point, Sweep
from absa.fleet.sweep.state import LAST, LOG, status

# name -> (point, its process, its open log, the log's offset at start, start time)
_Running = dict[str, tuple[Point, subprocess.Popen[bytes], Any, int, float]]


def run_local(
    points: list[Point], sweep: Sweep, max_parallel: int, say: Say, result: SweepResult
) -> None:
    """Run the points as child processes, at most ``max_parallel`` at once; on Ctrl-C or
    SIGTERM every running point is stopped (running the sweep again resumes it)."""
    with terminate_as_interrupt():
        _local_loop(points, sweep, max_parallel, say, result)


def _local_loop(
    points: list[Point], sweep: Sweep, max_parallel: int, say: Say, result: SweepResult
) -> None:
    env = child_env(threads_for(max_parallel))
    queue = list(points)
    running: _Running = {}
    try:
        while queue or running:
            while queue and len(running) < max_parallel:
                _start(queue.pop(0), sweep, env, running, say, result)
            time.sleep(0.2)
            _reap(running, sweep, say, result)
    except BaseException:
        for p, proc, log, _offset, _t0 in running.values():
            stop(proc, group=True)
            log.close()
            say(f"stopped {p.name}; run the sweep again to resume it")
        raise


def _start(
    p: Point, sweep: Sweep, env: dict[str, str], running: _Running, say: Say, result: SweepResult
) -> None:
    """Start a point's training process, unless another process took or finished it."""
    now = status(p)  # again: another sweep may have taken or finished it since
    if now in ("running", "done"):
        say(f"skip {p.name}: {now} (another process, since this sweep started)")
        if now == "done":
            result.skipped.append(p.name)
        return
    task = task_for(p, sweep.nproc)
    resume = (p.folder / LAST).is_file()
    cmd = command(task, resume, torchrun=True)
    log, offset = begin_attempt(task, resume, cmd)
    proc = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,  # one group: a timeout kills torchrun's workers too
        preexec_fn=die_with_parent(os.getpid()),
    )
    running[p.name] = (p, proc, log, offset, time.monotonic())
    say(f"start {p.name} ({'resume' if resume else 'fresh'}) -> {p.folder / LOG}")


def _reap(running: _Running, sweep: Sweep, say: Say, result: SweepResult) -> None:
    """Record the points whose process ended; stop (and fail) those past the timeout."""
    timeout_s = sweep.local.timeout_min * 60
    for name, (p, proc, log, offset, t0) in list(running.items()):
        rc = proc.poll()
        reason = ""
        if rc is None:
            if time.monotonic() - t0 < timeout_s:
                continue
            stop(proc, group=True)
            rc = proc.returncode
            reason = f"timeout after {sweep.local.timeout_min:g} min"
        log.close()
        del running[name]
        error = end_attempt(task_for(p, sweep.nproc), rc, offset, reason)
        record(p, error, t0, say, result)
