"""Figures epoch by epoch: each method's schedules (batch size, learning rate, lambda_max)
and test accuracy against SGD updates or wall time."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

import absa.fleet.report.draw as draw  # noqa: E402
from absa.fleet.report.read import RunRecord  # noqa: E402
from absa.fleet.report.stats import reference_row, run_columns, target_accuracy  # noqa: E402

ACC_WINDOW = 15.0  # accuracy_vs_updates/time.png: the y axis starts this far below the target
_DASHES = ("-", (0, (4, 1.5)), (0, (2, 1.2)), (0, (6, 2, 1.5, 2)))
_SCHEDULES = ("batch_size", "lr", "lam")  # the trajectories' columns; lam: lambda_max

Curve = list[tuple[float, float]]  # (x, y) per epoch


def _geomean(xs: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(x) for x in xs))


def _per_epoch(runs: list[Curve]) -> Curve:
    """At each position the runs share: the mean x (epochs) and the geometric mean of y."""
    n = min(len(r) for r in runs)
    return [
        (statistics.fmean(r[i][0] for r in runs), _geomean([r[i][1] for r in runs]))
        for i in range(n)
    ]


def _epochs(r: RunRecord) -> list[dict[str, Any]]:
    """The run's metrics records that have an epoch, in epoch order."""
    return sorted((m for m in r.metrics if m.get("epoch") is not None), key=lambda m: m["epoch"])


def _batch_looks(batches: list[int]) -> dict[int, dict[str, Any]]:
    """Per batch row B its colour, line width and dashes. Where two batch rows coincide (a
    growing method below its cap), the smaller B is drawn wider underneath and the larger
    dashed on top, so both stay visible."""
    return {
        b: {
            "color": f"C{i % 10}",
            "lw": 1.6 + 1.5 * (len(batches) - 1 - i),
            "ls": _DASHES[i % len(_DASHES)],
        }
        for i, b in enumerate(batches)
    }


def _schedule_curves(group: list[RunRecord]) -> dict[str, list[Curve]]:
    """Per schedule, one curve per run: batch size and learning rate as steps (epoch e
    trains on [e, e+1)), lambda_max where it was measured (at the epoch's end, e+1)."""
    curves: dict[str, list[Curve]] = {key: [] for key in _SCHEDULES}
    for r in group:
        ms = [m for m in _epochs(r) if m.get("batch_size") and m.get("lr")]
        if not ms:
            continue
        ep = [m["epoch"] for m in ms] + [ms[-1]["epoch"] + 1]
        for key in ("batch_size", "lr"):
            ys = [float(m[key]) for m in ms]
            curves[key].append(list(zip(ep, [*ys, ys[-1]], strict=True)))
        lam = [
            (m["epoch"] + 1.0, float(m["lambda_max"])) for m in ms if (m.get("lambda_max") or 0) > 0
        ]
        if lam:
            curves["lam"].append(lam)
    return curves


def _draw_schedule(ax: Any, runs: list[Curve], key: str, look: dict[str, Any]) -> None:
    """The runs of one batch row thin (when more than one), their geometric mean bold."""
    step = {"drawstyle": "steps-post"} if key != "lam" else {"marker": ".", "ms": 4}
    bold = {**look, **step}
    if len(runs) > 1:
        for run in runs:
            ax.plot(*zip(*run, strict=True), color=look["color"], lw=0.7, alpha=0.4, **step)
    ax.plot(*zip(*_per_epoch(runs), strict=True), **bold)


def _schedule_row(
    row_axes: Any, runs: list[RunRecord], looks: dict[int, dict[str, Any]]
) -> dict[str, list[float]]:
    """One method's row of panels (batch size, lr, lambda_max), one colour per batch row;
    returns the values drawn per schedule."""
    values: dict[str, list[float]] = {key: [] for key in _SCHEDULES}
    for b, look in looks.items():
        curves = _schedule_curves([r for r in runs if r.batch_size == b])
        for ax, key in zip(row_axes, _SCHEDULES, strict=True):
            if curves[key]:
                _draw_schedule(ax, curves[key], key, look)
                values[key] += [y for run in curves[key] for _e, y in run]
    if not values["lam"]:
        row_axes[2].text(
            0.5, 0.5, "no Hessian probes", ha="center", va="center",
            transform=row_axes[2].transAxes, color="0.45",
        )  # fmt: skip
    for ax, label in zip(row_axes, ("batch size", "learning rate", "λ_max"), strict=True):
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="major")
    return values


