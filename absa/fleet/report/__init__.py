"""Tables and figures of a finished (or partly finished) sweep: ``make_report``.

The package, by job: ``read`` (run folders into ``RunRecord``s), ``stats`` (per-run costs,
``table``: the runs grouped into rows), ``tables`` (cells, Markdown, CSV), ``terminal`` (rich
tables), ``draw`` (what the figures share), ``batch_figures`` (accuracy and updates vs batch
size B) and ``epoch_figures`` (schedules and accuracy epoch by epoch). The names other code
uses are re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from absa.fleet.plots import plot_spectra
from absa.fleet.report.batch_figures import ZOOM_POINTS, plot_accuracy, plot_updates
from absa.fleet.report.draw import LOG2_TICKS, context_of
from absa.fleet.report.epoch_figures import ACC_WINDOW, plot_accuracy_vs, plot_trajectories
from absa.fleet.report.read import (
    Collected,
    ReportError,
    RunRecord,
    Unreadable,
    batch_varies,
    collect,
    collect_many,
    method_label,
    method_name,
    nothing_to_report,
    replays,
)
from absa.fleet.report.stats import (
    ATTACK_COST,
    TARGET_MARGIN,
    TARGET_METHOD,
    TRIGGERS,
    attack_cost,
    column_label,
    growth_triggers,
    hessian_share,
    robust_columns,
    samples_processed,
    seconds_to_reach,
    table,
    target_accuracy,
    updates_to_reach,
    wall_seconds,
)
from absa.fleet.report.tables import (
    CSV_FIELDS,
    ROBUST_CAPTION,
    caption,
    cell,
    cost_caption,
    cost_cells,
    cost_header,
    cost_markdown,
    robust_cells,
    robust_header,
    to_csv,
    to_markdown,
    triggers_markdown,
)
from absa.fleet.report.terminal import (
    TRANSPOSED_NOTE,
    fit_tables,
    rich_cost_parts,
    rich_table,
    rich_tables,
)
from absa.run.config import ConfigError, read_yaml
from absa.run.folder import atomic_write_text

__all__ = [
    "ACC_WINDOW",
    "batch_varies",
    "replays",
    "ATTACK_COST",
    "CSV_FIELDS",
    "LOG2_TICKS",
    "ROBUST_CAPTION",
    "TARGET_MARGIN",
    "TARGET_METHOD",
    "TRANSPOSED_NOTE",
    "ZOOM_POINTS",
    "Collected",
    "ReportError",
    "ReportResult",
    "RunRecord",
    "Unreadable",
    "attack_cost",
    "caption",
    "cell",
    "collect",
    "collect_many",
    "column_label",
    "context_of",
    "cost_caption",
    "cost_cells",
    "cost_header",
    "cost_markdown",
    "fit_tables",
    "hessian_share",
    "make_report",
    "method_label",
    "method_name",
    "plot_accuracy",
    "plot_accuracy_vs",
    "plot_spectra",
    "plot_trajectories",
    "plot_updates",
    "rich_cost_parts",
    "rich_table",
    "rich_tables",
    "robust_cells",
    "robust_columns",
    "robust_header",
    "samples_processed",
    "seconds_to_reach",
    "table",
    "target_accuracy",
    "to_csv",
    "to_markdown",
    "updates_to_reach",
    "wall_seconds",
    "TRIGGERS",
    "growth_triggers",
    "triggers_markdown",
]


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


def _notes(records: Collected, dirs: list[Path]) -> list[str]:
    """Where the runs come from, and the runs left out (unfinished, unreadable)."""
    notes = [f"{len(records)} finished runs from {', '.join(f'`{d}`' for d in dirs)}."]
    if records.unfinished:
        notes.append(
            f"{len(records.unfinished)} unfinished runs ignored: {', '.join(records.unfinished)}."
        )
    if records.unreadable:
        bad = "; ".join(records.unreadable.values())
        notes.append(f"{len(records.unreadable)} unreadable runs ignored ({bad}).")
    return notes


def _figures(
    recs: list[RunRecord], rows: list[dict[str, Any]], out: Path, name: str, context: str
) -> list[Path]:
    """The PNGs: accuracy and updates vs batch size always, the epoch-by-epoch figures when
    the runs logged metrics."""
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
    return plots


def _markdown(
    name: str, context: str, rows: list[dict[str, Any]], notes: list[str], plots: list[Path]
) -> str:
    """report.md: the accuracy table, the cost (and robust accuracy) tables, notes, figures."""
    figures = (
        "Figures: " + ", ".join(f"[{p.stem.replace('_', ' ')}]({p.name})" for p in plots) + "."
    )
    return (
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


def _print(
    console: Any, rows: list[dict[str, Any]], name: str, context: str, notes: list[str]
) -> None:
    """The tables, each followed by its caption, and the notes, on a rich console."""
    main, transposed = rich_tables(rows, f"sweep report: {name} ({context})", console)
    for t in main:
        console.print(t)
    console.print(caption(rows), highlight=False)
    if transposed:
        console.print(TRANSPOSED_NOTE, highlight=False)
    parts = rich_cost_parts(rows, name, console)  # cost [, robust accuracy]
    captions = (cost_caption(rows), ROBUST_CAPTION)[: len(parts)]
    for tables, text in zip(parts, captions, strict=True):
        console.print()
        for t in tables:
            console.print(t)
        console.print(text, highlight=False)
    for note in notes:
        console.print(note, highlight=False)


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
        raise ReportError(nothing_to_report(sweep_dir, records))
    for why in records.unreadable.values() if warn is not None else ():
        warn(f"{why}; run skipped")
    out = Path(out_dir) if out_dir is not None else sweep_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows = table(records)
    name = " + ".join(_sweep_name(d) for d in dirs)
    context = context_of(records)
    notes = _notes(records, dirs)
    plots = _figures(list(records), rows, out, name, context)
    markdown = _markdown(name, context, rows, notes, plots)
    md_path, csv_path = out / "report.md", out / "report.csv"
    atomic_write_text(md_path, markdown)
    atomic_write_text(csv_path, to_csv(rows))
    if console is not None:
        _print(console, rows, name, context, notes)
    return ReportResult(
        markdown, csv_path, md_path, plots, rows, len(records), list(records.unfinished)
    )
