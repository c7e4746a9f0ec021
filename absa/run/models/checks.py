"""Whether a ``model.name`` with its ``model.kwargs`` can be built (config validation asks
here, without building anything)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from absa.run.models.errors import ModelError
from absa.run.models.factories import code_mode, import_factory, timm_module, torchvision_builder
from absa.run.models.zoo import MODELS
from absa.util import did_you_mean

PREFIXES = ("torchvision", "timm")  # model.name prefixes that are not user modules
WEIGHT_KEYS = ("weights", "pretrained")  # model.kwargs absa handles itself (local files only)


def external_kind(name: str) -> str | None:
    """``torchvision``, ``timm`` or ``factory`` for a name with a colon; None: registry."""
    if ":" not in name:
        return None
    prefix = name.split(":", 1)[0]
    return prefix if prefix in PREFIXES else "factory"


def check_model_name(name: str) -> None:
    """Raise ModelError unless ``name`` is in the registry (with the closest name)."""
    if name not in MODELS:
        hint = did_you_mean(name, list(MODELS))
        raise ModelError(
            f"model.name: unknown model {name!r}{hint} (valid: {', '.join(MODELS)}, "
            "torchvision:<name>, timm:<name> or module:function)"
        )


def check_model_args(name: str, kwargs: dict[str, Any]) -> None:
    """Raise ModelError unless ``name`` can be built with ``kwargs``.

    Registry names: every key must be an argument of the factory. ``torchvision:<name>``:
    the name must be a torchvision classification model (no extra import). ``timm:<name>``:
    timm must be installed (the name itself is checked when building: importing timm takes
    seconds). ``module:function``: imports the module (running its top-level code, with the
    current directory first on sys.path) and checks the keys against the signature unless it
    takes ``**kwargs``. For all three, ``num_classes`` is set from the data and must not be
    given, and ``weights`` / ``pretrained`` must be null/false or a local file.
    """
    kind = external_kind(name)
    if kind is None:
        check_model_name(name)
        params = inspect.signature(MODELS[name]).parameters
        _check_keys(name, kwargs, [p for p in params if p not in ("info", "width")])
        return
    target = name if kind == "factory" else name.split(":", 1)[1]
    if "num_classes" in kwargs:
        raise ModelError(
            "model.kwargs.num_classes: set from the data set's classes; remove it from kwargs"
        )
    weights_file(kwargs)
    if kind == "torchvision":
        torchvision_builder(target)
    elif kind == "timm":
        timm_module()
    elif code_mode() != "skip":
        _check_factory_args(target, import_factory(target), kwargs)


def _check_keys(name: str, kwargs: dict[str, Any], valid: list[str]) -> None:
    for key in kwargs:
        if key not in valid:
            raise ModelError(
                f"model.kwargs.{key}: {name} takes no argument {key!r}"
                f"{did_you_mean(key, valid)} (valid: {', '.join(valid) or 'none'})"
            )


def weights_file(kwargs: dict[str, Any]) -> tuple[str, Path] | None:
    """(key, path) of the local weights file that ``model.kwargs`` names, or None; a
    ModelError for anything that would need a download."""
    found: list[tuple[str, Path]] = []
    for key in WEIGHT_KEYS:
        value = kwargs.get(key)
        if value is None or value is False:
            continue
        if isinstance(value, str) and value.strip():
            path = Path(value).expanduser()
            if path.is_file():
                found.append((key, path))
                continue
            raise ModelError(
                f"model.kwargs.{key}: {value!r} is not a local file; absa downloads no weights "
                "at run time: give the path of a state_dict saved with torch.save"
            )
        raise ModelError(
            f"model.kwargs.{key}: absa downloads no weights at run time; give the path of a "
            f"local weights file (a state_dict saved with torch.save) or leave {key} out "
            f"(got {value!r})"
        )
    if len(found) > 1:
        raise ModelError("model.kwargs: give only one of weights and pretrained")
    return found[0] if found else None


def _check_factory_args(target: str, fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # no signature (a builtin): checked when it is called
        return
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    named = {n: p for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if "num_classes" not in named and not var_kw:
        raise ModelError(
            f"model.name: {target} takes no num_classes argument; absa calls it as "
            f"{target.split(':', 1)[1]}(num_classes=<classes of the data set>, **model.kwargs)"
        )
    given = {k for k in kwargs if k not in WEIGHT_KEYS}
    if not var_kw:
        _check_keys(target, {k: None for k in given}, [n for n in named if n != "num_classes"])
    required = [
        n
        for n, p in named.items()
        if p.default is p.empty and n != "num_classes" and n not in given
    ]
    if required:
        raise ModelError(
            f"model.kwargs: {target} needs argument {required[0]!r} (set model.kwargs.{required[0]})"
        )
