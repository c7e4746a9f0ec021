"""The sweep file: its schema, the parsed :class:`Sweep`, and the checks of its keys.

Expanding a sweep into points (and so validating every point's config) is in ``points``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from absa.run.config import (
    Config,
    ConfigError,
    describe_error,
    did_you_mean,
    merge_trees,
    read_config_tree,
    read_yaml,
    validate,
)

RESERVED = ("train.out_dir", "train.run_name")  # set per point by the sweep


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LocalSection(_Section):
    max_parallel: int = Field(1, ge=1)  # points running at once
    timeout_min: float = Field(24 * 60, gt=0)  # per point; the process is killed after it


class SlurmSection(_Section):
    partition: str | None = None
    time_min: int = Field(24 * 60, ge=1)  # per job; preempted/timed-out jobs requeue and resume
    nodes: int = Field(1, ge=1)
    tasks_per_node: int | None = Field(None, ge=1)  # default: the sweep's nproc
    gpus_per_node: int | None = Field(None, ge=0)
    cpus_per_task: int | None = Field(None, ge=1)
    mem_gb: float | None = Field(None, gt=0)
    array_parallelism: int = Field(32, ge=1)  # jobs of the array running at once
    setup: list[str] = []  # shell lines run before each job, e.g. "module load cuda"
    extra: dict[str, Any] = {}  # passed verbatim to update_parameters, e.g. slurm_account


class SweepSpec(_Section):
    name: str | None = None
    out_dir: Path | None = None
    base: dict[str, Any] = {}
    grid: dict[str, Any] | list[Any] = {}  # one cartesian block, or a list of blocks
    outer: dict[str, Any] = {}  # keys varied slowest, around every grid block (e.g. seeds)
    points: list[dict[str, Any]] = []
    nproc: int = Field(1, ge=1)
    local: LocalSection = LocalSection()
    slurm: SlurmSection = SlurmSection()


@dataclass(frozen=True)
class Sweep:
    path: Path
    name: str
    out_dir: Path  # absolute
    base: dict[str, Any]  # the base config tree: file (base.config) merged with inline keys
    grid: list[dict[str, list[Any]]]  # cartesian blocks, expanded one after the other
    outer: dict[str, list[Any]]  # product around all blocks: outermost loop
    points: list[dict[str, Any]]
    nproc: int
    local: LocalSection
    slurm: SlurmSection

    @property
    def runs_dir(self) -> Path:
        return self.out_dir / "runs"


@dataclass(frozen=True)
class Point:
    name: str
    folder: Path
    overrides: list[str]  # dotted key=value, relative to the sweep's base
    config: Config  # resolved: base + overrides + train.out_dir/run_name of the sweep
    values: dict[str, Any] = field(default_factory=dict)


def _check_key(path: Path, where: str, key: Any) -> None:
    """A grid/points key must be a dotted path into the config tree."""
    if not isinstance(key, str) or not key or any(not p for p in key.split(".")):
        raise ConfigError(f"{path}: {where}: keys must be dotted config keys such as batch.size")
    if key in RESERVED:
        raise ConfigError(f"{path}: {where}.{key}: set by the sweep (the point's run folder)")
    model: type[BaseModel] = Config
    parts = key.split(".")
    for i, part in enumerate(parts):
        valid = list(model.model_fields)
        if part not in model.model_fields:
            prefix = "".join(f"{p}." for p in parts[:i])
            hint = did_you_mean(part, valid, prefix)
            raise ConfigError(
                f"{path}: {where}.{key}: unknown key {prefix}{part}{hint} (valid: {', '.join(valid)})"
            )
        ann = model.model_fields[part].annotation
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            if i < len(parts) - 1:
                raise ConfigError(
                    f"{path}: {where}.{key}: {'.'.join(parts[: i + 1])} is a value, not a section"
                )
            return
        model = ann


def _validate_partial(tree: dict[str, Any], source: str) -> None:
    """Check keys and values of a base tree, but not cross-field rules (such as
    schedule.max_batch for adaptive methods): the grid may complete those per point."""
    try:
        Config.model_validate(tree)
    except ValidationError as exc:
        if any(err["loc"] for err in exc.errors()):
            validate(tree, source)  # raises the one-line error


def _grid_block(path: Path, where: str, block: Any) -> dict[str, list[Any]]:
    """One cartesian block: dotted config key -> non-empty list of values."""
    if not isinstance(block, dict):
        raise ConfigError(f"{path}: {where}: expected a mapping of dotted keys to lists of values")
    out: dict[str, list[Any]] = {}
    for key, values in block.items():
        _check_key(path, where, key)
        if not isinstance(values, list):
            raise ConfigError(
                f"{path}: {where}.{key}: expected a list of values, e.g. [32, 512] (got {values!r})"
            )
        if not values:
            raise ConfigError(f"{path}: {where}.{key}: empty list; give at least one value")
        out[key] = values
    return out


def _read_spec(path: Path) -> tuple[SweepSpec, str]:
    """The file's schema-checked contents and the sweep's name (default: the file's stem)."""
    raw = read_yaml(path)
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe_error(exc, SweepSpec)}") from None
    name = spec.name if spec.name is not None else path.stem
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ConfigError(f"{path}: name: use letters, digits, '.', '_' and '-' (got {name!r})")
    return spec, name


