"""Experiment loggers: one seam for TensorBoard, a JSON-lines file, W&B and MLflow.

The trainer talks to one :class:`Logger` (``make_loggers`` fans out to every enabled
backend) on rank 0 only:

* ``log_epoch(record)``: the epoch's metrics.jsonl record (after it was appended);
* ``log_step(step, values)``: every ``log.every_steps`` SGD updates, ``step`` the global
  update count and ``values`` numbers such as ``lr``, ``batch_size``, ``loss``, ``acc``;
* ``close()``: once at the end of the run, also on error.

Backends are optional dependencies, imported only when enabled; a missing one is a one-line
:class:`LoggerError` naming the config key and the package to install. Epoch scalars are
written under ``epoch/<key>`` at step = the epoch's update count (``updates``), so runs with
different batch sizes line up by SGD updates; step scalars under ``step/<key>``.

A new backend is one small class with the three methods (see ``WandbLogger`` and
``MLflowLogger``: about 20 lines each), plus its switch in ``make_loggers``.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from absa.run.folder import STEPS, TENSORBOARD, atomic_write_text


class LoggerError(ValueError):
    """A logger backend that cannot start; one line for the user."""


@runtime_checkable
class Logger(Protocol):
    def log_epoch(self, record: Mapping[str, Any]) -> None: ...

    def log_step(self, step: int, values: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


def scalars(values: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a record (bools and None dropped; nested mappings flattened
    as ``outer/inner``, e.g. ``growth/new_batch``)."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            out.update({f"{key}/{k}": v for k, v in scalars(value).items()})
        elif (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        ):
            out[key] = float(value)
    return out


def _step_of(record: Mapping[str, Any]) -> int:
    """An epoch record's x value: its cumulative SGD updates (else its 0-based epoch)."""
    updates = record.get("updates")
    if isinstance(updates, int) and not isinstance(updates, bool):
        return updates
    return int(record.get("epoch") or 0)


