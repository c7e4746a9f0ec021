"""Tables and figures of a finished (or partly finished) sweep.

``collect`` reads every run folder under ``<sweep_dir>/runs/`` (or under ``sweep_dir``
itself when it has no ``runs/``): config.yaml, summary.json and metrics.jsonl. Runs without
a summary.json are unfinished: ignored, but counted. Runs whose files are malformed (say a
summary.json that is not a JSON object) are unreadable: skipped with a one-line reason that
names the file.

``table`` groups the runs the way the paper's tables are laid out: one row per batch size B
(the fixed batch of fixed-batch methods, the maximum batch of growing ones, which start from
``batch.size`` and grow towards it), one column per method, each cell the final-epoch test
accuracy as mean ± std over seeds (sample std, n-1; a single seed shows ``(n=1)`` instead)
and the mean number of SGD updates, plus the final batch size for growing methods. The
methods and which of them grow come from the registry (``absa.schedules.METHODS``).
Ablations get their own column: ``ABSA (duration only)`` (``schedule.eigenvalue_trigger:
false``) and ``replay of ABSA`` (method ``replay``, named after the replayed run's method).
When runs of the same method and batch size differ in some other config key (say
``adversarial.eps``), that key becomes part of the column (``ABSA (eps=0.01)``); a key
missing from an older run's config.yaml counts as its default.

Each group also gets its cost and robustness (the second table and the CSV): SGD updates
to first reach the target accuracy (the best fixed-batch BL at the smallest batch, final
accuracy minus ``TARGET_MARGIN`` points; per run from metrics.jsonl) and the training wall
seconds until then (``train_seconds`` + ``hessian_seconds`` of those epochs; evaluation
excluded), samples processed
(forward+backward passes: training samples plus adversarial samples times the attack's
gradient steps), Hessian-vector products, the Hessian's share of the training time, wall
time, and clean/FGSM/PGD accuracy per epsilon where summary.json has ``robust`` rows.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
import textwrap
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import (  # noqa: E402
    FixedLocator,
    FuncFormatter,
    LogLocator,
    MaxNLocator,
    NullFormatter,
    NullLocator,
)

from absa.checkpoint import atomic_write_bytes, atomic_write_text  # noqa: E402
from absa.config import METHODS, Config, ConfigError, read_yaml, to_dict  # noqa: E402
from absa.runlog import METRICS  # noqa: E402
from absa.schedules import METHODS as REGISTRY  # noqa: E402

# methods whose batch changes during a run (row: schedule.max_batch); a replay plays back
# a recorded, usually growing, trajectory
ADAPTIVE = tuple(m for m, spec in REGISTRY.items() if spec.grows)
_VARYING = (*ADAPTIVE, "replay")
# methods with the eigenvalue trigger that schedule.eigenvalue_trigger: false switches off
_CURVATURE = ("abs", "absa", "hybrid")
TARGET_METHOD = "bl"  # the target accuracy is this method's at its smallest batch ...
TARGET_MARGIN = 1.0  # ... minus this many points
# gradient computations per adversarial sample (crafting); pgd: adversarial.pgd_steps
ATTACK_COST = {"fgsm": 1, "fast_fgsm": 1}
# config keys that do not make two runs different experiments
_IGNORED = {
    "train.seed",
    "train.run_name",
    "train.out_dir",
    "train.device",
    "train.threads",
    "train.eval_batch",
    "batch.max_micro_batch",
    "data.root",
    "data.download",
    "data.num_workers",
    "schedule.eigenvalue_trigger",  # in the column's name ("duration only")
    "schedule.replay_from",  # in the column's name ("replay of ...")
}
_IGNORED_SECTIONS = ("distributed.", "log.")  # log.*: where metrics are also sent
_SHORT = {"adversarial.eps": "eps", "adversarial.fraction": "r", "batch.size": "B"}
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
_LINESTYLES = ("-", "--", ":", "-.")
_ATTACK_ORDER = ("clean", "fgsm", "fast_fgsm", "pgd")


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
        return self.label != method_name(self.method) or self.method == "replay"


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
    if (sweep_dir / "config.yaml").is_file() and (sweep_dir / "metrics.jsonl").exists():
        return [sweep_dir]
    root = sweep_dir / "runs" if (sweep_dir / "runs").is_dir() else sweep_dir
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / "config.yaml").is_file())


def method_name(method: str) -> str:
    """A method as the tables show it: ``ABSA``, ``INNER_PRODUCT``."""
    return method.upper()


def _method(cfg: dict[str, Any]) -> str:
    return str(cfg.get("schedule", {}).get("method", "bl"))


def _row_batch(cfg: dict[str, Any]) -> int:
    """Row of the paper's table: the fixed batch of fixed-batch methods, the maximum batch of
    growing ones (which start from batch.size and grow towards it)."""
    start = int(cfg.get("batch", {}).get("size", 128))
    if _method(cfg) in _VARYING:
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
    return next((c for c in candidates if (c / "config.yaml").is_file()), None)


def _replayed(
    cfg: dict[str, Any], depth: int = 0, where: Path | None = None
) -> dict[str, Any] | None:
    """The config of the run a replay plays back (None if it cannot be read)."""
    src = _replay_source(cfg, where)
    if src is None or depth > 8:
        return None
    try:
        return read_yaml(src / "config.yaml")
    except (ConfigError, OSError):
        return None


def method_label(cfg: dict[str, Any], _depth: int = 0, where: Path | None = None) -> str:
    """The column name of a run's method, ablations named as such: ``ABSA (duration only)``
    for an eigenvalue-triggered method with ``schedule.eigenvalue_trigger: false``, ``replay
    of ABSA`` for a replay (``REPLAY`` when the replayed run's config cannot be read).
    ``where``: the run's folder (to find a replayed run that moved along with it)."""
    method = _method(cfg)
    if method == "replay":
        src = _replayed(cfg, _depth, where)
        nxt = _replay_source(cfg, where)
        return f"replay of {method_label(src, _depth + 1, nxt)}" if src is not None else "REPLAY"
    if method in _CURVATURE and cfg.get("schedule", {}).get("eigenvalue_trigger") is False:
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


# metrics.jsonl fields the table and the plots compute with: numbers or null
_METRIC_NUMBERS = (
    "epoch",
    "batch_size",
    "lr",
    "lambda_max",
    "test_acc",
    "test_loss",
    "updates",
    "samples",
    "adv_samples",
    "hessian_hvps",
    "seconds",
)


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's records, each a JSON object whose numeric fields are numbers.

    Lines that are not JSON at all are skipped (a killed run's torn last line), as
    ``runlog.read_metrics`` does; valid JSON that is not such an object makes the run
    unreadable instead of being dropped silently.
    """
    if not path.is_file():
        return []
    with _blame(path):
        text = path.read_text(errors="replace")
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(rec, dict):
            raise Unreadable(f"{path}: line {n} is not a JSON object (got {_json_kind(rec)})")
        for key in _METRIC_NUMBERS:
            value = rec.get(key)
            if value is not None and _json_kind(value) != "number":
                raise Unreadable(
                    f"{path}: line {n}: {key!r} is not a number (got {_json_kind(value)})"
                )
        records.append(rec)
    return records


def _read_run(folder: Path) -> RunRecord:
    cfg_path, summary_path = folder / "config.yaml", folder / "summary.json"
    cfg = _read_config(cfg_path)
    summary = _read_summary(summary_path)
    metrics = _read_metrics(folder / METRICS)
    last = metrics[-1] if metrics else {}
    with _blame(cfg_path):
        method = _method(cfg)
        batch_size = _row_batch(cfg)
        if method == "replay" and (src := _replayed(cfg, where=folder)) is not None:
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
        if not (folder / "summary.json").is_file():
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


def _nothing_to_report(sweep_dir: Path, records: Collected) -> str:
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


# --- per-run costs --------------------------------------------------------------------------


def _sum_metric(r: RunRecord, key: str) -> float | None:
    """The sum of a metrics field over the run's epochs (None if no epoch logged it)."""
    values = [m[key] for m in r.metrics if m.get(key) is not None]
    return float(sum(values)) if values else None


def attack_cost(cfg: dict[str, Any]) -> int:
    """Gradient computations to craft one adversarial training example."""
    adv = cfg.get("adversarial", {})
    method = str(adv.get("method", "fgsm"))
    if method == "pgd":
        return int(adv.get("pgd_steps") or 10)
    return ATTACK_COST.get(method, 1)


def samples_processed(r: RunRecord) -> float | None:
    """Forward+backward passes of the run: training samples plus adversarial samples times
    the attack's gradient steps (None for runs whose metrics lack ``samples``)."""
    samples = _sum_metric(r, "samples")
    if samples is None:
        return None
    return samples + (_sum_metric(r, "adv_samples") or 0.0) * attack_cost(r.config)


def hessian_share(r: RunRecord) -> float | None:
    """Hessian probe time / training time (None without training time)."""
    return r.hessian_seconds / r.train_seconds if r.train_seconds > 0 else None


# what made a batch grow, as counted in the report (summary.json's Growth.trigger, folded)
TRIGGERS = ("eigenvalue", "noise", "duration", "schedule")


def growth_triggers(r: RunRecord) -> dict[str, int]:
    """Growths of one run by trigger, plus ``vetoed``: growths a trigger asked for and a rule
    refused (metrics.jsonl 'veto').

    Adaptive policies record each growth with its trigger in summary.json ("eigenvalue" and
    "eigenvalue_confident" count as eigenvalue); a batch increase between epochs that no
    recorded growth explains (GG, Seesaw: a fixed schedule) counts as "schedule".
    """
    counts = dict.fromkeys(TRIGGERS, 0)
    for g in r.growths:
        trigger = str(g.get("trigger", ""))
        trigger = "eigenvalue" if trigger.startswith("eigenvalue") else trigger
        counts[trigger] = counts.get(trigger, 0) + 1
    batches = [m["batch_size"] for m in r.metrics if isinstance(m.get("batch_size"), int)]
    increases = sum(b > a for a, b in zip(batches, batches[1:], strict=False))
    counts["schedule"] += max(0, increases - len(r.growths))
    counts["vetoed"] = sum(1 for m in r.metrics if m.get("veto"))
    return counts


def wall_seconds(r: RunRecord) -> float:
    return r.train_seconds + r.hessian_seconds + r.eval_seconds


def updates_to_reach(r: RunRecord, target: float | None) -> int | None:
    """SGD updates at the end of the first epoch whose test accuracy is >= ``target``."""
    if target is None:
        return None
    for m in sorted(r.metrics, key=lambda m: m.get("epoch", 0)):
        if m.get("test_acc") is not None and m["test_acc"] >= target and m.get("updates"):
            return int(m["updates"])
    return None


def seconds_to_reach(r: RunRecord, target: float | None) -> float | None:
    """Training wall seconds until the test accuracy first reaches ``target``: the
    ``train_seconds`` + ``hessian_seconds`` of every epoch up to and including that one
    (evaluation excluded, as the probe is part of training and evaluation is not). None when
    it is never reached or an epoch up to it lacks ``train_seconds`` (older metrics)."""
    if target is None:
        return None
    total = 0.0
    for m in sorted(r.metrics, key=lambda m: m.get("epoch", 0)):
        if m.get("train_seconds") is None:
            return None
        total += float(m["train_seconds"]) + float(m.get("hessian_seconds") or 0.0)
        if m.get("test_acc") is not None and m["test_acc"] >= target and m.get("updates"):
            return total
    return None


def _robust_key(row: dict[str, Any]) -> str:
    attack = str(row.get("attack", "?"))
    return "clean" if attack == "clean" else f"{attack} {float(row.get('eps', 0.0)):g}"


def _robust_order(key: str) -> tuple[int, str, float]:
    attack, _, eps = key.partition(" ")
    rank = _ATTACK_ORDER.index(attack) if attack in _ATTACK_ORDER else len(_ATTACK_ORDER)
    return rank, attack, float(eps or 0.0)


def robust_columns(rows: list[dict[str, Any]]) -> list[str]:
    """The robust accuracy columns present: ``clean``, ``fgsm 0.01``, ``pgd 0.01``, ..."""
    return sorted({k for r in rows for k in r.get("robust", {})}, key=_robust_order)


# --- the table ----------------------------------------------------------------------------


_DEFAULTS: dict[str, str] | None = None


def _defaults() -> dict[str, str]:
    """The flat default config: the value of a key an older run's config.yaml lacks."""
    global _DEFAULTS
    if _DEFAULTS is None:
        _DEFAULTS = _flat(to_dict(Config()))
    return _DEFAULTS


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v, sort_keys=True, default=str)
    return out


def _full_flat(r: RunRecord) -> dict[str, Any]:
    return {**_defaults(), **_flat(r.config)}


def _variant_keys(records: list[RunRecord]) -> dict[str, list[str]]:
    """Per method label: config keys that differ between runs of one (batch size, label)."""
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r.batch_size, r.label), []).append(_full_flat(r))
    keys: dict[str, list[str]] = {r.label: [] for r in records}
    for (_batch, label), flats in groups.items():
        for k in sorted(set().union(*flats)):
            if k in _IGNORED or k.startswith(_IGNORED_SECTIONS) or k in keys[label]:
                continue
            if len({f.get(k) for f in flats}) > 1:
                keys[label].append(k)
    return keys


