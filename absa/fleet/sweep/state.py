"""A point's state, read from the files in its run folder.

``done`` (summary.json), ``running`` (a live process holds the run lock), ``failed``
(status.json, the marker the sweep writes when the point's process fails), ``partial``
(last.pt, no summary: resumable), ``pending``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from absa.fleet.sweep.spec import Point
from absa.run.rundir import holder

SUMMARY = "summary.json"
LAST = "last.pt"
MARKER = "status.json"  # written by the sweep when a point's process fails
POINT_CONFIG = "point.yaml"  # the point's resolved config, passed to `absa train -c`
LOG = "log.txt"


def _folder(point: Point | Path) -> Path:
    return point.folder if isinstance(point, Point) else Path(point)


def status(point: Point | Path) -> str:
    """``done`` | ``running`` (a live process holds the run lock) | ``failed`` | ``partial``
    | ``pending`` from the files in the run folder."""
    folder = _folder(point)
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
    folder = _folder(point)
    try:
        return str(json.loads((folder / MARKER).read_text()).get("error", "failed"))
    except (OSError, ValueError):
        return None


def summary(folder: Path) -> dict[str, Any]:
    """The point's summary.json, or {} when it has none (or it is unreadable)."""
    try:
        return json.loads((folder / SUMMARY).read_text())
    except (OSError, ValueError):
        return {}
