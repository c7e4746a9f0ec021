"""Sweeps: a grid of ``absa train`` runs, run locally or as a Slurm job array (submitit).

A sweep file is YAML::

    name: digits-methods            # default: the file's stem; also names the out folder
    out_dir: sweeps/digits-methods  # default sweeps/<name>, relative to the current directory
    base:                           # the config every point starts from
      config: ../default.yaml       # optional config file, relative to the sweep file
      train: {epochs: 10}           # optional inline config tree, merged over the file
    grid:                           # dotted config key -> list of values (cartesian product)
      schedule.method: [bl, absa]
      batch.size: [32, 512]
      train.seed: [0, 1]
    points:                         # optional extra points, each applied to base only
      - {schedule.method: fb, batch.size: 512, schedule.ref_batch: 32}
    nproc: 1                        # processes per point (torchrun locally, srun tasks on Slurm)
    local: {max_parallel: 1, timeout_min: 1440}
    slurm: {partition: gpu, time_min: 1440, gpus_per_node: 1, array_parallelism: 16}

``grid`` may also be a list of such mappings (blocks), expanded one after the other, and
``outer`` (same shape as one block) wraps them all: for each combination of the outer
values, every block in order, e.g. ``outer: {train.seed: [0, 1]}`` runs all of seed 0 first.
Grid points come first, in product order (the first key varies slowest, the last fastest),
then the extra ``points`` in file order. Each point's run folder is
``<out_dir>/runs/<name>``, the name built from the point's values (``absa-b512-s0``) with a
short hash appended where two names would collide. ``train.out_dir`` and ``train.run_name``
are set by the sweep and may not appear in ``grid`` or ``points``.

Status of a point: ``done`` (summary.json), ``failed`` (status.json marker written when
its process exits non-zero or times out), ``partial`` (last.pt, no summary: resumable),
``pending``. Running a sweep again skips finished points, resumes partial ones (and failed
ones that left a last.pt) and starts the rest fresh; finished points are never touched.

The package: ``spec`` (the file), ``points`` (expansion, naming, ``load_sweep``), ``state``
(a point's state from its run folder), ``attempt`` (one run of a point), ``local`` and
``slurm`` (the executors; ``job`` is what a submitit job runs, ``squeue`` its Slurm states).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from absa.core.policies import ignored_note
from absa.fleet.sweep.attempt import (
    PointTask,
    begin_attempt,
    child_env,
    command,
    end_attempt,
)
from absa.fleet.sweep.job import LOCK_WAIT_S, PointFailed, PointJob
from absa.fleet.sweep.local import run_local
from absa.fleet.sweep.points import expand, load_sweep, point_name
from absa.fleet.sweep.result import Say, SweepResult
from absa.fleet.sweep.slurm import make_executor, run_submitit
from absa.fleet.sweep.spec import (
    RESERVED,
    LocalSection,
    Point,
    SlurmSection,
    Sweep,
    SweepSpec,
)
from absa.fleet.sweep.squeue import GONE, SLURM_ENDED, SlurmState, squeue_states
from absa.fleet.sweep.state import LAST, LOG, MARKER, POINT_CONFIG, SUMMARY, failure, status
from absa.run.config import ConfigError, to_dict
from absa.run.folder import atomic_write_text, holder

__all__ = [
    "EXECUTORS",
    "GONE",
    "LAST",
    "LOCK_WAIT_S",
    "LOG",
    "MARKER",
    "POINT_CONFIG",
    "RESERVED",
    "SLURM_ENDED",
    "SUMMARY",
    "LocalSection",
    "Point",
    "PointFailed",
    "PointJob",
    "PointTask",
    "Say",
    "SlurmSection",
    "SlurmState",
    "Sweep",
    "SweepResult",
    "SweepSpec",
    "begin_attempt",
    "child_env",
    "command",
    "end_attempt",
    "expand",
    "failure",
    "load_sweep",
    "point_name",
    "run_sweep",
    "squeue_states",
    "status",
]

EXECUTORS = ("local", "slurm", "submitit-local")


def _manifest(sweep: Sweep, points: list[Point]) -> None:
    resolved = {
        "name": sweep.name,
        "out_dir": str(sweep.out_dir),
        "base": sweep.base,
        "grid": sweep.grid,
        "outer": sweep.outer,
        "points": sweep.points,
        "nproc": sweep.nproc,
        "local": sweep.local.model_dump(mode="json"),
        "slurm": sweep.slurm.model_dump(mode="json"),
    }
    sweep.out_dir.mkdir(parents=True, exist_ok=True)
    head = f"# resolved from {sweep.path.resolve()}; a valid sweep file itself\n"
    text = head + yaml.safe_dump(resolved, sort_keys=False)
    atomic_write_text(sweep.out_dir / "sweep.yaml", text)
    rows = [
        {"name": p.name, "folder": str(p.folder), "overrides": p.overrides, "values": p.values}
        for p in points
    ]
    atomic_write_text(sweep.out_dir / "points.json", json.dumps(rows, indent=2, default=str) + "\n")


def _announce(
    sweep: Sweep, points: list[Point], states: dict[str, str], dry_run: bool, say: Say
) -> None:
    """The counts of each state, keys a point sets but its method ignores, points running elsewhere."""
    kinds = ("done", "running", "partial", "failed")
    counts = {s: sum(v == s for v in states.values()) for s in kinds}
    running = f"{counts['running']} running elsewhere, " if counts["running"] else ""
    say(
        f"sweep {sweep.name}: {len(points)} points ({counts['done']} done, {running}"
        f"{counts['partial']} partial, {counts['failed']} failed, "
        f"{len(points) - sum(counts.values())} pending); run folders in {sweep.runs_dir}"
    )
    for p in points:  # keys a grid block or point sets that its method does not read
        note = ignored_note(p.config.schedule.method, p.values)
        if note:
            say(f"note: {p.name}: {note}")
    for p in points:
        if states[p.name] == "running" and not dry_run:
            say(f"skip {p.name}: running (pid {holder(p.folder)} holds its run folder)")


def _list_points(points: list[Point], states: dict[str, str], say: Say) -> None:
    """The dry run's table: state, name and overrides of every point."""
    width = max(len(p.name) for p in points)
    for p in points:
        say(f"  {states[p.name]:<8} {p.name:<{width}}  {' '.join(p.overrides) or '(base)'}")
        if states[p.name] == "failed":
            say(f"           last error: {failure(p)}")


