"""The report's tables for the terminal (rich): each fits the console's width, transposed
or split into parts when it is too wide, so that no header or cell is wrapped or cut."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from absa.fleet.report.stats import robust_columns
from absa.fleet.report.tables import (
    cell,
    cell_grid,
    cost_cells,
    cost_header,
    robust_cells,
    robust_header,
)


def _table(
    title: str, header: list[str], lines: list[list[str]], left: tuple[int, ...] = ()
) -> Any:
    """A rich table whose cells never wrap (columns ``left`` left-aligned, others right), at
    least as wide as its title, which then stays on one line."""
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
    cols, grid, _ = cell_grid(rows) if rows else ([], [], False)
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
    cols, grid, show_n = cell_grid(rows)
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


def rich_cost_parts(
    rows: list[dict[str, Any]], name: str = "", console: Any = None
) -> list[list[Any]]:
    """The cost table and (when runs computed one) the robust accuracy table for rich, each
    as a list of parts (batch and method repeated) when ``console`` is too narrow for it."""
    suffix = f": {name}" if name else ""
    body = [cost_cells(r) for r in rows]
    out = [fit_tables(console, f"cost{suffix}", cost_header(), body, keys=2, left=(1,))]
    robust = robust_columns(rows)
    if robust:
        lines = [robust_cells(r, robust) for r in rows if r["robust"]]
        title = f"robust accuracy %{suffix}"
        out.append(fit_tables(console, title, robust_header(rows), lines, keys=2, left=(1,)))
    return out
