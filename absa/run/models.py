"""Model registry and wrappers: ``build_from_config(cfg.model, info)`` -> ``ImageClassifier``.

Every model has the same outer shape, which the Hessian code relies on:

    model(x) == model.classifier(model.features(x))

- ``model.normalize``: per-channel (x - mean) / std as a layer, so inputs and attack epsilons
  are in [0, 1] pixel units;
- ``model.features(x)``: normalize + backbone -> penultimate features [N, D];
- ``model.classifier``: the final ``nn.Linear`` (D -> classes), the paper's last-layer block.

``model.name`` is one of:

- a registry name (``MODELS``: mlp, small_cnn, c1, c2, alexnet, resnet8/18/20, wresnet16_4),
  built for the data set's channels and classes; ``model.width`` and ``model.kwargs`` go to
  its factory;
- ``torchvision:<name>``: ``torchvision.models.get_model(name, weights=None,
  num_classes=<classes>, **model.kwargs)`` for any classification model of
  ``torchvision.models.list_models()`` (resnet18, resnet50, mobilenet_v3_small, vit_b_16
  with ``kwargs: {image_size: 32}``, ...). These are the ImageNet architectures (a resnet18
  here keeps its 7x7 stride-2 stem; the registry's ``resnet18`` is the CIFAR variant);
- ``timm:<name>``: ``timm.create_model(name, pretrained=False, num_classes=<classes>,
  **model.kwargs)``; timm is optional (``pip install absa[timm]``, with ``-c
  constraints.txt`` on CPU machines) and imported only when such a model is built;
- ``some.module:function`` (or ``module:Class``, or ``module:obj.attr``): the user's own
  factory, imported with the current directory first on ``sys.path`` and called as
  ``function(num_classes=<classes of the data set>, **model.kwargs)``, the convention of
  torchvision's and timm's constructors (so any of those can be named directly); it must
  return an ``nn.Module`` that takes normalized [N, C, H, W] images and returns logits.
  **Naming a factory in a config runs that code**, at config validation (which imports the
  module to check the name and the keyword arguments) and at every build; only use configs
  whose code you trust.

torchvision, timm and user models are wrapped into the same outer shape: normalize
(``DatasetInfo.mean/std``) -> backbone -> classifier. The classification head is the module at
``model.classifier`` (a dotted path inside the factory's module, e.g. ``fc``, ``classifier.3``,
``heads.head``) or, when that is unset, found automatically: timm's ``get_classifier()``, then
an ``nn.Linear`` at ``fc``, ``classifier``, ``head`` or ``heads`` (or the last element of an
``nn.Sequential`` there, or of the module itself when it is a Sequential ending in an
``nn.Linear``). The head must be an ``nn.Linear`` with one output per class; it is moved out
of the module (replaced by ``nn.Identity``), so ``features(x)`` gives the penultimate
features. While building, one forward pass of a random [1, C, H, W] batch in eval mode checks
that the wrapped model computes what the module did (the head really was its last layer);
this costs two forward passes at build time. A head that cannot be found, or that fails the
check, is a one-line ModelError saying to name it with ``model.classifier: <path>``.

Input channels: when the data has one channel and the module's first ``nn.Conv2d`` expects
more (3 for the ImageNet architectures), the wrapper repeats the normalized channel to that
many inside ``features`` (no parameters change). A module without convolutions is fed the
data's channels as they are; any other mismatch is an error (pass the factory's own channel
argument, e.g. ``in_chans`` for timm, in ``model.kwargs``).

Weights: absa never downloads. ``model.kwargs.weights`` / ``model.kwargs.pretrained`` (for
torchvision, timm and user factories; absa takes them out before calling the factory) must be
null/false or the path of a local file, read with ``torch.load(weights_only=True)``: a
state_dict of the factory's module (or one nested under ``state_dict`` / ``model``, or a
state_dict of an absa model of the same architecture). Head entries whose shapes do not fit
the data's classes are skipped (the head stays freshly initialized); any other missing,
unexpected or mis-shaped entry is an error.
"""