def _variant(record: RunRecord, keys: list[str]) -> str:
    flat = _full_flat(record)
    parts = []
    for k in keys:
        v = json.loads(flat[k]) if k in flat else None
        if isinstance(v, float) and v.is_integer():
            v = int(v)  # warmup_epochs=2, not 2.0
        parts.append(f"{_SHORT.get(k, k.split('.')[-1])}={'none' if v is None else v}")
    return ", ".join(parts)


def _method_order(method: str) -> int:
    return METHODS.index(method) if method in METHODS else len(METHODS)


def column_label(method: str, variant: str = "") -> str:
    """``ABSA``, ``ABSA (eps=0.01)``; ``method`` may be a label (``replay of ABSA``)."""
    name = method if method != method.lower() or " " in method else method_name(method)
    return name + (f" ({variant})" if variant else "")


def _std(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def _mean(xs: Iterable[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.fmean(vals) if vals else None


def target_accuracy(rows: list[dict[str, Any]]) -> tuple[float | None, str]:
    """(target, how): the best BL group at BL's smallest batch, final accuracy minus
    TARGET_MARGIN points; (None, why) without BL runs."""
    bl = [r for r in rows if r["method"] == TARGET_METHOD and not r["ablation"]]
    if not bl:
        return None, f"no {method_name(TARGET_METHOD)} run, so no target accuracy"
    small = min(r["batch"] for r in bl)
    best = max((r for r in bl if r["batch"] == small), key=lambda r: r["acc_mean"])
    target = best["acc_mean"] - TARGET_MARGIN
    return target, (
        f"target {target:.2f}% = {best['column']} at B = {small} ({best['acc_mean']:.2f}%) "
        f"- {TARGET_MARGIN:g} pt"
    )


def _trigger_means(rs: list[RunRecord]) -> dict[str, float]:
    """Mean growths per run by trigger (``growths_<trigger>_mean``), in all and vetoed."""
    tallies = [growth_triggers(r) for r in rs]
    keys = [*TRIGGERS, *sorted({k for t in tallies for k in t} - {*TRIGGERS, "vetoed"})]
    out = {f"growths_{k}_mean": statistics.fmean(t.get(k, 0) for t in tallies) for k in keys}
    out["growths_mean"] = sum(out.values())
    out["vetoed_mean"] = statistics.fmean(t["vetoed"] for t in tallies)
    return out


def table(records: Iterable[RunRecord]) -> list[dict[str, Any]]:
    """One row per (row batch, method label[, variant]) group, sorted by batch then method."""
    records = list(records)
    keys = _variant_keys(records)
    groups: dict[tuple[int, str, str], list[RunRecord]] = {}
    for r in records:
        groups.setdefault((r.batch_size, r.label, _variant(r, keys[r.label])), []).append(r)

    def order(kv: Any) -> tuple[Any, ...]:
        (batch, label, variant), rs = kv
        method = rs[0].method
        return batch, _method_order(method), rs[0].ablation, method, label, variant

    rows = []
    for (batch, label, variant), rs in sorted(groups.items(), key=order):
        rs = sorted(rs, key=lambda r: (r.seed, r.name))
        accs = [r.test_acc for r in rs]
        best = [r.best_test_acc for r in rs]
        finals = [r.final_batch for r in rs]
        robust: dict[str, list[float]] = {}
        for r in rs:
            for row in r.robust:
                robust.setdefault(_robust_key(row), []).append(float(row["acc"]))
        rows.append(
            {
                "batch": batch,
                "method": rs[0].method,
                "label": label,
                "ablation": rs[0].ablation,
                "variant": variant,
                "column": column_label(label, variant),
                "n_seeds": len(rs),
                "seeds": [r.seed for r in rs],
                "acc_mean": statistics.fmean(accs),
                "acc_std": _std(accs),
                "best_acc_mean": statistics.fmean(best),
                "best_acc_std": _std(best),
                "updates_mean": statistics.fmean(r.updates for r in rs),
                "final_batch": max(finals),
                "final_batch_min": min(finals),
                "epochs": max(r.epochs for r in rs),
                "test_loss_mean": statistics.fmean(r.test_loss for r in rs),
                "train_seconds_mean": statistics.fmean(r.train_seconds for r in rs),
                "hessian_seconds_mean": statistics.fmean(r.hessian_seconds for r in rs),
                "wall_seconds_mean": statistics.fmean(wall_seconds(r) for r in rs),
                "hessian_share_mean": _mean(hessian_share(r) for r in rs),
                "hvps_mean": _mean(_sum_metric(r, "hessian_hvps") for r in rs),
                "samples_processed_mean": _mean(samples_processed(r) for r in rs),
                **_trigger_means(rs),
                "robust": {k: statistics.fmean(v) for k, v in robust.items()},
                "robust_n": {k: len(v) for k, v in robust.items()},
                "runs": [r.name for r in rs],
                "_records": rs,
            }
        )
    target, _ = target_accuracy(rows)
    for row in rows:
        records = row.pop("_records")
        reached = [updates_to_reach(r, target) for r in records]
        hit = [u for u in reached if u is not None]
        secs = [s for s in (seconds_to_reach(r, target) for r in records) if s is not None]
        row["target_acc"] = target
        row["target_reached"] = len(hit)
        row["updates_to_target_mean"] = statistics.fmean(hit) if hit else None
        row["seconds_to_target_n"] = len(secs)
        row["seconds_to_target_mean"] = statistics.fmean(secs) if secs else None
    return rows


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, tuple[Any, ...]] = {}
    for r in rows:
        seen.setdefault(
            r["column"],
            (_method_order(r["method"]), r["ablation"], r["method"], r["label"], r["variant"]),
        )
    return sorted(seen, key=lambda c: seen[c])


def _num(x: float) -> str:
    return f"{x:.0f}" if abs(x - round(x)) < 1e-9 else f"{x:.1f}"


def _grows(row: dict[str, Any]) -> bool:
    return row["method"] in _VARYING or row["final_batch"] != row["batch"]


def cell(row: dict[str, Any], show_n: bool = False) -> str:
    """``91.00 ± 1.41 / 120`` (``98.50 (n=1) / 120`` for one seed), + ``→ 4096`` (final
    batch) for growing methods, + `` (n=3)`` when the table mixes seed counts."""
    n = row["n_seeds"]
    spread = f"± {row['acc_std']:.2f}" if n > 1 else "(n=1)"
    text = f"{row['acc_mean']:.2f} {spread} / {_num(row['updates_mean'])}"
    lo, hi = row["final_batch_min"], row["final_batch"]
    if _grows(row):
        text += f" → {hi}" if lo == hi else f" → {lo}–{hi}"
    if show_n and n > 1:
        text += f" (n={n})"
    return text


def _grid(rows: list[dict[str, Any]]) -> tuple[list[str], list[tuple[int, dict[str, str]]], bool]:
    cols = _columns(rows)
    show_n = len({r["n_seeds"] for r in rows}) > 1
    by_batch: dict[int, dict[str, str]] = {}
    for r in rows:
        by_batch.setdefault(r["batch"], {})[r["column"]] = cell(r, show_n)
    return cols, sorted(by_batch.items()), show_n


def caption(rows: list[dict[str, Any]]) -> str:
    ns = sorted({r["n_seeds"] for r in rows})
    if len(ns) == 1:
        seeds = f"{ns[0]} seed{'s' if ns[0] != 1 else ''}"
    else:
        seeds = "n seeds (n shown per cell; one seed: no std)"
    return (
        f"Final-epoch test accuracy (%), mean ± std over {seeds} / mean number of SGD updates; "
        "→ final batch size of growing methods. Rows: batch size B (fixed-batch methods: "
        "fixed at B; growing methods: from batch.size up to B), as in the paper's tables."
    )


def _esc(s: str) -> str:
    return s.replace("|", "\\|")


def _markdown_table(header: list[str], align: list[str], body: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(_esc(h) for h in header) + " |",
        "|" + "|".join(align) + "|",
        *("| " + " | ".join(_esc(c) for c in line) + " |" for line in body),
    ]


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """The paper-shaped table (rows: batch size B, columns: method) as Markdown."""
    if not rows:
        return "_no finished runs_\n"
    cols, grid, _ = _grid(rows)
    body = [[str(batch), *(cells.get(c, "–") for c in cols)] for batch, cells in grid]
    lines = _markdown_table(["batch", *cols], ["---:", *(":---" for _ in cols)], body)
    return "\n".join(lines) + "\n\n" + caption(rows) + "\n"


# --- the cost and robustness table ----------------------------------------------------------


def _si(x: float | None) -> str:
    if x is None:
        return "–"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return _num(x)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def cost_header() -> list[str]:
    return [
        "batch",
        "method",
        "n",
        "acc %",
        "updates",
        "to target",
        "time to target",
        "samples",
        "HVPs",
        "Hess/train",
        "wall s",
    ]


def cost_cells(row: dict[str, Any]) -> list[str]:
    """One line of the cost table."""
    reached, n = row["target_reached"], row["n_seeds"]
    if row["target_acc"] is None or not reached:
        to_target = "–" if row["target_acc"] is None else "not reached"
    else:
        to_target = _num(row["updates_to_target_mean"]) + (
            f" ({reached}/{n})" if reached < n else ""
        )
    timed = row.get("seconds_to_target_n", 0)
    if row.get("seconds_to_target_mean") is None:
        time_to = to_target if to_target in ("–", "not reached") else "–"
    else:
        time_to = f"{row['seconds_to_target_mean']:.1f}" + (f" ({timed}/{n})" if timed < n else "")
    return [
        str(row["batch"]),
        row["column"],
        str(n),
        f"{row['acc_mean']:.2f}",
        _num(row["updates_mean"]),
        to_target,
        time_to,
        _si(row["samples_processed_mean"]),
        _si(row["hvps_mean"]),
        _pct(row["hessian_share_mean"]),
        f"{row['wall_seconds_mean']:.1f}",
    ]


def robust_header(rows: list[dict[str, Any]]) -> list[str]:
    return ["batch", "method", *robust_columns(rows)]


def robust_cells(row: dict[str, Any], robust: list[str]) -> list[str]:
    return [
        str(row["batch"]),
        row["column"],
        *(f"{row['robust'][k]:.2f}" if k in row["robust"] else "–" for k in robust),
    ]


def cost_caption(rows: list[dict[str, Any]]) -> str:
    _, how = target_accuracy(rows)
    return (
        "Means over seeds. To target: SGD updates until the test accuracy first reached the "
        f"target ({how}; (k/n): only k of n seeds reached it, mean over those). Time to target: "
        "training wall seconds until then (train + Hessian probe, evaluation excluded). Samples: "
        "forward+backward passes, training samples plus adversarial ones times the attack's "
        "gradient steps (Hessian probes not included: see HVPs, Hessian-vector products). "
        "Hess/train: Hessian probe time / training time. Wall s: train + Hessian + eval."
    )


ROBUST_CAPTION = (
    "Test accuracy (%) of the final model, clean and under FGSM/PGD at eps in [0,1] pixels "
    "(adversarial.final_eval), mean over the seeds that computed it."
)


TRIGGERS_CAPTION = (
    "Mean growths per run by what triggered them: eigenvalue (lambda_max fell below the "
    "reference, confidence-gated or not), noise (the batch was below gns_ratio x B_simple, or "
    "the inner-product test failed), duration (no growth for schedule.duration epochs), "
    "schedule (a fixed ramp: GG, Seesaw). Vetoed: growths a trigger asked for and a rule "
    "refused (hybrid's noise veto, schedule.stop_rule), counted once per epoch."
)


def triggers_markdown(rows: list[dict[str, Any]]) -> str:
    """Growths by trigger for the rows that grew or were vetoed; empty when none did."""
    rows = [r for r in rows if r.get("growths_mean") or r.get("vetoed_mean")]
    if not rows:
        return ""
    header = ["batch", "method", "n", "growths", *TRIGGERS, "vetoed"]
    body = [
        [str(r["batch"]), r["column"], str(r["n_seeds"]), _num(r["growths_mean"])]
        + [_num(r.get(f"growths_{k}_mean", 0.0)) for k in TRIGGERS]
        + [_num(r["vetoed_mean"])]
        for r in rows
    ]
    align = ["---:", ":---", *("---:" for _ in header[2:])]
    table_md = "\n".join(_markdown_table(header, align, body))
    return "\n## Growth triggers\n\n" + table_md + "\n\n" + TRIGGERS_CAPTION + "\n"


def cost_markdown(rows: list[dict[str, Any]]) -> str:
    """The cost table, and the robust accuracy table when runs computed one, as Markdown."""
    if not rows:
        return ""
    header = cost_header()
    align = ["---:", ":---", *("---:" for _ in header[2:])]
    body = [cost_cells(r) for r in rows]
    out = "\n".join(_markdown_table(header, align, body)) + "\n\n" + cost_caption(rows) + "\n"
    robust = robust_columns(rows)
    if robust:
        body = [robust_cells(r, robust) for r in rows if r["robust"]]
        align = ["---:", ":---", *("---:" for _ in robust)]
        table_md = "\n".join(_markdown_table(robust_header(rows), align, body))
        out += "\n## Robust accuracy\n\n" + table_md + "\n\n" + ROBUST_CAPTION + "\n"
    return out


CSV_FIELDS = (
    "batch",
    "method",
    "label",
    "ablation",
    "variant",
    "n_seeds",
    "seeds",
    "acc_mean",
    "acc_std",
    "best_acc_mean",
    "best_acc_std",
    "updates_mean",
    "final_batch",
    "final_batch_min",
    "epochs",
    "test_loss_mean",
    "train_seconds_mean",
    "hessian_seconds_mean",
    "wall_seconds_mean",
    "hessian_share_mean",
    "hvps_mean",
    "samples_processed_mean",
    "target_acc",
    "target_reached",
    "updates_to_target_mean",
    "seconds_to_target_mean",
    "growths_mean",
    *(f"growths_{k}_mean" for k in TRIGGERS),
    "vetoed_mean",
    "runs",
)


def to_csv(rows: list[dict[str, Any]]) -> str:
    """One CSV line per group (full float precision; lists joined with ';'; empty for
    unknown), then one ``robust_<attack>_<eps>`` column per robust accuracy present."""
    robust = robust_columns(rows)
    names = {k: "robust_" + k.replace(" ", "_") for k in robust}
    buf = io.StringIO()
    writer = csv.DictWriter(
        buf, fieldnames=[*CSV_FIELDS, *names.values()], extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    for r in rows:
        line = {k: ";".join(map(str, v)) if isinstance(v, list) else v for k, v in r.items()}
        line.update({names[k]: v for k, v in r["robust"].items()})
        writer.writerow({k: "" if v is None else v for k, v in line.items()})
    return buf.getvalue()


def _table(
    title: str, header: list[str], lines: list[list[str]], left: tuple[int, ...] = ()
) -> Any:
    """A rich table whose cells never wrap (columns ``left`` left-aligned, others right), at
    least as wide as its title, which then stays on one line."""
    from rich.table import Table

    t = Table(title=title, min_width=len(title))
    for i, h in enumerate(header):
        t.add_column(h, justify="left" if i in left else "right", no_wrap=True)
    for line in lines:
        t.add_row(*line)
    return t


def _fits(console: Any, table: Any) -> bool:
    """Whether ``table`` fits the console unshrunk (measured without the console's width cap)."""
    if console is None:
        return True
    wide = console.options.update_width(10**6)
    return console.measure(table, options=wide).maximum <= console.width


def fit_tables(
    console: Any,
    title: str,
    header: list[str],
    lines: list[list[str]],
    keys: int = 1,
    left: tuple[int, ...] = (),
) -> list[Any]:
    """The table as one rich table if it fits the console's width, else as several: the
    first ``keys`` columns repeated in each, the others split into parts that fit (titled
    ``title (1/2)``, ...), so that no header or cell is wrapped or cut."""
    if not header:
        return [_table(title, header, lines, left)]

    def make(idx: list[int], name: str) -> Any:
        return _table(
            name,
            [header[i] for i in idx],
            [[line[i] for i in idx] for line in lines],
            tuple(j for j, i in enumerate(idx) if i in left),
        )

    whole = make(list(range(len(header))), title)
    if _fits(console, whole):
        return [whole]
    key_idx = list(range(min(keys, len(header))))
    parts: list[list[int]] = [[]]
    for i in range(len(key_idx), len(header)):
        trial = make(key_idx + parts[-1] + [i], title)
        if parts[-1] and not _fits(console, trial):
            parts.append([i])
        else:
            parts[-1].append(i)
    if len(parts) == 1:
        return [whole]
    return [make(key_idx + part, f"{title} ({k}/{len(parts)})") for k, part in enumerate(parts, 1)]


def rich_table(rows: list[dict[str, Any]], title: str = "sweep report") -> Any:
    """The paper-shaped table for the terminal (its caption is printed apart, as a paragraph:
    a table caption would wrap to the table's width)."""
    cols, grid, _ = _grid(rows) if rows else ([], [], False)
    lines = [[str(batch), *(cells.get(c, "–") for c in cols)] for batch, cells in grid]
    return _table(title, ["batch", *cols], lines)


TRANSPOSED_NOTE = (
    "Too wide for this terminal, so shown transposed: one row per method, one column per "
    "batch size B; each cell: accuracy on the first line, updates (→ final batch) below."
)


def rich_tables(
    rows: list[dict[str, Any]], title: str = "sweep report", console: Any = None
) -> tuple[list[Any], bool]:
    """(tables, transposed): the paper-shaped table when it fits the console's width, else
    the table transposed (rows: methods, columns: batch sizes, each cell on two lines),
    split into parts if even that is too wide."""
    table = rich_table(rows, title)
    if _fits(console, table) or not rows:
        return [table], False
    cols, grid, show_n = _grid(rows)
    by = {(r["column"], r["batch"]): r for r in rows}
    batches = [b for b, _ in grid]
    lines = []
    for c in cols:
        line = [c]
        for b in batches:
            row = by.get((c, b))
            line.append("–" if row is None else cell(row, show_n).replace(" / ", "\n", 1))
        lines.append(line)
    header = ["method", *(f"B = {b}" for b in batches)]
    return fit_tables(console, title, header, lines, keys=1, left=(0,)), True


def rich_cost_tables(rows: list[dict[str, Any]], name: str = "", console: Any = None) -> list[Any]:
    """The cost table and (when runs computed one) the robust accuracy table for rich, each
    split into parts (batch and method repeated) when ``console`` is too narrow for it."""
    return [t for part in _rich_cost_parts(rows, name, console) for t in part]


def _rich_cost_parts(
    rows: list[dict[str, Any]], name: str = "", console: Any = None
) -> list[list[Any]]:
    suffix = f": {name}" if name else ""
    body = [cost_cells(r) for r in rows]
    out = [fit_tables(console, f"cost{suffix}", cost_header(), body, keys=2, left=(1,))]
    robust = robust_columns(rows)
    if robust:
        lines = [robust_cells(r, robust) for r in rows if r["robust"]]
        title = f"robust accuracy %{suffix}"
        out.append(fit_tables(console, title, robust_header(rows), lines, keys=2, left=(1,)))
    return out


# --- figures ------------------------------------------------------------------------------

ZOOM_POINTS = 5.0  # accuracy_vs_batch.png: the zoomed panel shows cells within this of the best
ACC_WINDOW = 15.0  # accuracy_vs_updates/time.png: the y axis starts this far below the target
LOG2_TICKS = 8  # at most this many labelled powers of two on a batch-size axis


def _save(fig: Any, path: Path) -> Path:
    atomic_write_bytes(path, lambda fh: fig.savefig(fh, format="png", dpi=120))
    plt.close(fig)
    return path


def context_of(records: Iterable[RunRecord]) -> str:
    """``digits, small_cnn (width 16)``: datasets and models of the runs."""
    datasets, models = [], []
    for r in records:
        d = str(r.config.get("data", {}).get("name", "?"))
        m = r.config.get("model", {})
        model = f"{m.get('name', '?')} (width {m.get('width', '?')})"
        datasets += [d] if d not in datasets else []
        models += [model] if model not in models else []
    return f"{' / '.join(datasets)}, {' / '.join(models)}"


def _title(what: str, name: str, context: str) -> str:
    head = f"{what}: {name}" if name else what
    return f"{head}\n{context}" if context else head


def _color(i: int, n: int) -> Any:
    """The default cycle for up to 10 series; beyond, tab20 (no two of 20 share a colour)."""
    if n <= 10:
        return f"C{i % 10}"
    import matplotlib

    return matplotlib.colormaps["tab20"](i % 20)


def _styles(columns: list[str]) -> dict[str, dict[str, Any]]:
    return {
        c: {
            "color": _color(i, len(columns)),
            "marker": _MARKERS[i % len(_MARKERS)],
            "ls": _LINESTYLES[(i // 10) % len(_LINESTYLES)],
        }
        for i, c in enumerate(columns)
    }


def _plain(value: float, _pos: Any = None) -> str:
    return f"{value:g}"


def _log2_axis(axis: Any, values: Iterable[float]) -> None:
    """A log2 axis with plain tick labels at the powers of two spanned (32, 64, ...)."""
    vals = [v for v in values if v and v > 0]
    if not vals:
        return
    lo, hi = math.floor(math.log2(min(vals))), math.ceil(math.log2(max(vals)))
    step = 1 if hi - lo < LOG2_TICKS else math.ceil((hi - lo) / (LOG2_TICKS - 1))
    # counted down from the top, so the largest batch (say 16384) always has its label
    ticks = sorted(2.0**k for k in range(hi, lo - 1, -step))
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:.0f}" if v >= 1 else f"{v:g}"))
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())


def _log10_axis(axis: Any, values: Iterable[float] = ()) -> None:
    """A log axis labelled in plain numbers, 0.01, 0.02, 0.05, 0.1 ... (1, 2, 5 per decade
    over a short range, fewer over a long one; no 6x10^0 minor labels)."""
    vals = [v for v in values if v and v > 0]
    decades = math.log10(max(vals) / min(vals)) if vals else 1.0
    subs = (1.0, 2.0, 5.0) if decades <= 1.5 else (1.0, 3.0) if decades <= 2.5 else (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(_plain))
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())


def _batch_axis(ax: Any, batches: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches)
    ax.set_xticklabels([str(b) for b in batches])
    ax.minorticks_off()
    if len(batches) == 1:
        ax.set_xlim(batches[0] / 2, batches[0] * 2)


_BATCH_AXIS = "batch size B: fixed, or maximum of growing methods (log2 scale)"


def _accuracy_lines(ax: Any, rows: list[dict[str, Any]], cols: list[str], styles: Any) -> None:
    for i, c in enumerate(cols):
        rs = sorted((r for r in rows if r["column"] == c), key=lambda r: r["batch"])
        shift = 2 ** (0.05 * (i - (len(cols) - 1) / 2))  # keep error bars apart
        ax.errorbar(
            [r["batch"] * shift for r in rs],
            [r["acc_mean"] for r in rs],
            yerr=[r["acc_std"] for r in rs],
            capsize=3,
            ms=6,
            lw=1.6,
            label=c,
            **styles[c],
        )


def _reference(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The row the target comes from: the best BL group at BL's smallest batch."""
    bl = [r for r in rows if r["method"] == TARGET_METHOD and not r["ablation"]]
    if not bl:
        return None
    small = min(r["batch"] for r in bl)
    return max((r for r in bl if r["batch"] == small), key=lambda r: r["acc_mean"])


def _zoom_panel(ax: Any, rows: list[dict[str, Any]], cols: list[str], styles: Any) -> None:
    """The cells within ZOOM_POINTS of the best mean, one slot each, grouped by batch row B:
    mean ± std with its value written next to it; the cells below listed per group."""
    best = max(r["acc_mean"] for r in rows)
    floor = best - ZOOM_POINTS
    batches = sorted({r["batch"] for r in rows})
    x, ticks, labels, spans = 0.0, [], [], []
    shown = []
    for b in batches:
        group = sorted((r for r in rows if r["batch"] == b), key=lambda r: cols.index(r["column"]))
        top = [r for r in group if r["acc_mean"] >= floor]
        if not top:
            continue
        first = x
        for r in top:
            st = styles[r["column"]]
            ax.errorbar(
                [x], [r["acc_mean"]], yerr=[r["acc_std"]], capsize=4, ms=8, lw=1.8,
                color=st["color"], marker=st["marker"], ls="none",
            )  # fmt: skip
            ax.annotate(
                f"{r['acc_mean']:.2f}", (x, r["acc_mean"]), xytext=(7, 0),
                textcoords="offset points", va="center", fontsize=8,
            )  # fmt: skip
            ticks.append(x)
            labels.append(r["column"])
            shown.append(r)
            x += 1.0
        below = [r for r in group if r["acc_mean"] < floor]
        spans.append((first, x - 1.0, b, below))
        x += 0.8  # a gap between batch rows
    lo = min(r["acc_mean"] - r["acc_std"] for r in shown)
    hi = max(r["acc_mean"] + r["acc_std"] for r in shown)
    pad = max(0.2, 0.08 * (hi - lo))
    ax.set_ylim(lo - 3 * pad, hi + 2.4 * pad)  # room for the group labels and the legend
    ax.set_xlim(-0.7, x - 0.3)
    ax.set_xticks(ticks)
    ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
    ax.minorticks_off()
    hidden = []
    for first, last, b, below in spans:
        ax.text(
            (first + last) / 2, hi + 1.0 * pad, f"B = {b}", ha="center", va="bottom",
            fontsize=9, fontweight="bold",
        )  # fmt: skip
        if below:
            hidden.append(
                f"B = {b}: " + ", ".join(f"{r['column']} {r['acc_mean']:.1f}" for r in below)
            )
        if last < x - 1.8:
            ax.axvline(last + 0.9, color="0.7", lw=0.8)
    if hidden:  # under the tick labels
        note = "not in the zoom (see the left panel): " + "; ".join(hidden)
        ax.text(
            0.0, -0.36, "\n".join(textwrap.wrap(note, 112)), transform=ax.transAxes,
            fontsize=7, color="0.35", va="top",
        )  # fmt: skip
    ref = _reference(rows)
    if ref is not None:
        target = ref["acc_mean"] - TARGET_MARGIN
        ax.axhline(
            ref["acc_mean"], color="0.25", ls="--", lw=1,
            label=f"{ref['column']} at B = {ref['batch']}: {ref['acc_mean']:.2f}%",
        )  # fmt: skip
        ax.axhline(
            target, color="0.25", ls=":", lw=1,
            label=f"target {target:.2f}% ({TARGET_MARGIN:g} pt below it)",
        )  # fmt: skip
        ax.legend(loc="lower left", fontsize=8, framealpha=0.9)
    ax.grid(alpha=0.3, axis="y")
    ax.set_ylabel("final test accuracy (%), mean ± std")
    ax.set_title(
        f"zoom: the {len(shown)} cells within {ZOOM_POINTS:g} pt of the best mean, by batch row",
        fontsize=10,
    )


def plot_accuracy(
    rows: list[dict[str, Any]], path: Path, title: str = "", context: str = ""
) -> Path:
    """Final test accuracy vs batch size B, one line per method, std error bars; when some
    cells are far below the best, a second panel shows the cells within ZOOM_POINTS of the
    best mean side by side (one slot per cell, grouped by B, values written on)."""
    cols = _columns(rows)
    styles = _styles(cols)
    batches = sorted({r["batch"] for r in rows})
    best = max(r["acc_mean"] for r in rows)
    top = [r for r in rows if r["acc_mean"] >= best - ZOOM_POINTS]
    zoom = 1 < len(top) < len(rows)
    fig, axes = plt.subplots(
        1, 2 if zoom else 1, figsize=(14 if zoom else 7.5, 5.9 if zoom else 5), squeeze=False,
        gridspec_kw={"width_ratios": (1, 1.15)} if zoom else None,
    )  # fmt: skip
    ax = axes[0][0]
    _accuracy_lines(ax, rows, cols, styles)
    _batch_axis(ax, batches)
    ax.set_xlabel(_BATCH_AXIS)
    ax.grid(alpha=0.3)
    ax.set_ylabel("final test accuracy (%), mean ± std over seeds")
    if zoom:
        ax.set_title("all methods", fontsize=10)
        _zoom_panel(axes[0][1], rows, cols, styles)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(cols), 6), fontsize=9)
    fig.suptitle(_title("Test accuracy vs batch size", title, context), fontsize=11)
    legend_in = 0.3 + 0.22 * math.ceil(len(cols) / 6)  # the legend's height, inches
    height = fig.get_figheight()
    if zoom:  # fixed margins: tight_layout would also make room for the zoom's footnote
        fig.subplots_adjust(
            left=0.05, right=0.99, top=1 - 0.85 / height, bottom=(legend_in + 1.55) / height,
            wspace=0.16,
        )  # fmt: skip
    else:
        fig.tight_layout(rect=(0, legend_in / height, 1, 1))
    return _save(fig, path)


def plot_updates(
    rows: list[dict[str, Any]], path: Path, title: str = "", context: str = ""
) -> Path:
    """Mean number of SGD updates vs batch size B (log-log). Methods are dodged sideways
    (by a few % of B, hollow markers) so that equal counts, e.g. FB's and BL's at one B,
    both show."""
    cols = _columns(rows)
    styles = _styles(cols)
    batches = sorted({r["batch"] for r in rows})
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for k, c in enumerate(cols):
        rs = sorted((r for r in rows if r["column"] == c), key=lambda r: r["batch"])
        dodge = 2 ** (0.045 * (k - (len(cols) - 1) / 2))
        ax.plot(
            [r["batch"] * dodge for r in rs],
            [max(r["updates_mean"], 1e-9) for r in rs],
            ms=6,
            lw=1.4,
            mfc="none",
            mew=1.4,
            label=c,
            **styles[c],
        )
    _batch_axis(ax, batches)
    ax.set_yscale("log")
    _log10_axis(ax.yaxis, [r["updates_mean"] for r in rows])
    ax.set_xlabel(_BATCH_AXIS)
    ax.set_ylabel("SGD updates, mean over seeds (log scale)")
    ax.set_title(_title("SGD updates vs batch size", title, context), fontsize=11)
    ax.grid(alpha=0.3, which="both")
    ax.legend(title="method", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _run_columns(records: list[RunRecord]) -> tuple[dict[str, str], list[str]]:
    """Each run's column (method label + variant) and the columns in table order."""
    keys = _variant_keys(records)
    col_of = {r.name: column_label(r.label, _variant(r, keys[r.label])) for r in records}
    order: dict[str, tuple[Any, ...]] = {}
    for r in records:
        order.setdefault(col_of[r.name], (_method_order(r.method), r.ablation, r.method, r.label))
    return col_of, sorted(order, key=lambda c: (order[c], c))


def _geomean(xs: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(x) for x in xs))


def _per_epoch(runs: list[list[tuple[float, float]]]) -> list[tuple[float, float]]:
    """At each position the runs share: the mean x (epochs) and the geometric mean of y."""
    n = min(len(r) for r in runs)
    return [
        (statistics.fmean(r[i][0] for r in runs), _geomean([r[i][1] for r in runs]))
        for i in range(n)
    ]


_DASHES = ("-", (0, (4, 1.5)), (0, (2, 1.2)), (0, (6, 2, 1.5, 2)))


def plot_trajectories(
    records: list[RunRecord], path: Path, title: str = "", context: str = ""
) -> Path:
    """Batch size, learning rate and lambda_max per epoch as small multiples: one row per
    method (table column), one colour per batch row B; seeds thin, their geometric mean bold."""
    col_of, cols = _run_columns(records)
    batches = sorted({r.batch_size for r in records})
    bcolor = {b: f"C{i % 10}" for i, b in enumerate(batches)}
    # where two batch rows coincide (a growing method below its cap), the smaller B is drawn
    # wider underneath and the larger dashed on top, so both stay visible
    bwidth = {b: 1.6 + 1.5 * (len(batches) - 1 - i) for i, b in enumerate(batches)}
    bdash = {b: _DASHES[i % len(_DASHES)] for i, b in enumerate(batches)}
    fig, axes = plt.subplots(
        len(cols), 3, figsize=(12, 1.2 + 2.3 * len(cols)), sharex=True, sharey="col", squeeze=False
    )
    all_batch: list[float] = []
    all_values: dict[str, list[float]] = {"lr": [], "lam": []}
    any_lambda = False
    for i, c in enumerate(cols):
        row_axes = axes[i]
        row_lambda = False
        for b in batches:
            group = [r for r in records if col_of[r.name] == c and r.batch_size == b]
            curves: dict[str, list[list[tuple[float, float]]]] = {
                "batch_size": [],
                "lr": [],
                "lam": [],
            }
            for r in group:
                ms = sorted(
                    (m for m in r.metrics if m.get("epoch") is not None), key=lambda m: m["epoch"]
                )
                ms = [m for m in ms if m.get("batch_size") and m.get("lr")]
                if not ms:
                    continue
                # epoch e trains on [e, e+1); lambda_max is measured at its end, e+1
                ep = [m["epoch"] for m in ms] + [ms[-1]["epoch"] + 1]
                for key in ("batch_size", "lr"):
                    ys = [float(m[key]) for m in ms]
                    curves[key].append(list(zip(ep, [*ys, ys[-1]], strict=True)))
                lam = [
                    (m["epoch"] + 1.0, float(m["lambda_max"]))
                    for m in ms
                    if (m.get("lambda_max") or 0) > 0
                ]
                if lam:
                    curves["lam"].append(lam)
                all_batch += [float(m["batch_size"]) for m in ms]
                all_values["lr"] += [float(m["lr"]) for m in ms]
                all_values["lam"] += [v for _e, v in lam]
            for ax, key in zip(row_axes, ("batch_size", "lr", "lam"), strict=True):
                runs = curves[key]
                if not runs:
                    continue
                step = {"drawstyle": "steps-post"} if key != "lam" else {"marker": ".", "ms": 4}
                bold = {"color": bcolor[b], "lw": bwidth[b], "ls": bdash[b], **step}
                if len(runs) > 1:
                    for run in runs:
                        ax.plot(*zip(*run, strict=True), color=bcolor[b], lw=0.7, alpha=0.4, **step)
                ax.plot(*zip(*_per_epoch(runs), strict=True), **bold)
                if key == "lam":
                    row_lambda = any_lambda = True
        if not row_lambda:
            row_axes[2].text(
                0.5, 0.5, "no Hessian probes", ha="center", va="center",
                transform=row_axes[2].transAxes, color="0.45",
            )  # fmt: skip
        row_axes[1].set_title(c, fontweight="bold", fontsize=10)
        row_axes[0].set_ylabel("batch size")
        row_axes[1].set_ylabel("learning rate")
        row_axes[2].set_ylabel("λ_max")
        for ax in row_axes:
            ax.grid(alpha=0.3, which="major")
    axes[0][0].set_yscale("log", base=2)
    _log2_axis(axes[0][0].yaxis, all_batch)
    axes[0][1].set_yscale("log")
    _log10_axis(axes[0][1].yaxis, all_values["lr"])
    if any_lambda:
        axes[0][2].set_yscale("log")
        _log10_axis(axes[0][2].yaxis, all_values["lam"])
    for ax in axes[-1]:
        ax.set_xlabel("epochs completed")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles = [
        Line2D([], [], color=bcolor[b], lw=bwidth[b], ls=bdash[b], label=f"B = {b}")
        for b in batches
    ]
    handles += [
        Line2D([], [], color="0.3", lw=0.7, alpha=0.6, label="one seed"),
        Line2D([], [], color="0.3", lw=2.2, label="geometric mean over seeds (or the one seed)"),
    ]
    height = fig.get_figheight()
    fig.suptitle(
        _title("Per-method schedules (all axes log scale but epochs)", title, context),
        fontsize=11,
        y=1 - 0.1 / height,
        va="top",
    )
    fig.legend(
        handles=handles, loc="upper center", ncol=len(handles), fontsize=8,
        bbox_to_anchor=(0.5, 1 - 0.62 / height), frameon=False,
    )  # fmt: skip
    fig.subplots_adjust(
        left=0.07, right=0.99, top=1 - 1.3 / height, bottom=0.6 / height, hspace=0.32, wspace=0.28
    )
    return _save(fig, path)


def _epochwise(runs: list[list[tuple[float, float]]]) -> list[tuple[float, list[float]]]:
    """At each epoch the runs share: (mean x over the runs, the runs' y values)."""
    n = min(len(run) for run in runs)
    return [
        (statistics.fmean(run[i][0] for run in runs), [run[i][1] for run in runs]) for i in range(n)
    ]


def _cumulative_seconds(ms: list[dict[str, Any]]) -> list[float]:
    out, total = [], 0.0
    for m in ms:
        sec = m.get("seconds")
        if sec is None:
            sec = sum(m.get(k) or 0.0 for k in ("train_seconds", "hessian_seconds", "eval_seconds"))
        total += float(sec)
        out.append(total)
    return out


def plot_accuracy_vs(
    records: list[RunRecord],
    rows: list[dict[str, Any]],
    path: Path,
    x: str = "updates",
    title: str = "",
    context: str = "",
) -> Path:
    """Test accuracy per epoch against SGD updates (``x="updates"``) or wall time
    (``x="seconds"``): one panel per batch row B, one colour per method; the mean over seeds
    epoch by epoch, with a band from the lowest to the highest seed; the target dashed."""
    col_of, cols = _run_columns(records)
    styles = _styles(cols)
    batches = sorted({r.batch_size for r in records})
    target, _how = target_accuracy(rows)
    fig, axes = plt.subplots(
        1, len(batches), figsize=(1 + 4.6 * len(batches), 4.8), sharey=True, squeeze=False
    )
    seen: dict[str, Any] = {}
    seen_max: dict[tuple[int, str], list[float]] = {}

    def curves(c: str, b: int) -> list[list[tuple[float, float]]]:
        runs = []
        for r in records:
            if col_of[r.name] != c or r.batch_size != b:
                continue
            ms = sorted(
                (m for m in r.metrics if m.get("epoch") is not None), key=lambda m: m["epoch"]
            )
            ms = [m for m in ms if m.get("test_acc") is not None]
            if x == "updates":
                ms = [m for m in ms if m.get("updates")]
                xs = [float(m["updates"]) for m in ms]
            else:
                xs = _cumulative_seconds(ms)
            pts = [(t, float(m["test_acc"])) for t, m in zip(xs, ms, strict=True) if t > 0]
            if pts:  # (runs that logged no times have none to plot against)
                runs.append(pts)
        return runs

    def mean_of(runs: list[list[tuple[float, float]]]) -> list[tuple[float, float]]:
        return [(x, statistics.fmean(ys)) for x, ys in _epochwise(runs)]

    ref = _reference(rows)
    ref_runs = curves(ref["column"], ref["batch"]) if ref is not None else []
    ref_handle = None
    for ax, b in zip(axes[0], batches, strict=True):
        if ref_runs and b != ref["batch"]:  # the baseline's curve, for comparison
            (ref_handle,) = ax.plot(
                *zip(*mean_of(ref_runs), strict=True), color="0.55", lw=3, alpha=0.35,
                label=f"{ref['column']} at B = {ref['batch']} (reference)", zorder=1,
            )  # fmt: skip
        for c in cols:
            runs = curves(c, b)
            if not runs:
                continue
            st = styles[c]
            if len(runs) > 1:  # min-max over seeds, epoch by epoch
                xs, lo, hi = zip(
                    *((x, min(ys), max(ys)) for x, ys in _epochwise(runs)), strict=True
                )
                ax.fill_between(xs, lo, hi, color=st["color"], alpha=0.18, lw=0)
            (line,) = ax.plot(*zip(*mean_of(runs), strict=True), lw=1.8, ms=3, label=c, **st)
            seen_max[(id(ax), c)] = [y for run in runs for _x, y in run]
            seen.setdefault(c, line)
        if target is not None:
            ax.axhline(target, color="0.25", ls="--", lw=1)
        if ax.lines:
            ax.set_xscale("log")
            _log10_axis(ax.xaxis, [v for ln in ax.lines for v in ln.get_xdata()])
        else:
            ax.text(0.5, 0.5, "nothing logged", ha="center", transform=ax.transAxes, color="0.45")
        ax.set_title(f"B = {b}", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.set_xlabel(
            "SGD updates (log scale)"
            if x == "updates"
            else "wall time, s (train + Hessian + eval; log)"
        )
    if target is not None:  # the region where the target is reached, readable
        top = max((v for ax in axes[0] for ln in ax.lines for v in ln.get_ydata()), default=100)
        axes[0][0].set_ylim(target - ACC_WINDOW, min(100.5, top + 0.1 * ACC_WINDOW))
        for ax in axes[0]:
            below = [ln.get_label() for ln in ax.lines if ln.get_label() in seen]
            below = [c for c in below if max(seen_max[(id(ax), c)]) < target - ACC_WINDOW]
            if below:
                ax.text(
                    0.02, 0.02, "below the axis: " + ", ".join(below), transform=ax.transAxes,
                    fontsize=8, color="0.35",
                )  # fmt: skip
        axes[0][0].set_ylabel(
            f"test accuracy (%) after each epoch\n(from target - {ACC_WINDOW:g} pt)"
        )
    else:
        axes[0][0].set_ylabel("test accuracy (%) after each epoch")
    handles = [seen[c] for c in cols if c in seen]
    if ref_handle is not None:
        handles.append(ref_handle)
    if target is not None:
        handles.append(Line2D([], [], color="0.25", ls="--", lw=1, label=f"target {target:.2f}%"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=8)
    what = "Test accuracy vs SGD updates" if x == "updates" else "Test accuracy vs wall time"
    fig.suptitle(_title(f"{what} (mean over seeds, band: min-max)", title, context), fontsize=11)
    fig.tight_layout(rect=(0, 0.05 + 0.05 * math.ceil(len(handles) / 8), 1, 1))
    return _save(fig, path)


def plot_spectra(
    results: dict[str, list[float]], path: str | Path, title: str = "Top Hessian eigenvalues"
) -> Path:
    """Top-k Hessian eigenvalues of several models side by side (grouped bars, log y axis).

    ``results`` maps a label (e.g. ``"B=4096, adversarial"``) to its eigenvalues.
    Non-positive eigenvalues switch the y axis to symlog.
    """
    path = Path(path)
    labels = list(results)
    k = max((len(v) for v in results.values()), default=0)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.0 + 0.9 * k), 4.5))
    width = 0.8 / max(len(labels), 1)
    hatches = ("", "//", "..", "xx", "\\\\", "++", "oo", "--")
    values = [float(v) for vs in results.values() for v in vs]
    for i, label in enumerate(labels):
        eig = sorted((float(v) for v in results[label]), reverse=True)
        xs = [j + 1 + (i - (len(labels) - 1) / 2) * width for j in range(len(eig))]
        ax.bar(
            xs,
            eig,
            width=width,
            label=label,
            color=f"C{i % 10}",
            hatch=hatches[i % len(hatches)],
            edgecolor="black",
            lw=0.5,
        )
    scale = "log scale"
    if values and min(values) > 0:
        ax.set_yscale("log")
    elif values:
        scale = "symlog scale"
        nonzero = [abs(v) for v in values if v != 0]
        ax.set_yscale("symlog", linthresh=min(nonzero) if nonzero else 1.0)
        ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(1, k + 1))
    ax.set_xticklabels([f"λ{j}" for j in range(1, k + 1)])
    ax.set_xlabel("eigenvalue rank")
    ax.set_ylabel(f"Hessian eigenvalue ({scale})")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y", which="both")
    if labels:
        ax.legend(fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


# --- the report ---------------------------------------------------------------------------


def _sweep_name(sweep_dir: Path) -> str:
    """The ``name`` in the sweep's resolved sweep.yaml, else the folder's name."""
    try:
        name = read_yaml(sweep_dir / "sweep.yaml").get("name")
    except ConfigError:
        name = None
    return str(name) if name else sweep_dir.resolve().name


@dataclass
class ReportResult:
    markdown: str
    csv_path: Path
    md_path: Path
    plots: list[Path]
    rows: list[dict[str, Any]] = field(default_factory=list)
    n_runs: int = 0
    unfinished: list[str] = field(default_factory=list)


def make_report(
    sweep_dir: str | Path | Sequence[str | Path],
    out_dir: str | Path | None = None,
    console: Any = None,
    warn: Callable[[str], None] | None = None,
) -> ReportResult:
    """Write report.md, report.csv and the PNGs into ``out_dir`` (default sweep_dir/report;
    with several sweeps, one report over all their runs, default in the first one's folder).

    Prints the tables with rich when ``console`` (a rich Console) is given; ``warn`` gets one
    line per unreadable run that was skipped. Nothing is written when no run is readable.
    """
    dirs = [Path(sweep_dir)] if isinstance(sweep_dir, str | Path) else [Path(d) for d in sweep_dir]
    if not dirs:
        raise ReportError("no sweep folder given")
    sweep_dir = dirs[0]
    records = collect_many(dirs)
    if not records:
        raise ReportError(_nothing_to_report(sweep_dir, records))
    for why in records.unreadable.values() if warn is not None else ():
        warn(f"{why}; run skipped")
    out = Path(out_dir) if out_dir is not None else sweep_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows = table(records)
    name = " + ".join(_sweep_name(d) for d in dirs)
    context = context_of(records)
    notes = [f"{len(records)} finished runs from {', '.join(f'`{d}`' for d in dirs)}."]
    if records.unfinished:
        notes.append(
            f"{len(records.unfinished)} unfinished runs ignored: {', '.join(records.unfinished)}."
        )
    if records.unreadable:
        bad = "; ".join(records.unreadable.values())
        notes.append(f"{len(records.unreadable)} unreadable runs ignored ({bad}).")
    recs = list(records)
    plots = [
        plot_accuracy(rows, out / "accuracy_vs_batch.png", name, context),
        plot_updates(rows, out / "updates_vs_batch.png", name, context),
    ]
    if any(r.metrics for r in recs):
        plots.append(plot_trajectories(recs, out / "trajectories.png", name, context))
    if any(m.get("test_acc") is not None and m.get("updates") for r in recs for m in r.metrics):
        plots.append(
            plot_accuracy_vs(recs, rows, out / "accuracy_vs_updates.png", "updates", name, context)
        )
        plots.append(
            plot_accuracy_vs(recs, rows, out / "accuracy_vs_time.png", "seconds", name, context)
        )
    figures = (
        "Figures: " + ", ".join(f"[{p.stem.replace('_', ' ')}]({p.name})" for p in plots) + "."
    )
    markdown = (
        f"# Sweep report: {name}\n\n{context}.\n\n"
        + to_markdown(rows)
        + "\n## Cost\n\n"
        + cost_markdown(rows)
        + triggers_markdown(rows)
        + "\n"
        + " ".join(notes)
        + "\n\n"
        + figures
        + "\n"
    )
    md_path, csv_path = out / "report.md", out / "report.csv"
    atomic_write_text(md_path, markdown)
    atomic_write_text(csv_path, to_csv(rows))
    if console is not None:
        main, transposed = rich_tables(rows, f"sweep report: {name} ({context})", console)
        for t in main:
            console.print(t)
        console.print(caption(rows), highlight=False)
        if transposed:
            console.print(TRANSPOSED_NOTE, highlight=False)
        parts = _rich_cost_parts(rows, name, console)  # cost [, robust accuracy]
        captions = (cost_caption(rows), ROBUST_CAPTION)[: len(parts)]
        for tables, text in zip(parts, captions, strict=True):
            console.print()
            for t in tables:
                console.print(t)
            console.print(text, highlight=False)
        for note in notes:
            console.print(note, highlight=False)
    return ReportResult(
        markdown, csv_path, md_path, plots, rows, len(records), list(records.unfinished)
    )
