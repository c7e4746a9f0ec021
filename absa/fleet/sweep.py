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
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from absa.math.policies import ignored_note
from absa.run.config import (
    Config,
    ConfigError,
    deep_copy,
    describe_error,
    did_you_mean,
    merge_trees,
    parse_yaml,
    read_config_tree,
    read_yaml,
    set_dotted,
    to_dict,
    validate,
)
from absa.run.folder import atomic_write_text, holder

EXECUTORS = ("local", "slurm", "submitit-local")
SUMMARY = "summary.json"
LAST = "last.pt"
MARKER = "status.json"  # written by the sweep when a point's process fails
POINT_CONFIG = "point.yaml"  # the point's resolved config, passed to `absa train -c`
LOG = "log.txt"
RESERVED = ("train.out_dir", "train.run_name")  # set per point by the sweep
_ROOT = str(Path(__file__).resolve().parent.parent)  # makes `-m absa` importable in children

Say = Callable[[str], None]


# --- the sweep file ---------------------------------------------------------------------------


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LocalSection(_Section):
    max_parallel: int = Field(1, ge=1)  # points running at once
    timeout_min: float = Field(24 * 60, gt=0)  # per point; the process is killed after it


class SlurmSection(_Section):
    partition: str | None = None
    time_min: int = Field(24 * 60, ge=1)  # per job; preempted/timed-out jobs requeue and resume
    nodes: int = Field(1, ge=1)
    tasks_per_node: int | None = Field(None, ge=1)  # default: the sweep's nproc
    gpus_per_node: int | None = Field(None, ge=0)
    cpus_per_task: int | None = Field(None, ge=1)
    mem_gb: float | None = Field(None, gt=0)
    array_parallelism: int = Field(32, ge=1)  # jobs of the array running at once
    setup: list[str] = []  # shell lines run before each job, e.g. "module load cuda"
    extra: dict[str, Any] = {}  # passed verbatim to update_parameters, e.g. slurm_account


class SweepSpec(_Section):
    name: str | None = None
    out_dir: Path | None = None
    base: dict[str, Any] = {}
    grid: dict[str, Any] | list[Any] = {}  # one cartesian block, or a list of blocks
    outer: dict[str, Any] = {}  # keys varied slowest, around every grid block (e.g. seeds)
    points: list[dict[str, Any]] = []
    nproc: int = Field(1, ge=1)
    local: LocalSection = LocalSection()
    slurm: SlurmSection = SlurmSection()


@dataclass(frozen=True)
class Sweep:
    path: Path
    name: str
    out_dir: Path  # absolute
    base: dict[str, Any]  # the base config tree: file (base.config) merged with inline keys
    grid: list[dict[str, list[Any]]]  # cartesian blocks, expanded one after the other
    outer: dict[str, list[Any]]  # product around all blocks: outermost loop
    points: list[dict[str, Any]]
    nproc: int
    local: LocalSection
    slurm: SlurmSection

    @property
    def runs_dir(self) -> Path:
        return self.out_dir / "runs"


@dataclass(frozen=True)
class Point:
    name: str
    folder: Path
    overrides: list[str]  # dotted key=value, relative to the sweep's base
    config: Config  # resolved: base + overrides + train.out_dir/run_name of the sweep
    values: dict[str, Any] = field(default_factory=dict)


def _spec_error(path: Path, exc: ValidationError) -> ConfigError:
    return ConfigError(f"{path}: {describe_error(exc, SweepSpec)}")


def _check_key(path: Path, where: str, key: Any) -> None:
    """A grid/points key must be a dotted path into the config tree."""
    if not isinstance(key, str) or not key or any(not p for p in key.split(".")):
        raise ConfigError(f"{path}: {where}: keys must be dotted config keys such as batch.size")
    if key in RESERVED:
        raise ConfigError(f"{path}: {where}.{key}: set by the sweep (the point's run folder)")
    model: type[BaseModel] = Config
    parts = key.split(".")
    for i, part in enumerate(parts):
        valid = list(model.model_fields)
        if part not in model.model_fields:
            prefix = "".join(f"{p}." for p in parts[:i])
            hint = did_you_mean(part, valid, prefix)
            raise ConfigError(
                f"{path}: {where}.{key}: unknown key {prefix}{part}{hint} (valid: {', '.join(valid)})"
            )
        ann = model.model_fields[part].annotation
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            if i < len(parts) - 1:
                raise ConfigError(
                    f"{path}: {where}.{key}: {'.'.join(parts[: i + 1])} is a value, not a section"
                )
            return
        model = ann


