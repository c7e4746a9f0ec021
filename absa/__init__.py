"""absa: large, growing-batch training steered by the Hessian (ABS) with adversarial training (ABSA).

The Python API (absa.api; the CLI is built on the same functions): ``load_config``,
``train``, ``load_run``, ``tensor_data``, ``probe_set``, ``top_eigenvalues``, ``evaluate``,
and the schedule policies (``METHODS``, ``make_policy``, ``build_policy``). They are
imported on first use, so ``absa --help`` does not pay for torch.

The package is layered (imports point down only): ``absa.core`` (pure) < ``absa.run``
(config, data, models, run folder) < ``absa.engine`` < ``absa.fleet`` (sweeps, reports) <
``absa.api`` < ``absa.cli``. The flat module names of 0.1 (``absa.trainer``,
``absa.schedules``, ...) still import: they are aliases of the modules that hold them now.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from typing import Any

__version__ = "0.1.0"

_API = {
    "Result": "absa.api",
    "evaluate": "absa.api",
    "load_config": "absa.api",
    "load_run": "absa.api",
    "probe_set": "absa.api",
    "tensor_data": "absa.api",
    "top_eigenvalues": "absa.api",
    "train": "absa.api",
    "METHODS": "absa.core.policies",
    "build_policy": "absa.core.policies",
    "make_policy": "absa.run.policy",
}
__all__ = ["__version__", *_API]

# the flat layout of absa 0.1 -> where each module lives now
MOVED = {
    "hessian": "absa.core.hessian",
    "landscape": "absa.core.landscape",
    "attacks": "absa.core.attacks",
    "schedules": "absa.core.policies",
    "config": "absa.run.config",
    "data": "absa.run.data",
    "models": "absa.run.models",
    "checkpoint": "absa.run.checkpoint",
    "rundir": "absa.run.folder",
    "runlog": "absa.run.folder",
    "trainer": "absa.engine.loop",
    "probes": "absa.engine.probes",
    "accel": "absa.engine.accel",
    "optim": "absa.engine.optim",
    "loggers": "absa.engine.loggers",
    "evaluation": "absa.engine.evaluation",
    "analysis": "absa.engine.analysis",
    "sweep": "absa.fleet.sweep",
    "report": "absa.fleet.report",
    "plots": "absa.fleet.plots",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import absa.trainer`` gives the module ``absa.engine.loop`` itself (same object)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        head, _, leaf = fullname.rpartition(".")
        if head != __name__ or leaf not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: Any) -> Any:
        return importlib.import_module(MOVED[spec.name.rpartition(".")[2]])

    def exec_module(self, module: Any) -> None:
        """Nothing to run: the module was executed under its own name."""


if not any(isinstance(f, _Alias) for f in sys.meta_path):
    sys.meta_path.insert(0, _Alias())


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    if name in MOVED:
        return importlib.import_module(MOVED[name])
    raise AttributeError(f"module 'absa' has no attribute {name!r}")
