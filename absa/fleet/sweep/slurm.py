"""The submitit executors: a Slurm job array (``slurm``) or submitit's LocalExecutor
(``submitit-local``, for testing), and waiting for their jobs."""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import subprocess
import time
from typing import Any

from absa.fleet.sweep.attempt import (
    REPO_ROOT,
    PointTask,
    end_attempt,
    error_line,
    task_for,
    threads_for,
)
from absa.fleet.sweep.job import PointJob
from absa.fleet.sweep.result import Say, SweepResult, record
from absa.fleet.sweep.spec import Point, Sweep
from absa.fleet.sweep.squeue import GONE, SLURM_ENDED, SlurmState, poll_max_s, squeue_states
from absa.fleet.sweep.state import LOG, failure, status
from absa.run.config import ConfigError
from absa.run.folder import JOB, atomic_write_text


def make_executor(sweep: Sweep, executor: str, max_parallel: int) -> Any:
    """A configured submitit AutoExecutor; problems become one-line ConfigErrors."""
    import submitit

    setup = [f"export PYTHONPATH={shlex.quote(REPO_ROOT)}${{PYTHONPATH:+:$PYTHONPATH}}"]
    folder = sweep.out_dir / "submitit"
    if executor == "submitit-local":
        cluster = "local"
        params: dict[str, Any] = {
            "name": f"absa-{sweep.name}",
            "timeout_min": max(1, math.ceil(sweep.local.timeout_min)),  # submitit's default: 2
            "local_setup": setup,
        }
    else:
        cluster = "slurm"
        s = sweep.slurm
        params = {
            "name": f"absa-{sweep.name}",
            "timeout_min": s.time_min,
            "nodes": s.nodes,
            "tasks_per_node": s.tasks_per_node or sweep.nproc,
            "gpus_per_node": s.gpus_per_node,
            "cpus_per_task": s.cpus_per_task,
            "mem_gb": s.mem_gb,
            "slurm_partition": s.partition,
            "slurm_array_parallelism": max_parallel,
            "slurm_setup": setup + list(s.setup),
        }
        params = {k: v for k, v in params.items() if v is not None}
        params.update(s.extra)
    try:
        ex = submitit.AutoExecutor(folder=folder, cluster=cluster)
        ex.update_parameters(**params)
    except (RuntimeError, ValueError, NameError, AssertionError, TypeError) as err:
        text = str(err).strip()
        first = text.splitlines()[0] if text else type(err).__name__
        raise ConfigError(f"{sweep.path}: {cluster}: {first}") from None
    if cluster == "slurm" and shutil.which("sinfo"):  # without it, sbatch says what is wrong
        problem = _slurm_unreachable()
        if problem:
            raise ConfigError(f"{sweep.path}: slurm: no Slurm controller answers: {problem}")
    return ex


