"""Where ``torchvision:``, ``timm:`` and ``module:function`` model names come from, and
whether a ``module:function`` name may be imported (``code_imports``)."""

from __future__ import annotations

import contextvars
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from absa import tv
from absa.run.models.errors import TIMM_MISSING, ModelError, first_line
from absa.util import did_you_mean


def torchvision_builder(target: str) -> Callable[..., nn.Module]:
    models = tv.load("torchvision.models")
    names = models.list_models(module=models)
    if target not in names:
        raise ModelError(
            f"model.name: unknown torchvision classification model {target!r}"
            f"{did_you_mean(target, names, 'torchvision:')} (see torchvision.models.list_models())"
        )
    return models.get_model_builder(target)


def timm_module() -> Any:
    if importlib.util.find_spec("timm") is None:
        raise ModelError(f"model.name: {TIMM_MISSING}")
    return importlib.import_module("timm")  # after absa.tv (imported above): timm needs it


# Whether a ``module:function`` model name may be imported: "allow" (a config the user gave),
# "skip" (validate the rest without importing: a stored config compared on resume), or a
# "deny:<file>" (the config inside a checkpoint: importing would run code that file names)
_CODE: contextvars.ContextVar[str] = contextvars.ContextVar("absa_model_code", default="allow")
TRUST_HINT = "pass --trust-model-code (absa.load_run(..., trust_code=True)) if you trust it"


@contextmanager
def code_imports(mode: str) -> Iterator[None]:
    """Within the block, ``module:function`` model names are imported (``allow``), left
    unchecked (``skip``) or refused (``deny:<file>``, naming the file in the error)."""
    token = _CODE.set(mode)
    try:
        yield
    finally:
        _CODE.reset(token)


def import_factory(target: str) -> Callable[..., Any]:
    """The callable ``module:attr`` names, the current directory first on sys.path."""
    mode = _CODE.get()
    if mode.startswith("deny"):
        source = mode.partition(":")[2] or "a checkpoint"
        raise ModelError(
            f"model.name: {target!r} in {source} would import and run the Python module it "
            f"names; {TRUST_HINT}"
        )
    module_name, _, attr = target.partition(":")
    parts = module_name.split(".") + attr.split(".")
    if not module_name or not attr or not all(part.isidentifier() for part in parts):
        raise ModelError(
            f"model.name: {target!r}: expected a registry name, torchvision:<name>, "
            "timm:<name> or module:function"
        )
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as err:  # the user's module: any error is reported in one line
        raise ModelError(
            f"model.name: cannot import {module_name!r} (looked in the current directory, "
            f"then sys.path): {type(err).__name__}: {first_line(err)}"
        ) from err
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)
    where = module_name
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise ModelError(f"model.name: {where} has no {part!r}{did_you_mean(part, names)}")
        obj, where = getattr(obj, part), f"{where}.{part}"
    if not callable(obj):
        raise ModelError(f"model.name: {target} is a {type(obj).__name__}, not a callable")
    return obj


def code_mode() -> str:
    """``allow``, ``skip`` or ``deny:<file>``: what ``code_imports`` set for this context."""
    return _CODE.get()
