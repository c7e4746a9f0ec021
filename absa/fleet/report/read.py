"""Reading a sweep's run folders: config.yaml, summary.json and metrics.jsonl.

``collect`` reads every run folder under ``<sweep_dir>/runs/`` (or under ``sweep_dir``
itself when it has no ``runs/``, or ``sweep_dir`` when it is one run folder). Runs without a
summary.json are unfinished: ignored, but counted. Runs whose files are malformed (say a
summary.json that is not a JSON object) are unreadable: skipped with a one-line reason that
names the file.

Each run's row is its batch size B: the fixed batch of fixed-batch methods, the maximum
batch of growing ones. Ablations are named as such: ``ABSA (duration only)``
(``schedule.eigenvalue_trigger: false``) and ``replay of ABSA`` (method ``replay``, named
after the replayed run's method).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from absa.core.policies import methods, varying
from absa.run.config import ConfigError, read_yaml
from absa.run.folder import CONFIG, METRICS, SUMMARY, MetricsError, read_metrics


def replays(method: str) -> bool:
    """Whether ``method`` plays back another run's trajectory (the policy registry says)."""
    return method in methods(replays=True)


def batch_varies(method: str) -> bool:
    """Whether ``method``'s batch changes during a run (row: schedule.max_batch): the
    growing methods and the replays of (usually growing) runs."""
    return method in varying()


def _curvature(method: str) -> bool:
    """Whether ``method`` has the eigenvalue trigger that eigenvalue_trigger: false ablates."""
    return method in methods(curvature=True)


class ReportError(ValueError):
    """Nothing to report; one line for the user."""


@dataclass
class RunRecord:
    name: str
    folder: Path
    method: str
    batch_size: int  # the paper's row: batch.size (fixed) or schedule.max_batch (growing)
    final_batch: int
    seed: int
    test_acc: float  # final epoch
    best_test_acc: float
    test_loss: float
    updates: int
    epochs: int
    train_seconds: float
    hessian_seconds: float
    config: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)
    label: str = ""  # the column's method name: "ABSA", "ABSA (duration only)", "replay of ABSA"
    eval_seconds: float = 0.0
    robust: list[dict[str, Any]] = field(default_factory=list)  # summary.json's "robust"
    growths: list[dict[str, Any]] = field(default_factory=list)  # summary.json's "growths"

    def __post_init__(self) -> None:
        self.label = self.label or method_name(self.method)

    @property
    def ablation(self) -> bool:
        return self.label != method_name(self.method) or replays(self.method)


class Unreadable(ValueError):
    """A run folder that cannot be reported; the message starts with the faulty file."""


class Collected(list):
    """The finished runs, the names of unfinished run folders, and per unreadable folder
    name the one-line reason (starting with the faulty file)."""

    def __init__(self, records: Iterable[RunRecord] = ()) -> None:
        super().__init__(records)
        self.unfinished: list[str] = []
        self.unreadable: dict[str, str] = {}


def _run_folders(sweep_dir: Path) -> list[Path]:
    """The runs of a sweep (``runs/*``), of a folder of runs, or a single run folder."""
    if (sweep_dir / CONFIG).is_file() and (sweep_dir / METRICS).exists():
        return [sweep_dir]
    root = sweep_dir / "runs" if (sweep_dir / "runs").is_dir() else sweep_dir
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / CONFIG).is_file())


def method_name(method: str) -> str:
    """A method as the tables show it: ``ABSA``, ``INNER_PRODUCT``."""
    return method.upper()


def _method(cfg: dict[str, Any]) -> str:
    return str(cfg.get("schedule", {}).get("method", "bl"))


def _row_batch(cfg: dict[str, Any]) -> int:
    """Row of the paper's table: the fixed batch of fixed-batch methods, the maximum batch of
    growing ones (which start from batch.size and grow towards it)."""
    start = int(cfg.get("batch", {}).get("size", 128))
    if batch_varies(_method(cfg)):
        return int(cfg.get("schedule", {}).get("max_batch") or start)
    return start


def _replay_source(cfg: dict[str, Any], where: Path | None = None) -> Path | None:
    """The folder of the run a replay plays back: ``schedule.replay_from`` as written (absolute,
    or relative to the working directory), else, when the sweep was moved or committed
    elsewhere, the folder of that name next to the replay's own run folder ``where``."""
    src = cfg.get("schedule", {}).get("replay_from")
    if not src:
        return None
    given = Path(str(src))
    candidates = [given]
    if where is not None:
        candidates += [where.parent / given.name]
    return next((c for c in candidates if (c / CONFIG).is_file()), None)


def _replayed(
    cfg: dict[str, Any], depth: int = 0, where: Path | None = None
) -> dict[str, Any] | None:
    """The config of the run a replay plays back (None if it cannot be read)."""
    src = _replay_source(cfg, where)
    if src is None or depth > 8:
        return None
    try:
        return read_yaml(src / CONFIG)
    except (ConfigError, OSError):
        return None


def method_label(cfg: dict[str, Any], _depth: int = 0, where: Path | None = None) -> str:
    """The column name of a run's method, ablations named as such: ``ABSA (duration only)``
    for an eigenvalue-triggered method with ``schedule.eigenvalue_trigger: false``, ``replay
    of ABSA`` for a replay (``REPLAY`` when the replayed run's config cannot be read).
    ``where``: the run's folder (to find a replayed run that moved along with it)."""
    method = _method(cfg)
    if replays(method):
        src = _replayed(cfg, _depth, where)
        nxt = _replay_source(cfg, where)
        return f"replay of {method_label(src, _depth + 1, nxt)}" if src is not None else "REPLAY"
    if _curvature(method) and cfg.get("schedule", {}).get("eigenvalue_trigger") is False:
        return f"{method_name(method)} (duration only)"
    return method_name(method)


