"""Figures over the batch rows B: final test accuracy (with a zoom on the best cells) and
the number of SGD updates, one line per method column."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import absa.fleet.report.draw as draw  # noqa: E402
from absa.fleet.report.stats import TARGET_MARGIN, columns, reference_row  # noqa: E402

ZOOM_POINTS = 5.0  # accuracy_vs_batch.png: the zoomed panel shows cells within this of the best

# a zoom slot: (first x, last x, batch B, the group's cells below the zoom)
Span = tuple[float, float, int, list[dict[str, Any]]]


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


def _zoom_cells(
    ax: Any, rows: list[dict[str, Any]], cols: list[str], styles: Any, floor: float
) -> tuple[float, list[float], list[str], list[Span], list[dict[str, Any]]]:
    """Draw the cells at or above ``floor``, one slot each, grouped by B; returns (the next
    free x, tick positions, tick labels, the groups' spans, the cells drawn)."""
    x, ticks, labels, spans = 0.0, [], [], []
    shown = []
    for b in sorted({r["batch"] for r in rows}):
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
    return x, ticks, labels, spans, shown


def _zoom_groups(ax: Any, spans: list[Span], end: float, label_y: float) -> None:
    """Each group's ``B = ...`` label at ``label_y``, lines between the groups, and under the
    tick labels the cells left out of the zoom."""
    hidden = []
    for first, last, b, below in spans:
        ax.text(
            (first + last) / 2, label_y, f"B = {b}", ha="center", va="bottom",
            fontsize=9, fontweight="bold",
        )  # fmt: skip
        if below:
            hidden.append(
                f"B = {b}: " + ", ".join(f"{r['column']} {r['acc_mean']:.1f}" for r in below)
            )
        if last < end - 1.8:
            ax.axvline(last + 0.9, color="0.7", lw=0.8)
    if hidden:  # under the tick labels
        note = "not in the zoom (see the left panel): " + "; ".join(hidden)
        ax.text(
            0.0, -0.36, "\n".join(textwrap.wrap(note, 112)), transform=ax.transAxes,
            fontsize=7, color="0.35", va="top",
        )  # fmt: skip


def _reference_lines(ax: Any, rows: list[dict[str, Any]]) -> None:
    """The reference BL accuracy (dashed) and the target below it (dotted), with a legend."""
    ref = reference_row(rows)
    if ref is None:
        return
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


def _zoom_panel(ax: Any, rows: list[dict[str, Any]], cols: list[str], styles: Any) -> None:
    """The cells within ZOOM_POINTS of the best mean, one slot each, grouped by batch row B:
    mean ± std with its value written next to it; the cells below listed per group."""
    best = max(r["acc_mean"] for r in rows)
    x, ticks, labels, spans, shown = _zoom_cells(ax, rows, cols, styles, best - ZOOM_POINTS)
    lo = min(r["acc_mean"] - r["acc_std"] for r in shown)
    hi = max(r["acc_mean"] + r["acc_std"] for r in shown)
    pad = max(0.2, 0.08 * (hi - lo))
    ax.set_ylim(lo - 3 * pad, hi + 2.4 * pad)  # room for the group labels and the legend
    ax.set_xlim(-0.7, x - 0.3)
    ax.set_xticks(ticks)
    ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
    ax.minorticks_off()
    _zoom_groups(ax, spans, x, hi + 1.0 * pad)
    _reference_lines(ax, rows)
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
    cols = columns(rows)
    styles = draw.styles(cols)
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
    draw.batch_axis(ax, batches)
    ax.set_xlabel(draw.BATCH_AXIS)
    ax.grid(alpha=0.3)
    ax.set_ylabel("final test accuracy (%), mean ± std over seeds")
    if zoom:
        ax.set_title("all methods", fontsize=10)
        _zoom_panel(axes[0][1], rows, cols, styles)
    handles, labels = ax.get_legend_handles_labels()
    ncol = draw.legend_columns(labels, fig.get_figwidth(), 9, 6)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=9)
    fig.suptitle(draw.title("Test accuracy vs batch size", title, context), fontsize=11)
    legend_in = 0.3 + 0.22 * math.ceil(len(cols) / ncol)  # the legend's height, inches
    height = fig.get_figheight()
    if zoom:  # fixed margins: tight_layout would also make room for the zoom's footnote
        fig.subplots_adjust(
            left=0.05, right=0.99, top=1 - 0.85 / height, bottom=(legend_in + 1.55) / height,
            wspace=0.16,
        )  # fmt: skip
    else:
        fig.tight_layout(rect=(0, legend_in / height, 1, 1))
    return draw.save(fig, path)


def plot_updates(
    rows: list[dict[str, Any]], path: Path, title: str = "", context: str = ""
) -> Path:
    """Mean number of SGD updates vs batch size B (log-log). Methods are dodged sideways
    (by a few % of B, hollow markers) so that equal counts, e.g. FB's and BL's at one B,
    both show."""
    cols = columns(rows)
    styles = draw.styles(cols)
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
    draw.batch_axis(ax, batches)
    ax.set_yscale("log")
    draw.log10_axis(ax.yaxis, [r["updates_mean"] for r in rows])
    ax.set_xlabel(draw.BATCH_AXIS)
    ax.set_ylabel("SGD updates, mean over seeds (log scale)")
    ax.set_title(draw.title("SGD updates vs batch size", title, context), fontsize=11)
    ax.grid(alpha=0.3, which="both")
    ax.legend(title="method", fontsize=9)
    fig.tight_layout()
    return draw.save(fig, path)