def _need(module: str, package: str, key: str) -> Any:
    """``import module`` or a one-line LoggerError telling what to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise LoggerError(
            f"{key}: needs the {package} package, which is not installed "
            f"(pip install {package}); or set {key}=false"
        ) from None


class JsonlLogger:
    """Step values as JSON lines in ``<run_dir>/steps.jsonl`` (epoch records already go
    to metrics.jsonl; with ``epochs=True`` they are copied here too, tagged)."""

    def __init__(
        self, run_dir: str | Path, epochs: bool = False, resume_step: int | None = None
    ) -> None:
        self.path = Path(run_dir) / STEPS
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.epochs = epochs
        if resume_step is not None and self.path.is_file():
            self._trim(resume_step)
        self._fh = self.path.open("a", encoding="utf-8")

    def _trim(self, last_step: int) -> None:
        """Drop the lines past ``last_step`` (written after the checkpoint a resume starts
        from, so they would come again); temp file + rename."""
        keep = []
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                step = json.loads(line).get("step")
            except (ValueError, AttributeError):
                continue  # a line cut by a kill
            if isinstance(step, int) and step <= last_step:
                keep.append(line + "\n")
        atomic_write_text(self.path, "".join(keep))

    def _write(self, obj: Mapping[str, Any]) -> None:
        self._fh.write(json.dumps(obj, default=str) + "\n")
        self._fh.flush()

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        if self.epochs:
            self._write({"kind": "epoch", **record})

    def log_step(self, step: int, values: Mapping[str, Any]) -> None:
        self._write({"step": int(step), **scalars(values)})

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


class TensorBoardLogger:
    """Scalars into ``<run_dir>/tensorboard`` (``tensorboard --logdir runs``).

    Needs the ``tensorboard`` package (torch.utils.tensorboard's SummaryWriter imports it).
    """

    def __init__(
        self, run_dir: str | Path, key: str = "log.tensorboard", resume_step: int | None = None
    ) -> None:
        _need("tensorboard", "tensorboard", key)
        from torch.utils.tensorboard import SummaryWriter

        self.dir = Path(run_dir) / TENSORBOARD
        # purge_step: TensorBoard hides what an earlier start logged past the checkpoint
        purge = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(log_dir=str(self.dir), purge_step=purge)

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        step = _step_of(record)
        for k, v in scalars(record).items():
            self.writer.add_scalar(f"epoch/{k}", v, step)
        self.writer.flush()

    def log_step(self, step: int, values: Mapping[str, Any]) -> None:
        for k, v in scalars(values).items():
            self.writer.add_scalar(f"step/{k}", v, int(step))

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """Weights & Biases (``pip install wandb``; ``wandb login`` or WANDB_API_KEY first, or
    WANDB_MODE=offline). One W&B run per absa run, named after the run folder."""

    def __init__(
        self,
        run_dir: str | Path,
        project: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        wandb = _need("wandb", "wandb", "log.wandb")
        self.run = wandb.init(
            project=project or "absa",
            name=Path(run_dir).name,
            dir=str(run_dir),
            config=dict(config or {}),
            resume="allow",
        )

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        self.run.log({f"epoch/{k}": v for k, v in scalars(record).items()}, step=_step_of(record))

    def log_step(self, step: int, values: Mapping[str, Any]) -> None:
        self.run.log({f"step/{k}": v for k, v in scalars(values).items()}, step=int(step))

    def close(self) -> None:
        self.run.finish()


class MLflowLogger:
    """MLflow (``pip install mlflow``); tracking URI from ``log.mlflow_uri`` or
    MLFLOW_TRACKING_URI (default: ./mlruns). One MLflow run per absa run."""

    def __init__(
        self,
        run_dir: str | Path,
        uri: str | None = None,
        experiment: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.mlflow = _need("mlflow", "mlflow", "log.mlflow")
        if uri:
            self.mlflow.set_tracking_uri(uri)
        self.mlflow.set_experiment(experiment or "absa")
        self.run = self.mlflow.start_run(run_name=Path(run_dir).name)
        if config:
            flat = {k: str(v) for k, v in _flat(config).items()}
            self.mlflow.log_params(flat)

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        self.mlflow.log_metrics(
            {f"epoch.{k.replace('/', '.')}": v for k, v in scalars(record).items()},
            step=_step_of(record),
        )

    def log_step(self, step: int, values: Mapping[str, Any]) -> None:
        self.mlflow.log_metrics(
            {f"step.{k.replace('/', '.')}": v for k, v in scalars(values).items()}, step=int(step)
        )

    def close(self) -> None:
        self.mlflow.end_run()


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class MultiLogger:
    """Hands every call to each logger; ``close`` closes them all, even if one fails.
    ``MultiLogger([])`` logs nothing: the trainer's default (every backend off)."""

    def __init__(self, loggers: Iterable[Logger]) -> None:
        self.loggers = list(loggers)

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        for lg in self.loggers:
            lg.log_epoch(record)

    def log_step(self, step: int, values: Mapping[str, Any]) -> None:
        for lg in self.loggers:
            lg.log_step(step, values)

    def close(self) -> None:
        errors = []
        for lg in self.loggers:
            try:
                lg.close()
            except Exception as err:  # close the others first
                errors.append(err)
        if errors:
            raise errors[0]

    def __len__(self) -> int:
        return len(self.loggers)


def _get(section: Any, key: str, default: Any = None) -> Any:
    """``section.key`` for a pydantic section or any object, ``section[key]`` for a mapping."""
    if section is None:
        return default
    if isinstance(section, Mapping):
        return section.get(key, default)
    return getattr(section, key, default)


def make_loggers(
    log: Any,
    run_dir: str | Path,
    config: Mapping[str, Any] | None = None,
    resume_step: int | None = None,
) -> MultiLogger:
    """The loggers a ``log`` config section enables (all off when it is None).

    Keys read (missing ones take these defaults): ``tensorboard: false``, ``jsonl: false``,
    ``wandb: false``, ``wandb_project: null``, ``mlflow: false``, ``mlflow_uri: null``,
    ``mlflow_experiment: null``. ``config`` (the resolved config as a dict) is passed on to
    the W&B and MLflow runs as their parameters. ``resume_step``: the update count of the
    checkpoint a resumed run starts from; the file backends drop what was logged after it.
    Backends that started are closed again when a later one fails to start.
    """
    started: list[Logger] = []
    makers = []
    if _get(log, "tensorboard", False):
        makers.append(lambda: TensorBoardLogger(run_dir, resume_step=resume_step))
    if _get(log, "jsonl", False):
        makers.append(lambda: JsonlLogger(run_dir, resume_step=resume_step))
    if _get(log, "wandb", False):
        makers.append(lambda: WandbLogger(run_dir, _get(log, "wandb_project"), config))
    if _get(log, "mlflow", False):
        makers.append(
            lambda: MLflowLogger(
                run_dir, _get(log, "mlflow_uri"), _get(log, "mlflow_experiment"), config
            )
        )
    try:
        for make in makers:
            started.append(make())
    except BaseException:
        MultiLogger(started).close()
        raise
    return MultiLogger(started)
