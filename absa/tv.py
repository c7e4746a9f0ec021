"""Import torchvision safely against a CPU-only torch.

The torchvision wheel that pairs with a given torch release may ship compiled ops built for
CUDA. Against a CPU torch its extension fails to load, and ``import torchvision`` then raises
``RuntimeError: operator torchvision::nms does not exist`` because its fake-tensor
registrations refer to op schemas nobody defined. The pure-Python parts that absa uses
(datasets, transforms.v2, models) do not need those ops. Only when that exact error occurs,
we define the missing schemas (no kernels) with ``torch.library`` and import again. A matching
CUDA pair imports normally and is never touched. ``torchvision.ops`` must not be used.

Use ``absa.tv.load("torchvision.models")`` (or ``absa.tv.torchvision``) everywhere instead of
``import torchvision``.
"""

from __future__ import annotations

import importlib
import re
import sys
from types import ModuleType

import torch

# Schemas of the ops torchvision registers fake kernels for at import time, whatever loads.
_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_MISSING = re.compile(r"operator torchvision::(\w+) does not exist")
_library: torch.library.Library | None = None  # kept alive: dropping it removes the schemas


def _forget_partial_import() -> None:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def _import_torchvision():
    global _library
    try:
        import torchvision
    except RuntimeError as err:
        if _MISSING.search(str(err)) is None:
            raise
        _forget_partial_import()
        _library = torch.library.Library("torchvision", "FRAGMENT")
        for schema in _SCHEMAS.values():
            _library.define(schema)
        import torchvision
    return torchvision


torchvision = _import_torchvision()
patched: bool = _library is not None
"""True when the missing op schemas had to be defined (CPU torch with a CUDA torchvision)."""


def load(name: str) -> ModuleType:
    """``importlib.import_module(name)`` for a torchvision submodule, after the fix-up above.

    Use this (or attributes of ``torchvision``) rather than ``from torchvision.x import y``:
    import sorters may move such lines above ``import absa.tv``.
    """
    if name != "torchvision" and not name.startswith("torchvision."):
        raise ValueError(f"not a torchvision module: {name}")
    return importlib.import_module(name)