def _base_tree(path: Path, base: dict[str, Any]) -> dict[str, Any]:
    """``base``: the optional config file (relative to the sweep file) merged with inline keys."""
    base = dict(base)
    valid = ["config", *Config.model_fields]  # base: an optional config file + config sections
    for key in base:
        if key not in valid:
            raise ConfigError(
                f"{path}: base.{key}: unknown key{did_you_mean(str(key), valid, 'base.')} "
                f"(valid: {', '.join(valid)})"
            )
    tree: dict[str, Any] = {}
    cfg_file = base.pop("config", None)
    if cfg_file is not None:
        if not isinstance(cfg_file, str):
            raise ConfigError(f"{path}: base.config: expected a path to a config YAML")
        file = Path(cfg_file).expanduser()
        file = file if file.is_absolute() else path.parent / file
        if not file.is_file():
            raise ConfigError(f"{path}: base.config: no such config file {file}")
        tree = read_config_tree(file)
        _validate_partial(tree, str(file))
    tree = merge_trees(tree, base)
    _validate_partial(tree, f"{path}: base")
    return tree


def _grid(path: Path, spec: SweepSpec) -> tuple[list[dict[str, list[Any]]], dict[str, list[Any]]]:
    """The non-empty grid blocks and the outer block, their keys checked (points' keys too)."""
    blocks = spec.grid if isinstance(spec.grid, list) else [spec.grid]
    grid = [
        _grid_block(
            path,
            "grid" if len(blocks) == 1 and isinstance(spec.grid, dict) else f"grid[{i}]",
            block,
        )
        for i, block in enumerate(blocks)
    ]
    grid = [g for g in grid if g]
    outer = _grid_block(path, "outer", spec.outer)
    if outer and not grid:
        raise ConfigError(f"{path}: outer: needs a grid to wrap")
    for i, point in enumerate(spec.points):
        for key in point:
            _check_key(path, f"points[{i}]", key)
    if not grid and not spec.points:
        raise ConfigError(f"{path}: grid: no points; map dotted keys to lists of values")
    return grid, outer


def parse_sweep(path: str | Path) -> Sweep:
    """Read a sweep file and check its keys and base config (its points are not expanded)."""
    path = Path(path)
    spec, name = _read_spec(path)
    tree = _base_tree(path, spec.base)
    grid, outer = _grid(path, spec)
    out_dir = spec.out_dir if spec.out_dir is not None else Path("sweeps") / name
    return Sweep(
        path=path,
        name=name,
        out_dir=Path(os.path.abspath(out_dir.expanduser())),
        base=tree,
        grid=grid,
        outer=outer,
        points=[dict(p) for p in spec.points],
        nproc=spec.nproc,
        local=spec.local,
        slurm=spec.slurm,
    )
