"""absa: large, growing-batch training steered by the Hessian (ABS) with adversarial training (ABSA).

The Python API (absa.api; the CLI is built on the same functions): ``load_config``,
``train``, ``load_run``, ``tensor_data``, ``probe_set``, ``top_eigenvalues``, ``evaluate``,
and the schedule policies (``METHODS``, ``make_policy``, ``build_policy``). They are
imported on first use, so ``absa --help`` does not pay for torch.
"""

from __future__ import annotations

import importlib
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
    "METHODS": "absa.schedules",
    "build_policy": "absa.schedules",
    "make_policy": "absa.schedules",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'absa' has no attribute {name!r}")
