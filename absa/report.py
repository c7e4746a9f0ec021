"""Tables and figures of a finished (or partly finished) sweep.

``collect`` reads every run folder under ``<sweep_dir>/runs/`` (or under ``sweep_dir``
itself when it has no ``runs/``): config.yaml, summary.json and metrics.jsonl. Runs without
a summary.json are unfinished: ignored, but counted. Runs whose files are malformed (say a
summary.json that is not a JSON object) are unreadable: skipped with a one-line reason that
names the file.

``table`` groups the runs the way the paper's tables are laid out: one row per batch size B
(the fixed batch of BL and FB, the maximum batch of GG, ABS and ABSA, which start from
``batch.size`` and grow towards it), one column per method, each cell the final-epoch test accuracy as mean ± std
over seeds (sample std, n-1; 0 for a single seed) and the mean number of SGD updates, plus
the final batch size for adaptive methods. When runs of the same method and batch size
differ in some other config key (say ``adversarial.eps``), that key becomes part of the
column (``ABSA (eps=0.01)``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from absa.checkpoint import atomic_write_bytes, atomic_write_text  # noqa: E402
from absa.config import METHODS, ConfigError, read_yaml  # noqa: E402
from absa.runlog import METRICS  # noqa: E402

ADAPTIVE = ("gg", "abs", "absa")
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
}
_IGNORED_SECTIONS = ("distributed.",)
_SHORT = {"adversarial.eps": "eps", "adversarial.fraction": "r", "batch.size": "B"}
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
_LINESTYLES = ("-", "--", ":", "-.")


class ReportError(ValueError):
    """Nothing to report; one line for the user."""


@dataclass
class RunRecord:
    name: str
    folder: Path
    method: str
    batch_size: int  # the paper's row: batch.size (BL, FB) or schedule.max_batch (GG, ABS, ABSA)
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
    root = sweep_dir / "runs" if (sweep_dir / "runs").is_dir() else sweep_dir
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / "config.yaml").is_file())


def _row_batch(cfg: dict[str, Any]) -> int:
    """Row of the paper's table: the fixed batch of BL/FB, the maximum batch of GG/ABS/ABSA
    (which start from batch.size and grow towards it)."""
    method = str(cfg.get("schedule", {}).get("method", "bl"))
    start = int(cfg.get("batch", {}).get("size", 128))
    if method in ADAPTIVE:
        return int(cfg.get("schedule", {}).get("max_batch") or start)
    return start


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
_METRIC_NUMBERS = ("epoch", "batch_size", "lr", "lambda_max", "test_acc", "test_loss")


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
        method = str(cfg.get("schedule", {}).get("method", "bl"))
        batch_size = _row_batch(cfg)
        seed = int(cfg.get("train", {}).get("seed", 0))
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


# --- the table ----------------------------------------------------------------------------


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v, sort_keys=True, default=str)
    return out


def _variant_keys(records: list[RunRecord]) -> dict[str, list[str]]:
    """Per method: config keys that differ between runs of one (batch size, method) group."""
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r.batch_size, r.method), []).append(_flat(r.config))
    keys: dict[str, list[str]] = {r.method: [] for r in records}
    for (_batch, method), flats in groups.items():
        for k in sorted(set().union(*flats)):
            if k in _IGNORED or k.startswith(_IGNORED_SECTIONS) or k in keys[method]:
                continue
            if len({f.get(k) for f in flats}) > 1:
                keys[method].append(k)
    return keys


def _variant(record: RunRecord, keys: list[str]) -> str:
    flat = _flat(record.config)
    parts = []
    for k in keys:
        v = json.loads(flat[k]) if k in flat else None
        parts.append(f"{_SHORT.get(k, k.split('.')[-1])}={'none' if v is None else v}")
    return ", ".join(parts)


def _method_order(method: str) -> int:
    return METHODS.index(method) if method in METHODS else len(METHODS)


def column_label(method: str, variant: str = "") -> str:
    return method.upper() + (f" ({variant})" if variant else "")


def _std(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def table(records: Iterable[RunRecord]) -> list[dict[str, Any]]:
    """One row per (row batch, method[, variant]) group, sorted by batch then method."""
    records = list(records)
    keys = _variant_keys(records)
    groups: dict[tuple[int, str, str], list[RunRecord]] = {}
    for r in records:
        groups.setdefault((r.batch_size, r.method, _variant(r, keys[r.method])), []).append(r)
    rows = []
    for (batch, method, variant), rs in sorted(
        groups.items(), key=lambda kv: (kv[0][0], _method_order(kv[0][1]), kv[0][1], kv[0][2])
    ):
        rs = sorted(rs, key=lambda r: (r.seed, r.name))
        accs = [r.test_acc for r in rs]
        best = [r.best_test_acc for r in rs]
        finals = [r.final_batch for r in rs]
        rows.append(
            {
                "batch": batch,
                "method": method,
                "variant": variant,
                "column": column_label(method, variant),
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
                "runs": [r.name for r in rs],
            }
        )
    return rows


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, tuple[int, str, str]] = {}
    for r in rows:
        seen.setdefault(r["column"], (_method_order(r["method"]), r["method"], r["variant"]))
    return sorted(seen, key=lambda c: seen[c])


def _num(x: float) -> str:
    return f"{x:.0f}" if abs(x - round(x)) < 1e-9 else f"{x:.1f}"


def cell(row: dict[str, Any], show_n: bool = False) -> str:
    """``91.00 ± 1.41 / 120`` (+ ``→ 4096`` final batch for adaptive methods)."""
    text = f"{row['acc_mean']:.2f} ± {row['acc_std']:.2f} / {_num(row['updates_mean'])}"
    lo, hi = row["final_batch_min"], row["final_batch"]
    if row["method"] in ADAPTIVE or hi != row["batch"]:
        text += f" → {hi}" if lo == hi else f" → {lo}–{hi}"
    if show_n:
        text += f" (n={row['n_seeds']})"
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
    seeds = (
        f"{ns[0]} seed{'s' if ns[0] != 1 else ''}" if len(ns) == 1 else "n seeds, shown per cell"
    )
    return (
        f"Final-epoch test accuracy (%), mean ± std over {seeds} / mean number of SGD updates; "
        "→ final batch size of adaptive methods. Rows: batch size B (BL, FB: fixed at B; "
        "GG, ABS, ABSA: growing from batch.size up to B), as in the paper's tables."
    )


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """The paper-shaped table (rows: batch size B, columns: method) as Markdown."""
    if not rows:
        return "_no finished runs_\n"
    cols, grid, _ = _grid(rows)

    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    lines = [
        "| batch | " + " | ".join(esc(c) for c in cols) + " |",
        "|---:|" + "|".join(":---" for _ in cols) + "|",
    ]
    for batch, cells in grid:
        lines.append(f"| {batch} | " + " | ".join(esc(cells.get(c, "–")) for c in cols) + " |")
    return "\n".join(lines) + "\n\n" + caption(rows) + "\n"


CSV_FIELDS = (
    "batch",
    "method",
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
    "runs",
)


def to_csv(rows: list[dict[str, Any]]) -> str:
    """One CSV line per group (full float precision; lists joined with ';')."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow(
            {k: ";".join(map(str, v)) if isinstance(v, list) else v for k, v in r.items()}
        )
    return buf.getvalue()