_JSON_KINDS = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}


def _json_kind(value: Any) -> str:
    return "null" if value is None else _JSON_KINDS.get(type(value), type(value).__name__)


@contextmanager
def _blame(path: Path) -> Iterator[None]:
    """Re-raise a bad or missing value read from ``path`` as Unreadable naming it."""
    try:
        yield
    except Unreadable:
        raise
    except KeyError as err:
        raise Unreadable(f"{path}: no {err.args[0]!r} entry") from None
    except UnicodeDecodeError:
        raise Unreadable(f"{path}: not UTF-8 text") from None
    except OSError as err:
        raise Unreadable(f"{path}: cannot read: {err.strerror or err}") from None
    except (TypeError, ValueError) as err:
        raise Unreadable(f"{path}: {str(err).splitlines()[0] if str(err) else repr(err)}") from None


def _read_config(path: Path) -> dict[str, Any]:
    """config.yaml as a mapping of sections, each a mapping (ConfigError names the file)."""
    cfg = read_yaml(path)
    for section, values in cfg.items():
        if not isinstance(values, dict):
            raise Unreadable(
                f"{path}: section {section!r} is not a mapping (got {type(values).__name__})"
            )
    return cfg


def _read_summary(path: Path) -> dict[str, Any]:
    with _blame(path):
        try:
            summary = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise Unreadable(f"{path}: not valid JSON ({err})") from None
    if not isinstance(summary, dict):
        raise Unreadable(f"{path}: not a JSON object (got {_json_kind(summary)})")
    return summary


def _read_metrics(folder: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's records, read strictly by absa.run.folder: a torn last line is
    skipped, a line that is not a record of numbers makes the run unreadable."""
    try:
        return read_metrics(folder, strict=True)
    except MetricsError as err:
        raise Unreadable(str(err)) from None


def _read_run(folder: Path) -> RunRecord:
    cfg_path, summary_path = folder / CONFIG, folder / SUMMARY
    cfg = _read_config(cfg_path)
    summary = _read_summary(summary_path)
    metrics = _read_metrics(folder)
    last = metrics[-1] if metrics else {}
    with _blame(cfg_path):
        method = _method(cfg)
        batch_size = _row_batch(cfg)
        if replays(method) and (src := _replayed(cfg, where=folder)) is not None:
            batch_size = _row_batch(src)  # the replayed run's row
        seed = int(cfg.get("train", {}).get("seed", 0))
        label = method_label(cfg, where=folder)
    with _blame(summary_path):
        robust = summary.get("robust") or []
        if not isinstance(robust, list) or not all(
            isinstance(r, dict) and isinstance(r.get("acc"), int | float) for r in robust
        ):
            raise Unreadable(f"{summary_path}: 'robust' is not a list of rows with an 'acc'")
    with _blame(summary_path):
        acc = last.get("test_acc")
        if acc is None:
            acc = summary["test_acc"]
        loss = last.get("test_loss")
        if loss is None:
            loss = summary.get("test_loss", math.nan)
        return RunRecord(
            name=folder.name,
            folder=folder,
            method=method,
            batch_size=batch_size,
            final_batch=int(summary.get("final_batch") or last.get("batch_size") or 0),
            seed=seed,
            test_acc=float(acc),
            best_test_acc=float(summary.get("best_test_acc", acc)),
            test_loss=float(loss) if loss is not None else math.nan,
            updates=int(summary["updates"]),
            epochs=int(summary.get("epochs", len(metrics))),
            train_seconds=float(summary.get("train_seconds") or 0.0),
            hessian_seconds=float(summary.get("hessian_seconds") or 0.0),
            config=cfg,
            metrics=metrics,
            label=label,
            eval_seconds=float(summary.get("eval_seconds") or 0.0),
            robust=robust,
            growths=[g for g in summary.get("growths") or [] if isinstance(g, dict)],
        )


def collect(sweep_dir: str | Path) -> Collected:
    """Finished runs under ``<sweep_dir>/runs/*`` (sorted by folder name)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ReportError(f"{sweep_dir}: no such sweep folder")
    out = Collected()
    for folder in _run_folders(sweep_dir):
        if not (folder / SUMMARY).is_file():
            out.unfinished.append(folder.name)
            continue
        try:
            out.append(_read_run(folder))
        except (OSError, ValueError, KeyError, TypeError, ConfigError) as err:
            why = str(err).splitlines()[0] if str(err) else repr(err)
            out.unreadable[folder.name] = why if why.startswith(str(folder)) else f"{folder}: {why}"
    return out


def collect_many(sweep_dirs: Sequence[str | Path]) -> Collected:
    """``collect`` of several sweeps, merged (one report over them); two run folders of the
    same name are a ReportError (their rows would be mixed up)."""
    out = Collected()
    seen: dict[str, Path] = {}
    for d in sweep_dirs:
        part = collect(d)
        for r in part:
            if r.name in seen:
                raise ReportError(f"{r.folder} and {seen[r.name]}: two runs named {r.name}")
            seen[r.name] = r.folder
            out.append(r)
        out.unfinished += part.unfinished
        out.unreadable.update(part.unreadable)
    return out


def nothing_to_report(sweep_dir: Path, records: Collected) -> str:
    """Why there is no table, in one line: unreadable runs (with the first reason) first."""
    unfinished = len(records.unfinished)
    if not records.unreadable:
        return (
            f"{sweep_dir}: no finished runs (a run is finished when it has summary.json; "
            f"{unfinished} unfinished)"
        )
    first = next(iter(records.unreadable.values()))
    more = f", {unfinished} unfinished" if unfinished else ""
    return (
        f"{sweep_dir}: no readable runs: {len(records.unreadable)} skipped{more} (first: {first})"
    )
