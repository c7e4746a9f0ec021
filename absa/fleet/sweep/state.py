"""A point's state, read from its run folder through absa.run.folder (which owns the files).

``done`` (summary.json), ``running`` (a live process holds the run lock), ``failed``
(status.json, the marker the sweep writes when the point's process fails), ``partial``
(last.pt, no summary: resumable), ``pending``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from absa.fleet.sweep.spec import Point
from absa.run import folder as run_folder
from absa.run.folder import LAST, LOG, MARKER, POINT_CONFIG, SUMMARY

__all__ = ["LAST", "LOG", "MARKER", "POINT_CONFIG", "SUMMARY", "failure", "status", "summary"]


def _folder(point: Point | Path) -> Path:
    return point.folder if isinstance(point, Point) else Path(point)


def status(point: Point | Path) -> str:
    """``done`` | ``running`` | ``failed`` | ``partial`` | ``pending`` (folder.point_status)."""
    return run_folder.point_status(_folder(point))


def failure(point: Point | Path) -> str | None:
    """The recorded error line of a failed point, else None."""
    return run_folder.failure(_folder(point))


def summary(folder: Path) -> dict[str, Any]:
    """The point's summary.json, or {} when it has none (or it is unreadable)."""
    try:
        return json.loads((folder / SUMMARY).read_text())
    except (OSError, ValueError):
        return {}