def _schedule_axes(axes: Any, values: dict[str, list[float]]) -> None:
    """Log scales with plain labels (batch size: powers of two), epochs on the x axis."""
    axes[0][0].set_yscale("log", base=2)
    draw.log2_axis(axes[0][0].yaxis, values["batch_size"])
    axes[0][1].set_yscale("log")
    draw.log10_axis(axes[0][1].yaxis, values["lr"])
    if values["lam"]:
        axes[0][2].set_yscale("log")
        draw.log10_axis(axes[0][2].yaxis, values["lam"])
    for ax in axes[-1]:
        ax.set_xlabel("epochs completed")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _schedule_legend(fig: Any, looks: dict[int, dict[str, Any]], heading: str) -> None:
    """The title, the legend of batch rows and line widths under it, and the margins."""
    handles = [Line2D([], [], **look, label=f"B = {b}") for b, look in looks.items()]
    handles += [
        Line2D([], [], color="0.3", lw=0.7, alpha=0.6, label="one seed"),
        Line2D([], [], color="0.3", lw=2.2, label="geometric mean over seeds (or the one seed)"),
    ]
    height = fig.get_figheight()
    fig.suptitle(heading, fontsize=11, y=1 - 0.1 / height, va="top")
    fig.legend(
        handles=handles, loc="upper center", ncol=len(handles), fontsize=8,
        bbox_to_anchor=(0.5, 1 - 0.62 / height), frameon=False,
    )  # fmt: skip
    fig.subplots_adjust(
        left=0.07, right=0.99, top=1 - 1.3 / height, bottom=0.6 / height, hspace=0.32, wspace=0.28
    )


def plot_trajectories(
    records: list[RunRecord], path: Path, title: str = "", context: str = ""
) -> Path:
    """Batch size, learning rate and lambda_max per epoch as small multiples: one row per
    method (table column), one colour per batch row B; seeds thin, their geometric mean bold."""
    col_of, cols = run_columns(records)
    looks = _batch_looks(sorted({r.batch_size for r in records}))
    fig, axes = plt.subplots(
        len(cols), 3, figsize=(12, 1.2 + 2.3 * len(cols)), sharex=True, sharey="col", squeeze=False
    )
    values: dict[str, list[float]] = {key: [] for key in _SCHEDULES}
    for row_axes, c in zip(axes, cols, strict=True):
        row = _schedule_row(row_axes, [r for r in records if col_of[r.name] == c], looks)
        row_axes[1].set_title(c, fontweight="bold", fontsize=10)
        for key in _SCHEDULES:
            values[key] += row[key]
    _schedule_axes(axes, values)
    heading = draw.title("Per-method schedules (all axes log scale but epochs)", title, context)
    _schedule_legend(fig, looks, heading)
    return draw.save(fig, path)


def _epochwise(runs: list[Curve]) -> list[tuple[float, list[float]]]:
    """At each epoch the runs share: (mean x over the runs, the runs' y values)."""
    n = min(len(run) for run in runs)
    return [
        (statistics.fmean(run[i][0] for run in runs), [run[i][1] for run in runs]) for i in range(n)
    ]


def _mean_curve(runs: list[Curve]) -> Curve:
    return [(x, statistics.fmean(ys)) for x, ys in _epochwise(runs)]


def _cumulative_seconds(ms: list[dict[str, Any]]) -> list[float]:
    out, total = [], 0.0
    for m in ms:
        sec = m.get("seconds")
        if sec is None:
            sec = sum(m.get(k) or 0.0 for k in ("train_seconds", "hessian_seconds", "eval_seconds"))
        total += float(sec)
        out.append(total)
    return out


def _accuracy_runs(runs: list[RunRecord], x: str) -> list[Curve]:
    """Per run, test accuracy per epoch against SGD updates (``x="updates"``) or the wall
    seconds so far; runs with nothing to plot against are left out."""
    out = []
    for r in runs:
        ms = [m for m in _epochs(r) if m.get("test_acc") is not None]
        if x == "updates":
            ms = [m for m in ms if m.get("updates")]
            xs = [float(m["updates"]) for m in ms]
        else:
            xs = _cumulative_seconds(ms)
        pts = [(t, float(m["test_acc"])) for t, m in zip(xs, ms, strict=True) if t > 0]
        if pts:  # (runs that logged no times have none to plot against)
            out.append(pts)
    return out


