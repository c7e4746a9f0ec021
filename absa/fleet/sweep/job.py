"""The callable a submitit job runs: one point as a subprocess, requeued on Slurm's signals."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from absa.fleet.sweep.attempt import PointTask, begin_attempt, child_env, command, end_attempt
from absa.fleet.sweep.procs import ignore_usr2, stop, terminate
from absa.fleet.sweep.state import LAST, status, summary
from absa.run.folder import holder, rank_log

LOCK_WAIT_S = 60.0  # a requeued job's predecessor may still be shutting down
# how long a Slurm task whose training process got SIGTERM waits to be killed (KillWait)
_SLURM_KILL_WAIT_S = 300.0


def _lock_released(folder: Path, wait_s: float) -> bool:
    """Whether no live process holds the run folder's lock, waiting up to ``wait_s`` for it
    to go (after a requeue the killed training process can outlive its job step briefly)."""
    deadline = time.monotonic() + wait_s
    while holder(folder) is not None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)
    return True


class PointFailed(RuntimeError):
    """Raised inside a submitit job so the scheduler records the failure too."""


class PointJob:
    """The callable submitted to submitit: runs one point as a subprocess.

    On Slurm with several tasks per job, every task starts its own ``absa train`` process
    (absa reads the SLURM_* variables); elsewhere ``nproc > 1`` goes through torchrun.
    ``checkpoint`` stops the training process and requeues the same point, which then
    resumes from its ``last.pt``.

    Signals on Slurm: the training process ignores SIGUSR2, the signal submitit asks Slurm to
    send before the time limit (``--signal=USR2@90``; ``scancel --signal=USR2`` sends it
    too), so that only submitit's handler acts on it: it calls ``checkpoint`` (which stops
    the training process) and requeues the job. A training process ended by SIGTERM
    (``scontrol requeue``, preemption, ``scancel``, the time limit) is Slurm ending the job:
    the task then waits for Slurm to kill it instead of reporting a failure, so a requeued
    point leaves no failure behind and resumes from its last epoch.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._proc = None

    def __call__(self, task: PointTask) -> dict[str, Any]:
        import submitit

        try:
            job_env = submitit.JobEnvironment()
            rank, ntasks, cluster = job_env.global_rank, job_env.num_tasks, job_env.cluster
        except RuntimeError:  # called outside a job (tests, debugging)
            rank, ntasks, cluster = 0, 1, "local"
        on_slurm = cluster == "slurm"
        per_task = on_slurm and ntasks > 1
        folder = Path(task.folder)
        if status(folder) == "done":
            return summary(folder)
        if rank == 0 and not _lock_released(folder, LOCK_WAIT_S):  # another process has it
            raise PointFailed(f"{folder}: in use by pid {holder(folder)}; not started twice")
        resume = (folder / LAST).is_file()
        cmd = command(task, resume, torchrun=not per_task)
        if rank == 0:
            log, offset = begin_attempt(task, resume, cmd)
        else:
            log, offset = (folder / rank_log(rank)).open("a"), 0
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=task.cwd,
                env=child_env(task.threads),
                preexec_fn=ignore_usr2 if on_slurm else None,
            )
            rc = self._proc.wait()
            if on_slurm and rc == -signal.SIGTERM:
                log.write(
                    f"=== absa sweep {time.strftime('%Y-%m-%d %H:%M:%S')}: training stopped by "
                    "SIGTERM (Slurm requeue, preemption, scancel or time limit); last.pt is "
                    "kept and the point resumes from it\n"
                )
                log.flush()
                time.sleep(_SLURM_KILL_WAIT_S)  # Slurm sends SIGKILL after its KillWait
        finally:
            stop(self._proc)
            self._proc = None
            log.close()
        if rank != 0:
            if rc != 0:
                raise PointFailed(f"{task.name}: rank {rank} exited with status {rc}")
            return {}
        error = end_attempt(task, rc, offset)
        if error:
            raise PointFailed(f"{task.name}: {error}")
        return summary(folder)

    def checkpoint(self, task: PointTask) -> Any:
        """Called by submitit's signal handler, possibly while ``__call__`` waits for the
        process: ``Popen.wait`` must not be used here (the interrupted wait holds its lock)."""
        import submitit

        terminate(self._proc)
        return submitit.helpers.DelayedSubmission(PointJob(), task)