from __future__ import annotations

import contextvars
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from absa import tv
from absa.engine.optim import TIMM_MISSING
from absa.run.config import did_you_mean
from absa.run.data import DatasetInfo

if TYPE_CHECKING:
    from absa.run.config import ModelConfig

_resnet = tv.load("torchvision.models.resnet")
BasicBlock = _resnet.BasicBlock


class Normalize(nn.Module):
    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ImageClassifier(nn.Module):
    """normalize -> [repeat a single channel] -> backbone -> flatten -> classifier.

    ``head``: an existing final layer (wrapped third-party modules); default a fresh
    ``nn.Linear(feature_dim, classes)``. ``repeat_channels``: expand one-channel input to that
    many channels after normalizing (a 3-channel backbone on grayscale data); None: as is.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        info: DatasetInfo,
        name: str = "",
        head: nn.Module | None = None,
        repeat_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.arch = name
        self.normalize = Normalize(info.mean, info.std)
        self.backbone = backbone
        self.classifier = head if head is not None else nn.Linear(feature_dim, info.num_classes)
        self.repeat_channels = repeat_channels

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        if self.repeat_channels is not None:
            x = x.expand(-1, self.repeat_channels, -1, -1)
        return torch.flatten(self.backbone(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, k, stride, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


def mlp(info: DatasetInfo, width: int) -> ImageClassifier:
    """Two hidden layers of 4*width units: for tests and CPU demos."""
    d_in = info.channels * info.image_size**2
    h = 4 * width
    body = nn.Sequential(nn.Flatten(), nn.Linear(d_in, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU())
    return ImageClassifier(body, h, info, "mlp")


def small_cnn(info: DatasetInfo, width: int, pool: int = 1) -> ImageClassifier:
    """conv-bn-relu x3 (width, 2w, 4w; stride 2 after the first) + average pool to a
    ``pool`` x ``pool`` grid (1: global pooling), so the classifier sees 4w * pool^2 features."""
    w = width
    if not isinstance(pool, int) or isinstance(pool, bool) or pool < 1:
        raise ModelError(f"model.kwargs.pool: expected a positive integer (got {pool!r})")
    body = nn.Sequential(
        *_conv_bn(info.channels, w),
        *_conv_bn(w, 2 * w, stride=2),
        *_conv_bn(2 * w, 4 * w, stride=2),
        nn.AdaptiveAvgPool2d(pool),
    )
    return ImageClassifier(body, 4 * w * pool * pool, info, "small_cnn")


def c1(info: DatasetInfo, width: int) -> ImageClassifier:
    """The NeurIPS'18 paper's shallow C1-style net: conv5x5(64)-pool-conv5x5(64)-pool-fc384-fc192."""
    side = 8 if info.image_size >= 32 else 2
    body = nn.Sequential(
        nn.Conv2d(info.channels, 64, 5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1),
        nn.BatchNorm2d(64),
        nn.Conv2d(64, 64, 5, padding=2),
        nn.ReLU(inplace=True),
        nn.BatchNorm2d(64),
        nn.MaxPool2d(3, 2, 1),
        nn.AdaptiveAvgPool2d(side),
        nn.Flatten(),
        nn.Linear(64 * side * side, 384),
        nn.ReLU(inplace=True),
        nn.Linear(384, 192),
        nn.ReLU(inplace=True),
    )
    return ImageClassifier(body, 192, info, "c1")


def c2(info: DatasetInfo, width: int) -> ImageClassifier:
    """The paper's deeper C2-style net: VGG-like stacks 64-64-pool-128-128-pool-256-256-pool."""
    layers: list[nn.Module] = []
    cin = info.channels
    for cout in (64, 128, 256):
        layers += _conv_bn(cin, cout) + _conv_bn(cout, cout) + [nn.MaxPool2d(2, ceil_mode=True)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 256), nn.ReLU(inplace=True)]
    return ImageClassifier(nn.Sequential(*layers), 256, info, "c2")