def _validate_partial(tree: dict[str, Any], source: str) -> None:
    """Check keys and values of a base tree, but not cross-field rules (such as
    schedule.max_batch for adaptive methods): the grid may complete those per point."""
    try:
        Config.model_validate(tree)
    except ValidationError as exc:
        if any(err["loc"] for err in exc.errors()):
            validate(tree, source)  # raises the one-line error


def _grid_block(path: Path, where: str, block: Any) -> dict[str, list[Any]]:
    """One cartesian block: dotted config key -> non-empty list of values."""
    if not isinstance(block, dict):
        raise ConfigError(f"{path}: {where}: expected a mapping of dotted keys to lists of values")
    out: dict[str, list[Any]] = {}
    for key, values in block.items():
        _check_key(path, where, key)
        if not isinstance(values, list):
            raise ConfigError(
                f"{path}: {where}.{key}: expected a list of values, e.g. [32, 512] (got {values!r})"
            )
        if not values:
            raise ConfigError(f"{path}: {where}.{key}: empty list; give at least one value")
        out[key] = values
    return out


def load_sweep(path: str | Path) -> Sweep:
    """Read and fully validate a sweep file (every point's config included)."""
    path = Path(path)
    raw = read_yaml(path)
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as exc:
        raise _spec_error(path, exc) from None
    name = spec.name if spec.name is not None else path.stem
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ConfigError(f"{path}: name: use letters, digits, '.', '_' and '-' (got {name!r})")

    base = dict(spec.base)
    valid = ["config", *Config.model_fields]  # base: an optional config file + config sections
    for key in base:
        if key not in valid:
            raise ConfigError(
                f"{path}: base.{key}: unknown key{did_you_mean(str(key), valid, 'base.')} "
                f"(valid: {', '.join(valid)})"
            )
    tree: dict[str, Any] = {}
    cfg_file = base.pop("config", None)
    if cfg_file is not None:
        if not isinstance(cfg_file, str):
            raise ConfigError(f"{path}: base.config: expected a path to a config YAML")
        file = Path(cfg_file).expanduser()
        file = file if file.is_absolute() else path.parent / file
        if not file.is_file():
            raise ConfigError(f"{path}: base.config: no such config file {file}")
        tree = read_config_tree(file)
        _validate_partial(tree, str(file))
    tree = merge_trees(tree, base)
    _validate_partial(tree, f"{path}: base")

    blocks = spec.grid if isinstance(spec.grid, list) else [spec.grid]
    grid = [
        _grid_block(
            path,
            "grid" if len(blocks) == 1 and isinstance(spec.grid, dict) else f"grid[{i}]",
            block,
        )
        for i, block in enumerate(blocks)
    ]
    grid = [g for g in grid if g]
    outer = _grid_block(path, "outer", spec.outer)
    if outer and not grid:
        raise ConfigError(f"{path}: outer: needs a grid to wrap")
    for i, point in enumerate(spec.points):
        for key in point:
            _check_key(path, f"points[{i}]", key)
    if not grid and not spec.points:
        raise ConfigError(f"{path}: grid: no points; map dotted keys to lists of values")

    out_dir = spec.out_dir if spec.out_dir is not None else Path("sweeps") / name
    sweep = Sweep(
        path=path,
        name=name,
        out_dir=Path(os.path.abspath(out_dir.expanduser())),
        base=tree,
        grid=grid,
        outer=outer,
        points=[dict(p) for p in spec.points],
        nproc=spec.nproc,
        local=spec.local,
        slurm=spec.slurm,
    )
    expand(sweep)  # validates every point; raises on unknown keys, bad values, duplicates
    return sweep


# --- expansion and naming ---------------------------------------------------------------------

