"""The one-line error of a model that cannot be built, and the messages shared with absa.engine."""

from __future__ import annotations

TIMM_MISSING = "timm is not installed; pip install absa[timm] (with -c constraints.txt)"


class ModelError(ValueError):
    """A model that cannot be built as configured; one line for the user."""


def first_line(err: BaseException) -> str:
    """The first non-blank line of an exception's message (its type name when empty)."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__