def alexnet(info: DatasetInfo, width: int) -> ImageClassifier:
    """AlexNet-style for 32x32 (as used on SVHN in the ABSA paper): 5 convs, 3 pools, 2 fc."""
    body = nn.Sequential(
        nn.Conv2d(info.channels, 64, 3, 2, 1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 192, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(192, 384, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.AdaptiveMaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(256 * 4, 1024),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(1024, 1024),
        nn.ReLU(inplace=True),
    )
    return ImageClassifier(body, 1024, info, "alexnet")


def resnet18(info: DatasetInfo, width: int) -> ImageClassifier:
    """torchvision ResNet-18 in its CIFAR variant: 3x3 stride-1 stem, no max-pool."""
    net = _resnet.resnet18(num_classes=info.num_classes)
    net.conv1 = nn.Conv2d(info.channels, 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    return ImageClassifier(net, feature_dim, info, "resnet18")


class _CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet-(6n+2): three stages of n torchvision BasicBlocks."""

    def __init__(self, channels: int, n: int, width: int) -> None:
        super().__init__()
        widths = (width, 2 * width, 4 * width)
        self.stem = nn.Sequential(*_conv_bn(channels, widths[0]))
        blocks: list[nn.Module] = []
        cin = widths[0]
        for stage, cout in enumerate(widths):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                down = None
                if stride != 1 or cin != cout:
                    down = nn.Sequential(
                        nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
                    )
                blocks.append(BasicBlock(cin, cout, stride, down))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.blocks(self.stem(x)))


def resnet8(info: DatasetInfo, width: int) -> ImageClassifier:
    body = _CifarResNet(info.channels, 1, width)
    return ImageClassifier(body, body.out_dim, info, "resnet8")


def resnet20(info: DatasetInfo, width: int) -> ImageClassifier:
    body = _CifarResNet(info.channels, 3, width)
    return ImageClassifier(body, body.out_dim, info, "resnet20")


class _WideBlock(nn.Module):
    """Pre-activation wide basic block (Zagoruyko & Komodakis) with dropout."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(cin), nn.BatchNorm2d(cout)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.drop = nn.Dropout(dropout)
        self.short = (
            nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = torch.relu(self.bn1(x))
        shortcut = x if self.short is None else self.short(o)
        o = self.conv1(o)
        o = self.conv2(self.drop(torch.relu(self.bn2(o))))
        return o + shortcut


def wresnet16_4(info: DatasetInfo, width: int, dropout: float = 0.0) -> ImageClassifier:
    """WResNet-16-4: depth 16 (n = 2 blocks per stage), widen factor 4 -> 64/128/256."""
    k, n = 4, 2
    widths = (16 * k, 32 * k, 64 * k)
    layers: list[nn.Module] = [nn.Conv2d(info.channels, 16, 3, 1, 1, bias=False)]
    cin = 16
    for stage, cout in enumerate(widths):
        for i in range(n):
            layers.append(_WideBlock(cin, cout, 2 if stage > 0 and i == 0 else 1, dropout))
            cin = cout
    layers += [nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1)]
    return ImageClassifier(nn.Sequential(*layers), cin, info, "wresnet16_4")


MODELS: dict[str, Callable[..., ImageClassifier]] = {
    "mlp": mlp,
    "small_cnn": small_cnn,
    "c1": c1,
    "c2": c2,
    "alexnet": alexnet,
    "resnet8": resnet8,
    "resnet20": resnet20,
    "resnet18": resnet18,
    "wresnet16_4": wresnet16_4,
}


class ModelError(ValueError):
    """A model that cannot be built as configured; one line for the user."""


PREFIXES = ("torchvision", "timm")  # model.name prefixes that are not user modules
WEIGHT_KEYS = ("weights", "pretrained")  # model.kwargs absa handles itself (local files only)
HEAD_ATTRS = ("fc", "classifier", "head", "heads")


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


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


def build_model(name: str, info: DatasetInfo, width: int = 16, **kwargs: Any) -> ImageClassifier:
    """Build a model for a dataset (channels, classes, normalization from ``info``);
    ``kwargs`` are the factory's extra arguments (``model.kwargs``). ``width`` only reaches
    registry models; torchvision:/timm:/module:function names go to ``build_external``."""
    if external_kind(name) is not None:
        return build_external(name, info, kwargs)
    check_model_args(name, kwargs)
    return MODELS[name](info, width, **kwargs)


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
        _torchvision_builder(target)
    elif kind == "timm":
        _timm()
    elif _CODE.get() != "skip":
        _check_factory_args(target, _import_factory(target), kwargs)


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


def _torchvision_builder(target: str) -> Callable[..., nn.Module]:
    models = tv.load("torchvision.models")
    names = models.list_models(module=models)
    if target not in names:
        raise ModelError(
            f"model.name: unknown torchvision classification model {target!r}"
            f"{did_you_mean(target, names, 'torchvision:')} (see torchvision.models.list_models())"
        )
    return models.get_model_builder(target)


def _timm() -> Any:
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


def _import_factory(target: str) -> Callable[..., Any]:
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
            f"then sys.path): {type(err).__name__}: {_first_line(err)}"
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
            f"{type(err).__name__}: {_first_line(err)}"
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
        builder = _torchvision_builder(target)
        return builder(weights=None, num_classes=info.num_classes, **kwargs)
    if kind == "timm":
        timm = _timm()
        if not timm.is_model(target):
            hint = did_you_mean(target, timm.list_models(), "timm:")
            raise ModelError(f"model.name: unknown timm model {target!r}{hint}")
        return timm.create_model(target, pretrained=False, num_classes=info.num_classes, **kwargs)
    return _import_factory(target)(num_classes=info.num_classes, **kwargs)


def build_external(
    name: str, info: DatasetInfo, kwargs: dict[str, Any], classifier: str | None = None
) -> ImageClassifier:
    """Build and wrap a ``torchvision:``, ``timm:`` or ``module:function`` model (see the
    module docstring); ``classifier`` is ``model.classifier`` (None: found automatically)."""
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
            f"model.name: {name} failed: {type(err).__name__}: {_first_line(err)}"
        ) from err
    if not isinstance(net, nn.Module):
        raise ModelError(f"model.name: {name} returned a {type(net).__name__}, not an nn.Module")

    if getattr(net, "aux_logits", False) is True:  # googlenet, inception_v3: tuples in training
        raise ModelError(
            f"model.kwargs.aux_logits: {name} returns auxiliary logits in training mode; set "
            "model.kwargs.aux_logits: false"
        )
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
    if weights is not None:
        _load_weights(net, path, weights[0], weights[1], name)

    expects = _input_channels(net)
    repeat = None
    if expects is not None and expects != info.channels:
        if info.channels != 1:
            raise ModelError(
                f"model.name: {name} expects {expects} input channels but the data set has "
                f"{info.channels}; pass the factory's channel argument in model.kwargs"
            )
        repeat = expects
    return _wrap(net, path, head, info, name, repeat)


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
            f"{_first_line(err)} (an input-size argument in model.kwargs, e.g. image_size or "
            "img_size, may fit it to the data)"
        ) from err
    finally:
        net.train(was_training)
    if not isinstance(want, torch.Tensor):
        raise ModelError(
            f"model.name: {name} returns a {type(want).__name__} in eval mode, not a tensor of "
            "logits (auxiliary outputs? see its kwargs, e.g. aux_logits: false)"
        )
    parent_path, _, leaf = path.rpartition(".")
    parent = net.get_submodule(parent_path) if parent_path else net
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
            f"without it: {type(err).__name__}: {_first_line(err)}); name the final nn.Linear "
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


def build_from_config(cfg: ModelConfig, info: DatasetInfo) -> ImageClassifier:
    """The model that ``cfg`` (the ``model`` section) describes, for dataset ``info``."""
    if external_kind(cfg.name) is not None:
        return build_external(cfg.name, info, cfg.kwargs, cfg.classifier)
    return build_model(cfg.name, info, cfg.width, **cfg.kwargs)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
