"""Atomic checkpoints: write to a temp file in the same folder, fsync, then rename.

A checkpoint is a plain dict loadable with ``torch.load(path, weights_only=True)``: tensors,
state dicts, numbers, strings, lists and dicts only (the config is stored as its plain dict;
RNG states are uint8 tensors). Python's ``random`` and NumPy generators are not used in
training and are not stored.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1
LAST = "last.pt"


class CheckpointError(RuntimeError):
    """A missing or unusable checkpoint, phrased as one line for the user."""


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (thread-safe)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: read by setting, then restore at once
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Call ``write(fileobj)`` on a temp file next to ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide shared run folders
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda fh: fh.write(text.encode()))


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, payload: dict[str, Any]) -> None:
    """Save ``payload`` (plus the format version) atomically."""
    payload = {"format_version": FORMAT_VERSION, **payload}
    atomic_write_bytes(Path(path), lambda fh: torch.save(payload, fh))


def _why(path: Path, err: Exception) -> str:
    """Why torch.load failed, in a few words, without its advice to drop weights_only."""
    if isinstance(err, OSError) and err.strerror:
        return f"cannot read: {err.strerror}"
    with path.open("rb") as fh:
        head = fh.read(4)
    text = str(err)
    if not head:
        return "empty file"
    if not head.startswith((b"PK", b"\x80")):  # neither torch's zip nor its legacy pickle
        return "not a torch checkpoint: unrecognized file format"
    if "WeightsUnpickler error:" in text:  # drop the advice before it and the links after it
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0]
        detail = detail.split(". ")[0].rstrip(".")
        if detail.startswith("Unsupported global"):
            return f"it stores Python objects that safe loading refuses: {detail}"
        return f"not a torch checkpoint: {detail}"
    first = re.split(r"\.\s", text.strip(), maxsplit=1)[0].strip().splitlines()
    reason = first[0] if first and "weights_only" not in first[0] else type(err).__name__
    if "PytorchStreamReader" in text or isinstance(err, EOFError):
        return f"corrupt or truncated torch checkpoint: {reason}"
    return reason


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; one-line errors for missing/bad files."""
    path = Path(path)
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with warnings.catch_warnings():  # a stray pickle would also warn about its protocol
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated, not a zip, unpickling refused...
        raise CheckpointError(
            f"{path}: not a readable absa checkpoint ({_why(path, err)})"
        ) from None
    if not isinstance(ckpt, dict) or "format_version" not in ckpt:
        raise CheckpointError(f"{path}: not an absa checkpoint (no format_version)")
    if ckpt["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format version {ckpt['format_version']} is newer than this absa "
            f"({FORMAT_VERSION}); upgrade absa"
        )
    return ckpt