def _slurm_unreachable() -> str:
    """Why no Slurm controller answers ``sinfo`` ("" when one does); checked before writing."""
    try:
        res = subprocess.run(
            ["sinfo", "--noheader", "--format=%P"],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"sinfo: {err}"
    if res.returncode == 0:
        return ""
    lines = [ln.strip() for ln in res.stderr.splitlines() if ln.strip()]
    hint = "" if os.environ.get("SLURM_CONF") else " (SLURM_CONF is not set)"
    return (lines[-1] if lines else f"sinfo exited with status {res.returncode}") + hint


def run_submitit(
    ex: Any,
    points: list[Point],
    sweep: Sweep,
    executor: str,
    max_parallel: int,
    wait: bool,
    say: Say,
    result: SweepResult,
) -> None:
    """Submit the points as a job array and, with ``wait``, record each job's outcome."""
    # submitit's LocalExecutor has no array throttle: submit local jobs in waves
    waves = (
        [points[i : i + max_parallel] for i in range(0, len(points), max_parallel)]
        if executor == "submitit-local"
        else [points]
    )
    for wave in waves:
        threads = threads_for(max_parallel) if executor == "submitit-local" else None
        jobs = _submit(ex, [task_for(p, sweep.nproc, threads) for p in wave], executor)
        t0 = time.monotonic()
        for p, job in zip(wave, jobs, strict=True):
            _note_job(p, job, executor, say)
        if not wait:
            result.pending.extend(p.name for p in wave)
        elif executor == "slurm":
            _wait_slurm(wave, jobs, sweep, say, result, t0)
        else:
            _wait_jobs(wave, jobs, say, result, t0)


def _submit(ex: Any, tasks: list[PointTask], executor: str) -> list[Any]:
    """One job per task; a failed submission is a one-line ConfigError."""
    try:
        return ex.map_array(PointJob(), tasks)
    except Exception as err:  # noqa: BLE001 - sbatch missing, rejected parameters...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{executor}: submission failed: {first}") from None


def _note_job(p: Point, job: Any, executor: str, say: Say) -> None:
    """Write the point's job.json (job id, submitit's logs) and say where its logs are."""
    logs = _job_logs(job)
    atomic_write_text(
        p.folder / JOB,
        json.dumps(
            {
                "executor": executor,
                "job_id": job.job_id,
                "submitit_stdout": str(logs.stdout),
                "submitit_stderr": str(logs.stderr),
            },
            indent=2,
        )
        + "\n",
    )
    say(
        f"submitted {p.name} as job {job.job_id}: log {p.folder / LOG}; "
        f"submitit log {logs.stderr} (and .out)"
    )


def _wait_jobs(
    wave: list[Point], jobs: list[Any], say: Say, result: SweepResult, t0: float
) -> None:
    """Wait for submitit's local jobs, recording each as it ends."""
    left = dict(zip((p.name for p in wave), zip(wave, jobs, strict=True), strict=True))
    while left:
        time.sleep(1.0)
        for name, (p, job) in list(left.items()):
            if not job.done():
                continue
            del left[name]
            error = ""
            if status(p) != "done":
                error = failure(p) or _job_error(job)
            record(p, error, t0, say, result)


def _job_logs(job: Any) -> Any:
    """submitit's paths of a job's first task (its log files, result pickle)."""
    from submitit.core.utils import JobPaths

    return JobPaths(job.paths.folder, job_id=job.job_id, task_id=0)


_GONE_GRACE_S = 60.0  # a job never listed yet is not taken for finished before this


# an ended state counts once it has lasted this long: a job that submitit requeues (USR2
# before the time limit) can show FAILED for a moment before it is PENDING again
_ENDED_SETTLE_S = 10.0


def _wait_slurm(
    wave: list[Point], jobs: list[Any], sweep: Sweep, say: Say, result: SweepResult, t0: float
) -> None:
    """Wait for the jobs with squeue, printing each job's state changes; the run folder
    (summary.json, status.json) then says whether its point finished."""
    poll_max = poll_max_s()
    mains = " ".join(sorted({job.job_id.split("_")[0] for job in jobs}))
    say(
        f"job states from squeue (every 1-{poll_max:g} s; Slurm accounting/sacct is not used); "
        f"Ctrl-C stops waiting, not the jobs (scancel {mains} does)"
    )
    left = {job.job_id: (p, job) for p, job in zip(wave, jobs, strict=True)}
    seen: dict[str, str] = {}  # job id -> last state printed
    ended_at: dict[str, float] = {}  # job id -> when it was first seen in an ended state
    delay = min(1.0, poll_max)
    failing_since: float | None = None
    while left:
        time.sleep(delay)
        states = squeue_states(list(left))
        now = time.monotonic()
        if states is None:
            if failing_since is None:
                failing_since = now
                say("squeue did not answer; retrying (job states may lag)")
            delay = min(delay * 2, poll_max)
            continue
        if failing_since is not None:
            say(f"squeue answers again (after {now - failing_since:.0f}s)")
            failing_since = None
        changed = False
        for jid, (p, job) in list(left.items()):
            st = states.get(jid)
            if st is None:
                if jid not in seen and now - t0 < _GONE_GRACE_S:
                    continue  # not listed yet
                st = SlurmState(GONE)
            text = st.describe()
            if seen.get(jid) != text:
                seen[jid] = text
                changed = True
                say(f"job {jid} ({p.name}): {text}")
            if st.state not in SLURM_ENDED and st.state != GONE:
                ended_at.pop(jid, None)
                continue
            if now - ended_at.setdefault(jid, now) < _ENDED_SETTLE_S:
                changed = True  # poll again soon: it may still be requeued
                continue
            del left[jid]
            error = ""
            if status(p) != "done":
                error = failure(p) or _slurm_job_error(job, st.state)
                if failure(p) is None:  # the job died before absa could record it
                    end_attempt(task_for(p, sweep.nproc), None, 0, error)
            record(p, error, t0, say, result)
        delay = min(1.0, poll_max) if changed else min(delay * 2, poll_max)


def _slurm_job_error(job: Any, state: str) -> str:
    """The error of a job that ended without a summary: its submitit result, else its state.

    Reads task 0's result pickle directly: submitit's ``job.exception()`` would wait (and call
    sacct) for a job that never wrote one."""
    import pickle

    paths = _job_logs(job)
    try:
        with open(paths.result_pickle, "rb") as fh:
            outcome, payload = pickle.load(fh)
    except Exception:  # noqa: BLE001 - no result (killed, cancelled), unreadable
        outcome, payload = None, None
    if outcome == "error" and str(payload).strip():
        return error_line(str(payload))
    ended = "left the queue" if state == GONE else f"ended {state}"
    return f"job {job.job_id} {ended} without a summary (submitit log: {paths.stderr})"


def _job_error(job: Any) -> str:
    try:
        exc = job.exception()
    except Exception as err:  # noqa: BLE001 - job folder unreadable
        exc = err
    text = str(exc).strip() if exc is not None else ""
    return error_line(text) if text else f"job {job.job_id} ended without a summary"
