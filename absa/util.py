"""Small helpers every layer may use (base layer: imports nothing from absa)."""

from __future__ import annotations

import difflib


def did_you_mean(word: str, valid: list[str], prefix: str = "") -> str:
    """``; did you mean <prefix><closest>?`` for a misspelt key or name, or ""."""
    close = difflib.get_close_matches(word, valid, n=1, cutoff=0.6)
    return f"; did you mean {prefix}{close[0]}?" if close else ""
