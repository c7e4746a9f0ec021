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


def run_local(
    points: list[Point], sweep: Sweep, max_parallel: int, say: Say, result: SweepResult
) -> None:
    with terminate_as_interrupt():
        _local_loop(points, sweep, max_parallel, say, result)


def _local_loop(
    points: list[Point], sweep: Sweep, max_parallel: int, say: Say, result: SweepResult
) -> None:
    env = child_env(threads_for(max_parallel))
    timeout_s = sweep.local.timeout_min * 60
    queue = list(points)
    running: dict[str, tuple[Point, subprocess.Popen[bytes], Any, int, float]] = {}
    try:
        while queue or running:
            while queue and len(running) < max_parallel:
                p = queue.pop(0)
                now = status(p)  # again: another sweep may have taken or finished it since
                if now in ("running", "done"):
                    say(f"skip {p.name}: {now} (another process, since this sweep started)")
                    if now == "done":
                        result.skipped.append(p.name)
                    continue
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
            time.sleep(0.2)
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
                record(
                    p, end_attempt(task_for(p, sweep.nproc), rc, offset, reason), t0, say, result
                )
    except BaseException:
        for p, proc, log, _offset, _t0 in running.values():
            stop(proc, group=True)
            log.close()
            say(f"stopped {p.name}; run the sweep again to resume it")
        raise
