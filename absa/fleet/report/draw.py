"""What the report's figures share: saving, titles, one style per method column, and log
axes with plain tick labels."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import matplotlib
from matplotlib.ticker import (
    FixedLocator,
    FuncFormatter,
    LogLocator,
    NullFormatter,
    NullLocator,
)

from absa.fleet.plots import save as save  # the figures call draw.save (tests replace it)
from absa.fleet.report.read import RunRecord

LOG2_TICKS = 8  # at most this many labelled powers of two on a batch-size axis
BATCH_AXIS = "batch size B: fixed, or maximum of growing methods (log2 scale)"
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
_LINESTYLES = ("-", "--", ":", "-.")


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


def title(what: str, name: str, context: str) -> str:
    """A figure's title: what it shows, the sweep's name, and the runs' data and models."""
    head = f"{what}: {name}" if name else what
    return f"{head}\n{context}" if context else head


def _color(i: int, n: int) -> Any:
    """The default cycle for up to 10 series; beyond, tab20 (no two of 20 share a colour)."""
    if n <= 10:
        return f"C{i % 10}"
    return matplotlib.colormaps["tab20"](i % 20)


def styles(columns: list[str]) -> dict[str, dict[str, Any]]:
    """Per method column its colour, marker and line style (one of each per column)."""
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


def log2_axis(axis: Any, values: Iterable[float]) -> None:
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


def log10_axis(axis: Any, values: Iterable[float] = ()) -> None:
    """A log axis labelled in plain numbers, 0.01, 0.02, 0.05, 0.1 ... (1, 2, 5 per decade
    over a short range, fewer over a long one; no 6x10^0 minor labels)."""
    vals = [v for v in values if v and v > 0]
    decades = math.log10(max(vals) / min(vals)) if vals else 1.0
    subs = (1.0, 2.0, 5.0) if decades <= 1.5 else (1.0, 3.0) if decades <= 2.5 else (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(_plain))
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())


def batch_axis(ax: Any, batches: list[int]) -> None:
    """A log2 batch-size x axis labelled at the batch rows B."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches)
    ax.set_xticklabels([str(b) for b in batches])
    ax.minorticks_off()
    if len(batches) == 1:
        ax.set_xlim(batches[0] / 2, batches[0] * 2)


def legend_columns(labels: list[str], width_in: float, fontsize: float, most: int) -> int:
    """Legend columns that fit a figure ``width_in`` inches wide: at most ``most``, at least
    one, from the longest label (a character ~0.6 em, plus ~5 em for the marker and gap)."""
    if not labels:
        return 1
    em = fontsize / 72  # inches
    per_column = (max(len(s) for s in labels) * 0.6 + 5) * em
    return max(1, min(len(labels), most, int(0.95 * width_in / per_column)))
