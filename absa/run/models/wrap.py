"""Wrapping ``torchvision:``, ``timm:`` and ``module:function`` models into the outer shape
normalize -> backbone -> classifier (see the package docstring)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from absa.run.data.splits import DatasetInfo
from absa.run.models.checks import WEIGHT_KEYS, check_model_args, external_kind, weights_file
from absa.run.models.classifier import ImageClassifier, Normalize
from absa.run.models.errors import ModelError, first_line
from absa.run.models.factories import import_factory, timm_module, torchvision_builder
from absa.util import did_you_mean

HEAD_ATTRS = ("fc", "classifier", "head", "heads")


def _find_head(net: nn.Module) -> str | None:
    """Dotted path of the classification head (see the module docstring), or None."""
    paths = {id(m): n for n, m in net.named_modules() if n}
    get = getattr(net, "get_classifier", None)
    if callable(get):
        try:
            head = get()
        except Exception:  # a foreign method of that name: fall back to the attributes
            head = None
        if isinstance(head, nn.Linear) and id(head) in paths:
            return paths[id(head)]

    def last_linear(module: nn.Module, prefix: str) -> str | None:
        if isinstance(module, nn.Linear):
            return prefix
        if isinstance(module, nn.Sequential) and len(module) > 0:
            key = next(reversed(module._modules))
            if isinstance(module._modules[key], nn.Linear):
                return f"{prefix}.{key}" if prefix else key
        return None

    for attr in HEAD_ATTRS:
        child = net._modules.get(attr)
        found = last_linear(child, attr) if child is not None else None
        if found:
            return found
    return last_linear(net, "") if isinstance(net, nn.Sequential) else None


def _head_hint(net: nn.Module) -> str:
    linears = [n for n, m in net.named_modules() if n and isinstance(m, nn.Linear)]
    if not linears:
        return " (it has no nn.Linear layer)"
    return f" (its last nn.Linear layers: {', '.join(linears[-3:])})"


def _input_channels(net: nn.Module) -> int | None:
    conv = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else None


def _state_dict_from(obj: Any, key: str, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for wrap in ("state_dict", "model"):
            if isinstance(obj.get(wrap), dict):
                obj = obj[wrap]
                break
    if (
        not isinstance(obj, dict)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        raise ModelError(
            f"model.kwargs.{key}: {path} holds no state_dict (a mapping of names to tensors)"
        )
    return obj


def _load_weights(net: nn.Module, head_path: str, key: str, path: Path, name: str) -> None:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors of every kind: one line
        raise ModelError(
            f"model.kwargs.{key}: cannot read {path} with torch.load(weights_only=True): "
            f"{type(err).__name__}: {first_line(err)}"
        ) from err
    state = _state_dict_from(obj, key, path)
    if all(k.split(".", 1)[0] in ("normalize", "backbone", "classifier") for k in state):
        # an absa model's state_dict: backbone.<x> -> <x>, classifier.<p> -> <head>.<p>
        renamed = {}
        for k, v in state.items():
            section, _, rest = k.partition(".")
            if section != "normalize":
                renamed[rest if section == "backbone" else f"{head_path}.{rest}"] = v
        state = renamed
    own = net.state_dict()
    prefix = head_path + "."
    skipped = {
        k for k, v in state.items() if k.startswith(prefix) and k in own and v.shape != own[k].shape
    }
    state = {k: v for k, v in state.items() if k not in skipped}
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a mis-shaped entry outside the head
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise ModelError(
            f"model.kwargs.{key}: {path} does not fit {name}: {lines[1] if len(lines) > 1 else lines[0]}"
        ) from err
    missing = [k for k in result.missing_keys if k not in skipped]
    unexpected = list(result.unexpected_keys)
    if missing or unexpected:
        raise ModelError(
            f"model.kwargs.{key}: {path} does not fit {name}: {len(missing)} missing entries"
            f"{' (' + ', '.join(missing[:3]) + ')' if missing else ''}, {len(unexpected)} "
            f"unexpected{' (' + ', '.join(unexpected[:3]) + ')' if unexpected else ''}"
        )


def _construct(kind: str, target: str, info: DatasetInfo, kwargs: dict[str, Any]) -> nn.Module:
    if kind == "torchvision":
        builder = torchvision_builder(target)
        return builder(weights=None, num_classes=info.num_classes, **kwargs)
    if kind == "timm":
        timm = timm_module()
        if not timm.is_model(target):
            hint = did_you_mean(target, timm.list_models(), "timm:")
            raise ModelError(f"model.name: unknown timm model {target!r}{hint}")
        return timm.create_model(target, pretrained=False, num_classes=info.num_classes, **kwargs)
    return import_factory(target)(num_classes=info.num_classes, **kwargs)


def build_external(
    name: str, info: DatasetInfo, kwargs: dict[str, Any], classifier: str | None = None
) -> ImageClassifier:
    """Build and wrap a ``torchvision:``, ``timm:`` or ``module:function`` model (see the
    package docstring); ``classifier`` is ``model.classifier`` (None: found automatically)."""
    check_model_args(name, kwargs)
    kind = external_kind(name)
    assert kind is not None
    target = name if kind == "factory" else name.split(":", 1)[1]
    weights = weights_file(kwargs)
    factory_kwargs = {k: v for k, v in kwargs.items() if k not in WEIGHT_KEYS}
    try:
        net = _construct(kind, target, info, factory_kwargs)
    except ModelError:
        raise
    except Exception as err:  # the factory's own complaint (bad kwargs, ...): one line
        raise ModelError(
            f"model.name: {name} failed: {type(err).__name__}: {first_line(err)}"
        ) from err
    if not isinstance(net, nn.Module):
        raise ModelError(f"model.name: {name} returned a {type(net).__name__}, not an nn.Module")
    if getattr(net, "aux_logits", False) is True:  # googlenet, inception_v3: tuples in training
        raise ModelError(
            f"model.kwargs.aux_logits: {name} returns auxiliary logits in training mode; set "
            "model.kwargs.aux_logits: false"
        )
    path, head = _head(net, name, classifier, info)
    if weights is not None:
        _load_weights(net, path, weights[0], weights[1], name)
    return _wrap(net, path, head, info, name, _repeat_channels(net, name, info))


def _head(
    net: nn.Module, name: str, classifier: str | None, info: DatasetInfo
) -> tuple[str, nn.Linear]:
    """(dotted path, module) of the classification head: ``classifier`` or found; checked to
    be an ``nn.Linear`` with one output per class."""
    path = classifier or _find_head(net)
    if path is None:
        raise ModelError(
            f"model.classifier: cannot find the classification head of {name} (looked for "
            f"get_classifier(), {', '.join(HEAD_ATTRS)}); name its final nn.Linear with "
            f"model.classifier: <path>{_head_hint(net)}"
        )
    try:
        head = net.get_submodule(path)
    except AttributeError:
        names = [n for n, _ in net.named_modules() if n]
        raise ModelError(
            f"model.classifier: {name} has no submodule {path!r}{did_you_mean(path, names)}"
            f"{_head_hint(net)}"
        ) from None
    if not isinstance(head, nn.Linear):
        raise ModelError(
            f"model.classifier: {path} of {name} is a {type(head).__name__}, not an nn.Linear; "
            f"name the final nn.Linear with model.classifier: <path>{_head_hint(net)}"
        )
    if head.out_features != info.num_classes:
        raise ModelError(
            f"model.classifier: {path} of {name} has {head.out_features} outputs but the data "
            f"set has {info.num_classes} classes (does the factory use num_classes?)"
        )
    return path, head


def _repeat_channels(net: nn.Module, name: str, info: DatasetInfo) -> int | None:
    """The channels a one-channel input is repeated to (the module's first Conv2d wants
    more); None: fed as is. ModelError for any other mismatch."""
    expects = _input_channels(net)
    if expects is None or expects == info.channels:
        return None
    if info.channels != 1:
        raise ModelError(
            f"model.name: {name} expects {expects} input channels but the data set has "
            f"{info.channels}; pass the factory's channel argument in model.kwargs"
        )
    return expects


def _wrap(
    net: nn.Module,
    path: str,
    head: nn.Linear,
    info: DatasetInfo,
    name: str,
    repeat: int | None,
) -> ImageClassifier:
    """Move ``head`` out of ``net`` and check, on one random batch in eval mode, that the
    wrapped model computes what ``net`` computed."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, info.channels, info.image_size, info.image_size, generator=gen)
    param = next(net.parameters(), None)
    if param is not None:
        x = x.to(param.device, param.dtype)
    want = _reference_logits(net, x, info, name, repeat)
    parent_path, _, leaf = path.rpartition(".")
    parent = net.get_submodule(parent_path) if parent_path else net
    was_training = net.training
    setattr(parent, leaf, nn.Identity())
    model = ImageClassifier(net, head.in_features, info, name, head=head, repeat_channels=repeat)
    model.normalize.to(x.device, x.dtype)
    model.eval()
    try:
        with torch.no_grad():
            got = model(x)
    except Exception as err:
        raise ModelError(
            f"model.classifier: {path} is not the last layer of {name} (the model fails "
            f"without it: {type(err).__name__}: {first_line(err)}); name the final nn.Linear "
            "with model.classifier: <path>"
        ) from err
    finally:
        model.train(was_training)
    if want.shape != got.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-5):
        raise ModelError(
            f"model.classifier: {path} is not the last layer of {name} (its output changes "
            "once the head is taken out); name the final nn.Linear with model.classifier: "
            f"<path>{_head_hint(model.backbone)}"
        )
    return model


def _reference_logits(
    net: nn.Module, x: torch.Tensor, info: DatasetInfo, name: str, repeat: int | None
) -> torch.Tensor:
    """What the unwrapped ``net`` gives for the normalized ``x`` in eval mode (its own mode
    restored after)."""
    normalize = Normalize(info.mean, info.std).to(x.device, x.dtype)
    was_training = net.training
    net.eval()
    shape = f"[1, {info.channels}, {info.image_size}, {info.image_size}]"
    try:
        with torch.no_grad():
            inp = normalize(x)
            if repeat is not None:
                inp = inp.expand(-1, repeat, -1, -1)
            want = net(inp)
    except Exception as err:  # wrong input size for the architecture, ...: one line
        raise ModelError(
            f"model.name: {name} fails on a {shape} batch: {type(err).__name__}: "
            f"{first_line(err)} (an input-size argument in model.kwargs, e.g. image_size or "
            "img_size, may fit it to the data)"
        ) from err
    finally:
        net.train(was_training)
    if not isinstance(want, torch.Tensor):
        raise ModelError(
            f"model.name: {name} returns a {type(want).__name__} in eval mode, not a tensor of "
            "logits (auxiliary outputs? see its kwargs, e.g. aux_logits: false)"
        )
    return want
