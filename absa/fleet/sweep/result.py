"""What a sweep call did: each point's outcome as it ends, and the lines that report it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from absa.fleet.sweep.spec import Point
from absa.fleet.sweep.state import LOG, summary

Say = Callable[[str], None]


@dataclass
class SweepResult:
    """The points of one ``run_sweep`` call by outcome; ``exit_code`` 1 if any failed."""

    name: str
    out_dir: Path
    statuses: dict[str, str]  # every point's status before this call
    done: list[str] = field(default_factory=list)  # finished during this call
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already finished before this call
    pending: list[str] = field(default_factory=list)  # dry run: would run; no-wait: submitted
    errors: dict[str, str] = field(default_factory=dict)  # name -> error line
    dry_run: bool = False

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def _done_line(name: str, folder: Path, seconds: float) -> str:
    s = summary(folder)
    if not s:
        return f"done {name} ({seconds:.0f}s)"
    return (
        f"done {name}: test acc {s.get('test_acc', float('nan')):.2f}% after "
        f"{s.get('updates')} updates, final batch {s.get('final_batch')} ({seconds:.0f}s)"
    )


def record(p: Point, error: str, t0: float, say: Say, result: SweepResult) -> None:
    """Book a point that ended (``error`` "" when it finished) and report it."""
    if error:
        result.failed.append(p.name)
        result.errors[p.name] = error
        say(f"FAILED {p.name}: {error} (log: {p.folder / LOG})")
    else:
        result.done.append(p.name)
        say(_done_line(p.name, p.folder, time.monotonic() - t0))
