"""A sweep's points: the grid expanded in order, each point named, resolved and validated."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import re
from pathlib import Path
from typing import Any

from absa.fleet.sweep.spec import Point, Sweep, parse_sweep
from absa.run.config import ConfigError, deep_copy, parse_yaml, set_dotted, to_dict, validate


def load_sweep(path: str | Path) -> Sweep:
    """Read and fully validate a sweep file (every point's config included)."""
    sweep = parse_sweep(path)
    expand(sweep)  # validates every point; raises on unknown keys, bad values, duplicates
    return sweep


# Short tags for common keys ("" = the value alone); others use the key's last segment.
_ABBREV = {
    "schedule.method": "",
    "model.name": "",
    "data.name": "",
    "adversarial.method": "",
    "batch.size": "b",
    "train.seed": "s",
    "train.epochs": "e",
    "optim.lr": "lr",
    "optim.weight_decay": "wd",
    "optim.momentum": "mom",
    "model.width": "w",
    "adversarial.eps": "eps",
    "adversarial.fraction": "r",
    "schedule.max_batch": "bmax",
    "schedule.ref_batch": "bref",
    "schedule.alpha": "alpha",
    "schedule.growth_factor": "g",
    "hessian.block": "hb",
    "data.split_seed": "ss",
    "schedule.replay_from": "of-",
    "schedule.eigenvalue_trigger": "eigtrig-",
    "schedule.lr_scaling": "",  # abs-bmax16384-sqrt
    "schedule.lr_guard": "lrguard-",
    "schedule.growth_warmup": "warmup",
    "schedule.max_lr": "maxlr",
    "schedule.stop_rule": "stop-",
    "schedule.stop_noise_ratio": "stopratio",
}
_MAX_NAME = 64


def _tag(key: str) -> str:
    if key in _ABBREV:
        return _ABBREV[key]
    last = key.split(".")[-1]
    parts = [p for p in last.split("_") if p]
    return "".join(p[0] for p in parts) if len(parts) > 1 else last


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:g}"
    if v is None:
        return "none"
    if isinstance(v, list | tuple):
        return "_".join(_fmt(x) for x in v) or "empty"
    if isinstance(v, dict):
        return "_".join(f"{k}{_fmt(x)}" for k, x in v.items()) or "empty"
    return str(v)


def _safe(text: str) -> str:
    text = re.sub(r"[^A-Za-z0-9.+=_-]+", "_", text).strip("_")
    return text.lstrip(".-") or "x"


def _hash(values: dict[str, Any], n: int = 6) -> str:
    blob = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:n]


def _short(key: str, value: Any) -> Any:
    """A path value is named by its last component (``replay_from: .../absa-s0`` -> absa-s0)."""
    return Path(value).name if key.endswith("replay_from") and isinstance(value, str) else value


def point_name(values: dict[str, Any]) -> str:
    """Filesystem-safe, deterministic name of a point from its values (``absa-b512-s0``)."""
    pieces = [_safe(_tag(k) + _fmt(_short(k, v))) for k, v in values.items()]
    name = "-".join(pieces) or "base"
    if len(name) > _MAX_NAME:
        name = f"{name[: _MAX_NAME - 9].rstrip('-_.')}-{_hash(values, 8)}"
    return name


def _override_value(v: Any) -> str:
    if isinstance(v, str) and "\n" not in v:
        with contextlib.suppress(ConfigError):
            if parse_yaml(v) == v:
                return v
    return json.dumps(v, default=str)  # JSON is YAML


def _grid_values(sweep: Sweep) -> list[tuple[str, dict[str, Any]]]:
    """Every point's values with where it comes from in the sweep file, in point order:
    ``grid point #<n>`` (1-based, product order), then ``points[<i>]`` (0-based, file order)."""
    out = []
    n = 0
    okeys = list(sweep.outer)
    for ocombo in itertools.product(*(sweep.outer[k] for k in okeys)):
        around = dict(zip(okeys, ocombo, strict=True))
        for block in sweep.grid:
            keys = list(block)
            for combo in itertools.product(*(block[k] for k in keys)):
                n += 1
                values = dict(zip(keys, combo, strict=True))
                values.update({k: v for k, v in around.items() if k not in values})
                out.append((f"grid point #{n}", values))
    out.extend((f"points[{i}]", dict(p)) for i, p in enumerate(sweep.points))
    return out


def expand(sweep: Sweep) -> list[Point]:
    """Every point of the sweep, validated, with unique run folders under ``runs/``."""
    labelled = _grid_values(sweep)
    all_values = [values for _, values in labelled]
    names = [point_name(v) for v in all_values]
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    names = [
        f"{n}-{_hash(v)}" if counts[n] > 1 else n for n, v in zip(names, all_values, strict=True)
    ]

    points: list[Point] = []
    seen: dict[str, str] = {}  # resolved config -> "<origin> (<overrides>)" of its first point
    for name, (origin, values) in zip(names, labelled, strict=True):
        overrides = [f"{k}={_override_value(v)}" for k, v in values.items()]
        tree = deep_copy(sweep.base)
        for k, v in values.items():
            set_dotted(tree, k, v)
        where = f"{sweep.path}: point {name} ({', '.join(overrides) or 'base'})"
        cfg = validate(tree, where)
        key = json.dumps(to_dict(cfg), sort_keys=True)
        this = f"{origin} ({', '.join(overrides) or 'base'})"
        if key in seen:
            raise ConfigError(f"{sweep.path}: {seen[key]} and {this} resolve to the same config")
        set_dotted(tree, "train.out_dir", str(sweep.runs_dir))
        set_dotted(tree, "train.run_name", name)
        point = Point(name, sweep.runs_dir / name, overrides, validate(tree, where), values)
        seen[key] = this
        points.append(point)
    if len({p.name for p in points}) != len(points):  # only identical values could do this
        raise ConfigError(f"{sweep.path}: two points share a run folder name")
    return points