def rich_table(rows: list[dict[str, Any]], title: str = "sweep report") -> Any:
    from rich.table import Table

    t = Table(title=title, caption=caption(rows) if rows else None)
    t.add_column("batch", justify="right")
    cols, grid, _ = _grid(rows) if rows else ([], [], False)
    for c in cols:
        t.add_column(c, justify="right")
    for batch, cells in grid:
        t.add_row(str(batch), *(cells.get(c, "–") for c in cols))
    return t


# --- figures ------------------------------------------------------------------------------


def _save(fig: Any, path: Path) -> Path:
    atomic_write_bytes(path, lambda fh: fig.savefig(fh, format="png", dpi=120))
    plt.close(fig)
    return path


def _styles(columns: list[str]) -> dict[str, dict[str, Any]]:
    return {
        c: {
            "color": f"C{i % 10}",
            "marker": _MARKERS[i % len(_MARKERS)],
            "ls": _LINESTYLES[(i // 10) % len(_LINESTYLES)],
        }
        for i, c in enumerate(columns)
    }


def _batch_axis(ax: Any, batches: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches)
    ax.set_xticklabels([str(b) for b in batches])
    ax.minorticks_off()
    if len(batches) == 1:
        ax.set_xlim(batches[0] / 2, batches[0] * 2)


def plot_accuracy(rows: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Final test accuracy vs batch size B, one line per method, std error bars."""
    cols = _columns(rows)
    styles = _styles(cols)
    batches = sorted({r["batch"] for r in rows})
    fig, ax = plt.subplots(figsize=(7, 4.5))
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
    _batch_axis(ax, batches)
    ax.set_xlabel("batch size B: fixed (BL, FB) or maximum (GG, ABS, ABSA), log2 scale")
    ax.set_ylabel("final test accuracy (%)")
    ax.set_title(f"Test accuracy vs batch size{f' ({title})' if title else ''}")
    ax.grid(alpha=0.3)
    ax.legend(title="method (error bars: std over seeds)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_updates(rows: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Mean number of SGD updates vs batch size B (log-log)."""
    cols = _columns(rows)
    styles = _styles(cols)
    batches = sorted({r["batch"] for r in rows})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c in cols:
        rs = sorted((r for r in rows if r["column"] == c), key=lambda r: r["batch"])
        ax.plot(
            [r["batch"] for r in rs],
            [max(r["updates_mean"], 1e-9) for r in rs],
            ms=6,
            lw=1.6,
            label=c,
            **styles[c],
        )
    _batch_axis(ax, batches)
    ax.set_yscale("log")
    ax.set_xlabel("batch size B: fixed (BL, FB) or maximum (GG, ABS, ABSA), log2 scale")
    ax.set_ylabel("SGD updates, mean over seeds (log scale)")
    ax.set_title(f"Number of SGD updates vs batch size{f' ({title})' if title else ''}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(title="method", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_trajectories(records: list[RunRecord], path: Path, title: str = "") -> Path:
    """Batch size, learning rate and lambda_max per epoch: one line per run."""
    keys = _variant_keys(records)
    labels = {r.name: column_label(r.method, _variant(r, keys[r.method])) for r in records}
    cols = sorted(
        set(labels.values()),
        key=lambda c: next((_method_order(r.method), c) for r in records if labels[r.name] == c),
    )
    colors = {c: f"C{i % 10}" for i, c in enumerate(cols)}
    batches = sorted({r.batch_size for r in records})
    ls = {b: _LINESTYLES[i % len(_LINESTYLES)] for i, b in enumerate(batches)}
    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    any_lambda = False
    for r in records:
        ms = [m for m in r.metrics if m.get("epoch") is not None]
        if not ms:
            continue
        # epoch e trains on [e, e+1) of the x axis; lambda_max is measured at its end, e+1
        ep = [m["epoch"] for m in ms] + [ms[-1]["epoch"] + 1]
        style = {"color": colors[labels[r.name]], "ls": ls[r.batch_size], "lw": 1.4, "alpha": 0.85}
        for ax, key in ((axes[0], "batch_size"), (axes[1], "lr")):
            ys = [m.get(key) for m in ms]
            ax.plot(ep, [*ys, ys[-1]], drawstyle="steps-post", **style)
        ends = [m["epoch"] + 1 for m in ms]
        lam = [(e, m["lambda_max"]) for e, m in zip(ends, ms, strict=True) if m.get("lambda_max")]
        lam = [(e, v) for e, v in lam if v > 0]
        if lam:
            any_lambda = True
            axes[2].plot(*zip(*lam, strict=True), marker=".", ms=5, **style)
    axes[0].set_yscale("log", base=2)
    axes[0].set_ylabel("batch size (log2)")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("learning rate at epoch start (log)")
    axes[2].set_ylabel("top Hessian eigenvalue\nlambda_max (log)")
    if any_lambda:
        axes[2].set_yscale("log")
    else:
        axes[2].text(
            0.5,
            0.5,
            "no Hessian probes recorded",
            ha="center",
            va="center",
            transform=axes[2].transAxes,
            color="0.4",
        )
    axes[2].set_xlabel("epochs completed")
    axes[2].xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    handles = [Line2D([], [], color=colors[c], lw=2, label=c) for c in cols]
    if len(batches) > 1:
        handles += [Line2D([], [], color="0.3", ls=ls[b], label=f"B = {b}") for b in batches]
    axes[0].legend(handles=handles, fontsize=8, ncol=2, loc="best")
    axes[0].set_title(f"Per-run schedules{f' ({title})' if title else ''}")
    fig.tight_layout()
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
    sweep_dir: str | Path,
    out_dir: str | Path | None = None,
    console: Any = None,
    warn: Callable[[str], None] | None = None,
) -> ReportResult:
    """Write report.md, report.csv and the PNGs into ``out_dir`` (default sweep_dir/report).

    Prints the table with rich when ``console`` (a rich Console) is given; ``warn`` gets one
    line per unreadable run that was skipped. Nothing is written when no run is readable.
    """
    sweep_dir = Path(sweep_dir)
    records = collect(sweep_dir)
    if not records:
        raise ReportError(_nothing_to_report(sweep_dir, records))
    for why in records.unreadable.values() if warn is not None else ():
        warn(f"{why}; run skipped")
    out = Path(out_dir) if out_dir is not None else sweep_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows = table(records)
    name = _sweep_name(sweep_dir)
    notes = [f"{len(records)} finished runs from `{sweep_dir}`."]
    if records.unfinished:
        notes.append(
            f"{len(records.unfinished)} unfinished runs ignored: {', '.join(records.unfinished)}."
        )
    if records.unreadable:
        bad = "; ".join(records.unreadable.values())
        notes.append(f"{len(records.unreadable)} unreadable runs ignored ({bad}).")
    markdown = f"# Sweep report: {name}\n\n" + to_markdown(rows) + "\n" + " ".join(notes) + "\n"
    md_path, csv_path = out / "report.md", out / "report.csv"
    atomic_write_text(md_path, markdown)
    atomic_write_text(csv_path, to_csv(rows))
    plots = [
        plot_accuracy(rows, out / "accuracy_vs_batch.png", name),
        plot_updates(rows, out / "updates_vs_batch.png", name),
    ]
    if any(r.metrics for r in records):
        plots.append(plot_trajectories(list(records), out / "trajectories.png", name))
    if console is not None:
        console.print(rich_table(rows, f"sweep report: {name}"))
        for note in notes:
            console.print(note, highlight=False)
    return ReportResult(
        markdown, csv_path, md_path, plots, rows, len(records), list(records.unfinished)
    )