def _accuracy_panel(
    ax: Any, curves: dict[str, list[Curve]], styles: Any, target: float | None, x: str
) -> dict[str, Any]:
    """One batch row's panel: per method column its mean over seeds, with a min-max band
    over seeds epoch by epoch; the target dashed. Returns the mean line per column drawn."""
    lines = {}
    for c, runs in curves.items():
        if not runs:
            continue
        st = styles[c]
        if len(runs) > 1:  # min-max over seeds, epoch by epoch
            xs, lo, hi = zip(*((t, min(ys), max(ys)) for t, ys in _epochwise(runs)), strict=True)
            ax.fill_between(xs, lo, hi, color=st["color"], alpha=0.18, lw=0)
        (lines[c],) = ax.plot(*zip(*_mean_curve(runs), strict=True), lw=1.8, ms=3, label=c, **st)
    if target is not None:
        ax.axhline(target, color="0.25", ls="--", lw=1)
    if ax.lines:
        ax.set_xscale("log")
        draw.log10_axis(ax.xaxis, [v for ln in ax.lines for v in ln.get_xdata()])
    else:
        ax.text(0.5, 0.5, "nothing logged", ha="center", transform=ax.transAxes, color="0.45")
    ax.grid(alpha=0.3, which="both")
    ax.set_xlabel(
        "SGD updates (log scale)"
        if x == "updates"
        else "wall time, s (train + Hessian + eval; log)"
    )
    return lines


def _window(axes: Any, target: float, highest: dict[tuple[int, str], float]) -> None:
    """The y axis from ``ACC_WINDOW`` below the target, so reaching it is readable; the
    columns left wholly below it named per panel (``highest``: per panel and column)."""
    top = max((v for ax in axes for ln in ax.lines for v in ln.get_ydata()), default=100)
    axes[0].set_ylim(target - ACC_WINDOW, min(100.5, top + 0.1 * ACC_WINDOW))
    for ax in axes:
        below = [ln.get_label() for ln in ax.lines if (id(ax), ln.get_label()) in highest]
        below = [c for c in below if highest[(id(ax), c)] < target - ACC_WINDOW]
        if below:
            ax.text(
                0.02, 0.02, "below the axis: " + ", ".join(below), transform=ax.transAxes,
                fontsize=8, color="0.35",
            )  # fmt: skip
    axes[0].set_ylabel(f"test accuracy (%) after each epoch\n(from target - {ACC_WINDOW:g} pt)")


def _accuracy_legend(fig: Any, handles: list[Any], target: float | None, heading: str) -> None:
    if target is not None:
        handles.append(Line2D([], [], color="0.25", ls="--", lw=1, label=f"target {target:.2f}%"))
    labels = [h.get_label() for h in handles]
    ncol = draw.legend_columns(labels, fig.get_figwidth(), 8, 8)
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=8)
    fig.suptitle(heading, fontsize=11)
    fig.tight_layout(rect=(0, 0.05 + 0.05 * math.ceil(len(handles) / ncol), 1, 1))


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
    col_of, cols = run_columns(records)
    styles = draw.styles(cols)
    batches = sorted({r.batch_size for r in records})
    target, _how = target_accuracy(rows)
    fig, axes = plt.subplots(
        1, len(batches), figsize=(1 + 4.6 * len(batches), 4.8), sharey=True, squeeze=False
    )
    seen: dict[str, Any] = {}  # per column its first mean line: the legend's
    highest: dict[tuple[int, str], float] = {}  # per (panel, column): the highest seed value
    ref = reference_row(rows)
    ref_runs: list[Curve] = []
    if ref is not None:
        at = (ref["column"], ref["batch"])
        ref_runs = _accuracy_runs([r for r in records if (col_of[r.name], r.batch_size) == at], x)
    ref_handle = None
    for ax, b in zip(axes[0], batches, strict=True):
        if ref_runs and b != ref["batch"]:  # the baseline's curve, for comparison
            (ref_handle,) = ax.plot(
                *zip(*_mean_curve(ref_runs), strict=True), color="0.55", lw=3, alpha=0.35,
                label=f"{ref['column']} at B = {ref['batch']} (reference)", zorder=1,
            )  # fmt: skip
        runs = [r for r in records if r.batch_size == b]
        curves = {c: _accuracy_runs([r for r in runs if col_of[r.name] == c], x) for c in cols}
        for c, line in _accuracy_panel(ax, curves, styles, target, x).items():
            highest[(id(ax), c)] = max(y for run in curves[c] for _x, y in run)
            seen.setdefault(c, line)
        ax.set_title(f"B = {b}", fontsize=10)
    if target is not None:
        _window(axes[0], target, highest)
    else:
        axes[0][0].set_ylabel("test accuracy (%) after each epoch")
    handles = [seen[c] for c in cols if c in seen]
    handles += [ref_handle] if ref_handle is not None else []
    what = "Test accuracy vs SGD updates" if x == "updates" else "Test accuracy vs wall time"
    heading = draw.title(f"{what} (mean over seeds, band: min-max)", title, context)
    _accuracy_legend(fig, handles, target, heading)
    return draw.save(fig, path)