# Short tags for common keys ("" = the value alone); others use the key's last segment.
_ABBREV = {
    "schedule.method": "",
    "model.name": "",
    "data.name": "",
    "adversarial.method": "",
    "batch.size": "b",
    "train.seed": "s",
    "train.epochs": "e",
    "optim.lr": "lr",
    "optim.weight_decay": "wd",
    "optim.momentum": "mom",
    "model.width": "w",
    "adversarial.eps": "eps",
    "adversarial.fraction": "r",
    "schedule.max_batch": "bmax",
    "schedule.ref_batch": "bref",
    "schedule.alpha": "alpha",
    "schedule.growth_factor": "g",
    "hessian.block": "hb",
    "data.split_seed": "ss",
    "schedule.replay_from": "of-",
    "schedule.eigenvalue_trigger": "eigtrig-",
    "schedule.lr_scaling": "",  # abs-bmax16384-sqrt
    "schedule.lr_guard": "lrguard-",
    "schedule.growth_warmup": "warmup",
    "schedule.max_lr": "maxlr",
    "schedule.stop_rule": "stop-",
    "schedule.stop_noise_ratio": "stopratio",
}
_MAX_NAME = 64


def _tag(key: str) -> str:
    if key in _ABBREV:
        return _ABBREV[key]
    last = key.split(".")[-1]
    parts = [p for p in last.split("_") if p]
    return "".join(p[0] for p in parts) if len(parts) > 1 else last


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:g}"
    if v is None:
        return "none"
    if isinstance(v, list | tuple):
        return "_".join(_fmt(x) for x in v) or "empty"
    if isinstance(v, dict):
        return "_".join(f"{k}{_fmt(x)}" for k, x in v.items()) or "empty"
    return str(v)


def _safe(text: str) -> str:
    text = re.sub(r"[^A-Za-z0-9.+=_-]+", "_", text).strip("_")
    return text.lstrip(".-") or "x"


def _hash(values: dict[str, Any], n: int = 6) -> str:
    blob = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:n]


def _short(key: str, value: Any) -> Any:
    """A path value is named by its last component (``replay_from: .../absa-s0`` -> absa-s0)."""
    return Path(value).name if key.endswith("replay_from") and isinstance(value, str) else value


def point_name(values: dict[str, Any]) -> str:
    """Filesystem-safe, deterministic name of a point from its values (``absa-b512-s0``)."""
    pieces = [_safe(_tag(k) + _fmt(_short(k, v))) for k, v in values.items()]
    name = "-".join(pieces) or "base"
    if len(name) > _MAX_NAME:
        name = f"{name[: _MAX_NAME - 9].rstrip('-_.')}-{_hash(values, 8)}"
    return name


def _override_value(v: Any) -> str:
    if isinstance(v, str) and "\n" not in v:
        with contextlib.suppress(ConfigError):
            if parse_yaml(v) == v:
                return v
    return json.dumps(v, default=str)  # JSON is YAML


def _grid_values(sweep: Sweep) -> list[tuple[str, dict[str, Any]]]:
    """Every point's values with where it comes from in the sweep file, in point order:
    ``grid point #<n>`` (1-based, product order), then ``points[<i>]`` (0-based, file order)."""
    out = []
    n = 0
    okeys = list(sweep.outer)
    for ocombo in itertools.product(*(sweep.outer[k] for k in okeys)):
        around = dict(zip(okeys, ocombo, strict=True))
        for block in sweep.grid:
            keys = list(block)
            for combo in itertools.product(*(block[k] for k in keys)):
                n += 1
                values = dict(zip(keys, combo, strict=True))
                values.update({k: v for k, v in around.items() if k not in values})
                out.append((f"grid point #{n}", values))
    out.extend((f"points[{i}]", dict(p)) for i, p in enumerate(sweep.points))
    return out


def expand(sweep: Sweep) -> list[Point]:
    """Every point of the sweep, validated, with unique run folders under ``runs/``."""
    labelled = _grid_values(sweep)
    all_values = [values for _, values in labelled]
    names = [point_name(v) for v in all_values]
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    names = [
        f"{n}-{_hash(v)}" if counts[n] > 1 else n for n, v in zip(names, all_values, strict=True)
    ]

    points: list[Point] = []
    seen: dict[str, str] = {}  # resolved config -> "<origin> (<overrides>)" of its first point
    for name, (origin, values) in zip(names, labelled, strict=True):
        overrides = [f"{k}={_override_value(v)}" for k, v in values.items()]
        tree = deep_copy(sweep.base)
        for k, v in values.items():
            set_dotted(tree, k, v)
        where = f"{sweep.path}: point {name} ({', '.join(overrides) or 'base'})"
        cfg = validate(tree, where)
        key = json.dumps(to_dict(cfg), sort_keys=True)
        this = f"{origin} ({', '.join(overrides) or 'base'})"
        if key in seen:
            raise ConfigError(f"{sweep.path}: {seen[key]} and {this} resolve to the same config")
        set_dotted(tree, "train.out_dir", str(sweep.runs_dir))
        set_dotted(tree, "train.run_name", name)
        point = Point(name, sweep.runs_dir / name, overrides, validate(tree, where), values)
        seen[key] = this
        points.append(point)
    if len({p.name for p in points}) != len(points):  # only identical values could do this
        raise ConfigError(f"{sweep.path}: two points share a run folder name")
    return points


