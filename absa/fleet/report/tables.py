"""The report's tables as text: cells, Markdown and CSV.

The paper-shaped table has one row per batch size B and one column per method; each cell
is the final-epoch test accuracy as mean ± std over seeds (a single seed shows ``(n=1)``
instead) and the mean number of SGD updates, plus the final batch size for growing
methods. The cost table has one line per (B, method) row of ``stats.table``, the robust
accuracy table one per row that computed one.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from absa.fleet.report.read import batch_varies
from absa.fleet.report.stats import TRIGGERS, columns, robust_columns, target_accuracy


def _num(x: float) -> str:
    return f"{x:.0f}" if abs(x - round(x)) < 1e-9 else f"{x:.1f}"


def _grows(row: dict[str, Any]) -> bool:
    return batch_varies(row["method"]) or row["final_batch"] != row["batch"]


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


def cell_grid(
    rows: list[dict[str, Any]],
) -> tuple[list[str], list[tuple[int, dict[str, str]]], bool]:
    """(columns, per batch B its cells by column, whether cells show their seed count)."""
    cols = columns(rows)
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
    cols, grid, _ = cell_grid(rows)
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