def _write_point_configs(todo: list[Point]) -> None:
    """The resolved config each point trains with (never for finished points)."""
    for p in todo:
        p.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            p.folder / POINT_CONFIG, yaml.safe_dump(to_dict(p.config), sort_keys=False)
        )


def _conclude(points: list[Point], result: SweepResult, say: Say) -> None:
    """Put the outcomes in point order (they arrive in completion order) and sum them up."""
    order = {p.name: i for i, p in enumerate(points)}
    for names in (result.done, result.failed, result.pending):
        names.sort(key=order.__getitem__)
    say(
        f"sweep {result.name}: {len(result.done)} done, {len(result.failed)} failed, "
        f"{len(result.skipped)} skipped (finished before)"
        + (f", {len(result.pending)} submitted" if result.pending else "")
    )


def run_sweep(
    sweep_path: str | Path,
    executor: str = "local",
    max_parallel: int | None = None,
    dry_run: bool = False,
    say: Say = print,
    wait: bool = True,
) -> SweepResult:
    """Run every unfinished point of a sweep; finished points are skipped.

    ``executor``: ``local`` (subprocesses, at most ``max_parallel`` at once, default
    ``local.max_parallel``), ``slurm`` (a submitit job array; ``max_parallel`` overrides
    ``slurm.array_parallelism``) or ``submitit-local`` (submitit's LocalExecutor, for testing).
    ``wait=False`` (submitit only) returns right after submission with the points in
    ``pending``. ``dry_run`` lists points, folders and status without writing anything.
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"executor: expected one of {', '.join(EXECUTORS)} (got {executor!r})")
    if max_parallel is not None and max_parallel < 1:
        raise ConfigError(f"max_parallel: must be >= 1 (got {max_parallel})")
    sweep = load_sweep(sweep_path)
    points = expand(sweep)
    states = {p.name: status(p) for p in points}
    result = SweepResult(sweep.name, sweep.out_dir, states, dry_run=dry_run)
    todo = [p for p in points if states[p.name] not in ("done", "running")]
    result.skipped = [p.name for p in points if states[p.name] == "done"]
    _announce(sweep, points, states, dry_run, say)
    if dry_run:
        _list_points(points, states, say)
        result.pending = [p.name for p in todo]
        return result

    limit = max_parallel or (
        sweep.slurm.array_parallelism if executor == "slurm" else sweep.local.max_parallel
    )
    ex = make_executor(sweep, executor, limit) if todo and executor != "local" else None
    _manifest(sweep, points)
    _write_point_configs(todo)
    if todo and ex is None:
        run_local(todo, sweep, limit, say, result)
    elif todo:
        run_submitit(ex, todo, sweep, executor, limit, wait, say, result)
    _conclude(points, result, say)
    return result