# --- status -----------------------------------------------------------------------------------


def status(point: Point | Path) -> str:
    """``done`` | ``running`` (a live process holds the run lock) | ``failed`` | ``partial``
    | ``pending`` from the files in the run folder."""
    folder = point.folder if isinstance(point, Point) else Path(point)
    if (folder / SUMMARY).is_file():
        return "done"
    if holder(folder) is not None:
        return "running"
    if (folder / MARKER).is_file():
        return "failed"
    if (folder / LAST).is_file():
        return "partial"
    return "pending"


def failure(point: Point | Path) -> str | None:
    """The recorded error line of a failed point, else None."""
    folder = point.folder if isinstance(point, Point) else Path(point)
    try:
        return str(json.loads((folder / MARKER).read_text()).get("error", "failed"))
    except (OSError, ValueError):
        return None


# --- running one point (shared by the local executor and submitit jobs) -----------------------


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
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"  # keeps the log's order: the error line comes last
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = _ROOT + (os.pathsep + old if old else "")
    if threads is not None and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def begin_attempt(task: PointTask, resume: bool, cmd: list[str]) -> tuple[Any, int]:
    """Clear an old failure marker (and stale metrics of a fresh start); open the log."""
    folder = Path(task.folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).unlink(missing_ok=True)
    if not resume:  # a fresh start must not append to a dead attempt's metrics
        (folder / "metrics.jsonl").unlink(missing_ok=True)
    log = (folder / LOG).open("a")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    log.write(f"=== absa sweep {stamp}: {'resume' if resume else 'start'}: {shlex.join(cmd)}\n")
    log.flush()
    return log, log.tell()


_ERROR_LINE = re.compile(r"^(error:|diverged:|\w+(Error|Exception|Interrupt)\b)")


def _error_line(text: str) -> str:
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
            reason = f"{_error_line(tail)} (exit {returncode})"
    marker = {
        "state": "failed",
        "error": reason,
        "returncode": returncode,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "log": str(folder / LOG),
    }
    atomic_write_text(folder / MARKER, json.dumps(marker, indent=2) + "\n")
    return reason


LOCK_WAIT_S = 60.0  # a requeued job's predecessor may still be shutting down


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
            return _summary(folder)
        if rank == 0 and not _lock_released(folder, LOCK_WAIT_S):  # another process has it
            raise PointFailed(f"{folder}: in use by pid {holder(folder)}; not started twice")
        resume = (folder / LAST).is_file()
        cmd = command(task, resume, torchrun=not per_task)
        if rank == 0:
            log, offset = begin_attempt(task, resume, cmd)
        else:
            log, offset = (folder / f"log.rank{rank}.txt").open("a"), 0
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=task.cwd,
                env=child_env(task.threads),
                preexec_fn=_ignore_usr2 if on_slurm else None,
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
            _stop(self._proc)
            self._proc = None
            log.close()
        if rank != 0:
            if rc != 0:
                raise PointFailed(f"{task.name}: rank {rank} exited with status {rc}")
            return {}
        error = end_attempt(task, rc, offset)
        if error:
            raise PointFailed(f"{task.name}: {error}")
        return _summary(folder)

    def checkpoint(self, task: PointTask) -> Any:
        """Called by submitit's signal handler, possibly while ``__call__`` waits for the
        process: ``Popen.wait`` must not be used here (the interrupted wait holds its lock)."""
        import submitit

        _terminate(self._proc)
        return submitit.helpers.DelayedSubmission(PointJob(), task)


# how long a Slurm task whose training process got SIGTERM waits to be killed (KillWait)
_SLURM_KILL_WAIT_S = 300.0


