"""Checkpoints: saved atomically (absa.run.folder.atomic_write_bytes), checked on load.

A checkpoint is a plain dict loadable with ``torch.load(path, weights_only=True)``: tensors,
state dicts, numbers, strings, lists and dicts only (the config is stored as its plain dict;
RNG states are uint8 tensors). Python's ``random`` and NumPy generators are not used in
training and are not stored.

``load`` checks the structure the trainer writes (``_ENTRIES``): a file missing an entry, or
holding one of the wrong type, is refused with one line instead of failing later in
``absa eval``, ``absa hessian`` or a resumed run.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from absa.run.folder import (
    LAST,
    PREV,
    UNREADABLE,
    DiskFullError,
    atomic_write_bytes,
    atomic_write_text,
)

FORMAT_VERSION = 1
# atomic_write_* and DiskFullError live in absa.run.folder; importable from here too
__all__ = [
    "FORMAT_VERSION",
    "LAST",
    "PREV",
    "CheckpointError",
    "DiskFullError",
    "atomic_write_bytes",
    "atomic_write_text",
    "load",
    "load_for_resume",
    "rng_state",
    "save",
    "set_rng_state",
]


class CheckpointError(RuntimeError):
    """A missing or unusable checkpoint, phrased as one line for the user."""


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s generators. States are CPU ByteTensors whatever the
    checkpoint was loaded onto; a CUDA state is restored per device this machine has (a
    checkpoint made on CUDA resumes on a CPU, and one made on a CPU leaves CUDA seeded)."""
    torch.set_rng_state(state["torch"].to("cpu", torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s.to("cpu", torch.uint8), i)


def _keep_previous(path: Path) -> None:
    """Hard-link ``path`` (if any) to PREV next to it, atomically (a temp link renamed over
    PREV), so that ``path`` itself never goes missing: a kill at any point leaves last.pt."""
    if not path.is_file():
        return
    link = path.parent / f".{PREV}.{os.getpid()}_{os.urandom(4).hex()}.tmp"  # clean_temps' pattern
    try:
        os.link(path, link)
    except OSError:  # no hard links here: copy
        shutil.copyfile(path, link)
    os.replace(link, path.parent / PREV)


def save(path: Path, payload: dict[str, Any]) -> None:
    """Save ``payload`` (plus the format version) atomically; the file it replaces becomes
    PREV (the previous epoch's checkpoint, for a last.pt that turns out unreadable)."""
    payload = {"format_version": FORMAT_VERSION, **payload}
    path = Path(path)
    try:
        atomic_write_bytes(path, lambda fh: torch.save(payload, fh), lambda: _keep_previous(path))
    except DiskFullError as err:  # the run folder's checkpoint: say how to continue
        text = str(err).replace("run the command again", f"absa train --resume {path.parent}")
        raise DiskFullError(text) from None


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


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_count(v: Any) -> bool:
    return _is_int(v) and v >= 0


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_tensors(v: Any) -> bool:
    return isinstance(v, list | tuple) and all(isinstance(t, torch.Tensor) for t in v)


def _is_vector(v: Any) -> bool:
    return v is None or isinstance(v, torch.Tensor) or _is_tensors(v)


def _is_rng(v: Any) -> bool:
    return isinstance(v, dict) and isinstance(v.get("torch"), torch.Tensor)


def _is_dict(v: Any) -> bool:
    return isinstance(v, dict)


# entry -> (check, what it should be); all are written by absa.engine.loop for every epoch
_ENTRIES: dict[str, tuple[Any, str]] = {
    "config": (_is_dict, "a dict (the run's config)"),
    "model": (_is_dict, "a state dict of tensors"),
    "epoch": (_is_count, "an int >= 0"),
    "updates": (_is_count, "an int >= 0"),
    "best_test_acc": (_is_number, "a number"),
    "optimizer": (_is_dict, "a dict (optimizer state)"),
    "policy": (_is_dict, "a dict (schedule state)"),
    "growths": (lambda v: isinstance(v, list), "a list"),
    "hessian_vector": (_is_vector, "a tensor, a list of tensors or None"),
    "rng": (_is_rng, "a dict with a 'torch' RNG state tensor"),
}
# entries some checkpoints have: checked when present
_OPTIONAL: dict[str, tuple[Any, str]] = {
    "record": (lambda v: v is None or isinstance(v, dict), "a dict (the epoch's metrics)"),
}


def _kind(v: Any) -> str:
    """``list``, ``str '1'``: the type, plus the value of a short scalar (never a tensor)."""
    if isinstance(v, str | int | float | bool) and len(repr(v)) <= 40:
        return f"{type(v).__name__} {v!r}"
    return "None" if v is None else type(v).__name__


def _problem(ckpt: dict[str, Any]) -> str | None:
    """What is wrong with a checkpoint dict's entries, or None."""
    missing = [k for k in _ENTRIES if k not in ckpt]
    if missing:
        return f"missing {', '.join(repr(k) for k in missing)}"
    for key, (ok, want) in {**_ENTRIES, **_OPTIONAL}.items():
        if key in ckpt and not ok(ckpt[key]):
            return f"{key!r} should be {want} (got {_kind(ckpt[key])})"
    model = ckpt["model"]
    bad = next((k for k, t in model.items() if not isinstance(t, torch.Tensor)), None)
    if bad is not None:
        return f"'model' should be a state dict of tensors ({bad!r} is {_kind(model[bad])})"
    return None


def _check(path: Path, ckpt: Any) -> None:
    """Raise CheckpointError unless ``ckpt`` has the structure ``save`` gives it."""
    if not isinstance(ckpt, dict) or "format_version" not in ckpt:
        raise CheckpointError(f"{path}: not an absa checkpoint (no format_version)")
    version = ckpt["format_version"]
    if not _is_int(version) or version < 1:
        raise CheckpointError(
            f"{path}: not an absa checkpoint (format_version should be an int >= 1, "
            f"got {_kind(version)})"
        )
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format version {version} is newer than this absa "
            f"({FORMAT_VERSION}); upgrade absa"
        )
    problem = _problem(ckpt)
    if problem is not None:
        raise CheckpointError(f"{path}: malformed absa checkpoint: {problem}")


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (safe unpickling: tensors and plain types
    only) and check its entries; one-line errors for missing, unreadable or malformed files."""
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
    _check(path, ckpt)
    return ckpt


def load_for_resume(
    run_dir: Path, map_location: str | torch.device = "cpu", warn: Any = None, repair: bool = True
) -> dict[str, Any]:
    """A run folder's last.pt, or, when it is unreadable (truncated, corrupt) and PREV is
    readable, PREV with a warning through ``warn`` (and, with ``repair``, the writer's, put
    in last.pt's place); else last.pt's one-line error."""
    last = Path(run_dir) / LAST
    try:
        return load(last, map_location)
    except CheckpointError as err:
        prev = Path(run_dir) / PREV
        if not prev.is_file():
            raise
        try:
            ck = load(prev, map_location)
        except CheckpointError:
            raise err from None
        if warn is not None:
            warn(f"warning: {err}; resuming from {prev} (epoch {ck['epoch']}) instead")
        if repair:
            _replace_bad_last(last, prev)
        return ck


def _replace_bad_last(last: Path, prev: Path) -> None:
    """Keep the unreadable last.pt as last.pt.unreadable and put PREV's contents in its
    place (last.pt exists throughout), so the next save rotates a good file into PREV."""
    aside = last.parent / f".{UNREADABLE}.{os.getpid()}.tmp"  # clean_temps' pattern
    try:
        os.link(last, aside)
        os.replace(aside, last.with_name(UNREADABLE))
    except OSError:
        pass  # no hard links here: the unreadable file is not kept
    link = last.parent / f".{LAST}.{os.getpid()}_{os.urandom(4).hex()}.tmp"
    try:
        os.link(prev, link)
    except OSError:
        shutil.copyfile(prev, link)
    os.replace(link, last)
