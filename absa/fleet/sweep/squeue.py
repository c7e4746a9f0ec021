"""Slurm job states from ``squeue`` (no accounting/sacct needed)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

# states after which a job never runs again; anything else (PENDING, RUNNING, COMPLETING,
# REQUEUED, REQUEUE_HOLD, SUSPENDED, PREEMPTED while it requeues, ...) means wait
SLURM_ENDED = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "BOOT_FAIL",
        "DEADLINE",
        "REVOKED",
    }
)
GONE = "GONE"  # no longer listed by squeue (finished more than MinJobAge ago)


@dataclass(frozen=True)
class SlurmState:
    """One job's line of ``squeue``: state, nodes, pending reason, requeue count."""

    state: str
    nodes: str = ""
    reason: str = ""
    restarts: int = 0  # times Slurm requeued the job (squeue RestartCnt)

    def describe(self) -> str:
        """The state as printed; a requeue always changes it (the restart count is in it), so
        a requeue that completes between two polls is still reported."""
        text = self.state
        if self.state == "RUNNING" and self.nodes:
            text = f"RUNNING on {self.nodes}"
        elif self.state == "PENDING" and self.reason and self.reason != "None":
            text = f"PENDING ({self.reason})"
        elif self.state == GONE:
            return "no longer listed by squeue"
        return f"{text}, requeued {self.restarts}x" if self.restarts else text


def squeue_states(job_ids: list[str]) -> dict[str, SlurmState] | None:
    """States of jobs and array tasks (``123`` or ``123_4``) from one ``squeue`` call; jobs it
    no longer lists are absent. None when squeue fails (the controller did not answer)."""
    mains = sorted({j.split("_")[0] for j in job_ids})
    if not mains:
        return {}
    fields = "JobArrayID:|,State:|,NodeList:|,Reason:|,RestartCnt:"
    cmd = ["squeue", "--noheader", "--array", "--states=all", f"--Format={fields}"]
    cmd.append(f"--jobs={','.join(mains)}")
    try:
        res = subprocess.run(
            cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode != 0:
        # every job id has been purged (MinJobAge): squeue rejects the list
        return {} if "Invalid job id" in res.stderr else None
    out: dict[str, SlurmState] = {}
    for line in res.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 2 and parts[0]:
            state = parts[1].split()[0].rstrip("+") if parts[1].strip() else "UNKNOWN"
            nodes, reason, restarts = (parts[2:5] + ["", "", ""])[:3]
            count = int(restarts) if restarts.strip().isdigit() else 0
            out[parts[0].strip()] = SlurmState(state, nodes.strip(), reason.strip(), count)
    return out


def poll_max_s() -> float:
    """Longest pause between two squeue calls: ABSA_SLURM_POLL_S (default 30 s)."""
    try:
        return max(0.2, float(os.environ.get("ABSA_SLURM_POLL_S", "30")))
    except ValueError:
        return 30.0