def _ignore_usr2() -> None:
    """preexec_fn: the child ignores SIGUSR2 (inherited through exec), leaving it to submitit."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def _exited(pid: int) -> bool:
    """Whether ``pid`` has ended (gone, or a zombie not yet reaped), without reaping it."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
    except (OSError, IndexError):  # no /proc: ask the kernel whether the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def _terminate(proc: subprocess.Popen[bytes] | None, grace_s: float = 10.0) -> None:
    """SIGTERM (then SIGKILL) our child and wait until it has ended, without reaping it:
    safe inside a signal handler that interrupted ``proc.wait()``."""
    if proc is None or proc.returncode is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if _exited(proc.pid):
                return
            time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes] | None, group: bool = False, grace_s: float = 10.0) -> None:
    """Terminate (then kill) a process we started, or its whole session when ``group``."""
    if proc is None or proc.poll() is not None:
        return

    def send(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)

    send(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        proc.wait()


def _summary(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / SUMMARY).read_text())
    except (OSError, ValueError):
        return {}


# --- executors --------------------------------------------------------------------------------


@dataclass
class SweepResult:
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


def _threads(max_parallel: int) -> int | None:
    """Share the cores between points running side by side on one machine."""
    return max(1, (os.cpu_count() or 1) // max_parallel) if max_parallel > 1 else None


def _task(point: Point, nproc: int, threads: int | None = None) -> PointTask:
    folder = point.folder
    return PointTask(point.name, str(folder), str(folder.parent), nproc, os.getcwd(), threads)


def _done_line(name: str, folder: Path, seconds: float) -> str:
    s = _summary(folder)
    if not s:
        return f"done {name} ({seconds:.0f}s)"
    return (
        f"done {name}: test acc {s.get('test_acc', float('nan')):.2f}% after "
        f"{s.get('updates')} updates, final batch {s.get('final_batch')} ({seconds:.0f}s)"
    )


def _run_local(
    points: list[Point], sweep: Sweep, max_parallel: int, say: Say, result: SweepResult
) -> None:
    with _terminate_as_interrupt():
        _local_loop(points, sweep, max_parallel, say, result)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Any:
    """SIGTERM raises KeyboardInterrupt while points run, so their processes are stopped."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _local_loop(
    points: list[Point], sweep: Sweep, max_parallel: int, say: Say, result: SweepResult
) -> None:
    env = child_env(_threads(max_parallel))
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
                task = _task(p, sweep.nproc)
                resume = (p.folder / LAST).is_file()
                cmd = command(task, resume, torchrun=True)
                log, offset = begin_attempt(task, resume, cmd)
                proc = subprocess.Popen(
                    cmd,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,  # one group: a timeout kills torchrun's workers too
                    preexec_fn=_die_with_parent(os.getpid()),
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
                    _stop(proc, group=True)
                    rc = proc.returncode
                    reason = f"timeout after {sweep.local.timeout_min:g} min"
                log.close()
                del running[name]
                _record(p, end_attempt(_task(p, sweep.nproc), rc, offset, reason), t0, say, result)
    except BaseException:
        for p, proc, log, _offset, _t0 in running.values():
            _stop(proc, group=True)
            log.close()
            say(f"stopped {p.name}; run the sweep again to resume it")
        raise


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """A preexec_fn making the child get SIGTERM when the sweep dies, even by kill -9
    (Linux PR_SET_PDEATHSIG; torchrun passes SIGTERM on to its workers). Elsewhere None:
    the run lock still keeps a rerun from starting a second process on a live point."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None

    def arm() -> None:
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the sweep died before prctl took effect
            os._exit(1)

    return arm


def _record(p: Point, error: str, t0: float, say: Say, result: SweepResult) -> None:
    if error:
        result.failed.append(p.name)
        result.errors[p.name] = error
        say(f"FAILED {p.name}: {error} (log: {p.folder / LOG})")
    else:
        result.done.append(p.name)
        say(_done_line(p.name, p.folder, time.monotonic() - t0))


def _executor(sweep: Sweep, executor: str, max_parallel: int) -> Any:
    """A configured submitit AutoExecutor; problems become one-line ConfigErrors."""
    import submitit

    setup = [f"export PYTHONPATH={shlex.quote(_ROOT)}${{PYTHONPATH:+:$PYTHONPATH}}"]
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


def _run_submitit(
    ex: Any,
    points: list[Point],
    sweep: Sweep,
    executor: str,
    max_parallel: int,
    wait: bool,
    say: Say,
    result: SweepResult,
) -> None:
    # submitit's LocalExecutor has no array throttle: submit local jobs in waves
    waves = (
        [points[i : i + max_parallel] for i in range(0, len(points), max_parallel)]
        if executor == "submitit-local"
        else [points]
    )
    for wave in waves:
        threads = _threads(max_parallel) if executor == "submitit-local" else None
        tasks = [_task(p, sweep.nproc, threads) for p in wave]
        try:
            jobs = ex.map_array(PointJob(), tasks)
        except Exception as err:  # noqa: BLE001 - sbatch missing, rejected parameters...
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"{executor}: submission failed: {first}") from None
        t0 = time.monotonic()
        for p, job in zip(wave, jobs, strict=True):
            logs = _job_logs(job)
            atomic_write_text(
                p.folder / "job.json",
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
        if not wait:
            result.pending.extend(p.name for p in wave)
            continue
        if executor == "slurm":
            _wait_slurm(wave, jobs, sweep, say, result, t0)
            continue
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
                _record(p, error, t0, say, result)


def _job_logs(job: Any) -> Any:
    """submitit's paths of a job's first task (its log files, result pickle)."""
    from submitit.core.utils import JobPaths

    return JobPaths(job.paths.folder, job_id=job.job_id, task_id=0)


# --- Slurm job states from squeue (no accounting needed) --------------------------------------

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
_GONE_GRACE_S = 60.0  # a job never listed yet is not taken for finished before this
# an ended state counts once it has lasted this long: a job that submitit requeues (USR2
# before the time limit) can show FAILED for a moment before it is PENDING again
_ENDED_SETTLE_S = 10.0


@dataclass(frozen=True)
class SlurmState:
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


def _poll_max_s() -> float:
    """Longest pause between two squeue calls: ABSA_SLURM_POLL_S (default 30 s)."""
    try:
        return max(0.2, float(os.environ.get("ABSA_SLURM_POLL_S", "30")))
    except ValueError:
        return 30.0


def _wait_slurm(
    wave: list[Point], jobs: list[Any], sweep: Sweep, say: Say, result: SweepResult, t0: float
) -> None:
    """Wait for the jobs with squeue, printing each job's state changes; the run folder
    (summary.json, status.json) then says whether its point finished."""
    poll_max = _poll_max_s()
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
                    end_attempt(_task(p, sweep.nproc), None, 0, error)
            _record(p, error, t0, say, result)
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
        return _error_line(str(payload))
    ended = "left the queue" if state == GONE else f"ended {state}"
    return f"job {job.job_id} {ended} without a summary (submitit log: {paths.stderr})"


def _job_error(job: Any) -> str:
    try:
        exc = job.exception()
    except Exception as err:  # noqa: BLE001 - job folder unreadable
        exc = err
    text = str(exc).strip() if exc is not None else ""
    return _error_line(text) if text else f"job {job.job_id} ended without a summary"


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
    kinds = ("done", "running", "partial", "failed")
    counts = {s: sum(v == s for v in states.values()) for s in kinds}
    todo = [p for p in points if states[p.name] not in ("done", "running")]
    result.skipped = [p.name for p in points if states[p.name] == "done"]
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
    if dry_run:
        width = max(len(p.name) for p in points)
        for p in points:
            say(f"  {states[p.name]:<8} {p.name:<{width}}  {' '.join(p.overrides) or '(base)'}")
            if states[p.name] == "failed":
                say(f"           last error: {failure(p)}")
        result.pending = [p.name for p in todo]
        return result

    limit = max_parallel or (
        sweep.slurm.array_parallelism if executor == "slurm" else sweep.local.max_parallel
    )
    ex = _executor(sweep, executor, limit) if todo and executor != "local" else None
    _manifest(sweep, points)
    for p in todo:  # the resolved config each point trains with (never for finished points)
        p.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            p.folder / POINT_CONFIG, yaml.safe_dump(to_dict(p.config), sort_keys=False)
        )
    if todo and ex is None:
        _run_local(todo, sweep, limit, say, result)
    elif todo:
        _run_submitit(ex, todo, sweep, executor, limit, wait, say, result)
    order = {p.name: i for i, p in enumerate(points)}  # completion order -> point order
    for names in (result.done, result.failed, result.pending):
        names.sort(key=order.__getitem__)
    say(
        f"sweep {sweep.name}: {len(result.done)} done, {len(result.failed)} failed, "
        f"{len(result.skipped)} skipped (finished before)"
        + (f", {len(result.pending)} submitted" if result.pending else "")
    )
    return result
