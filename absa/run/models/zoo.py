"""The model registry ``MODELS``: architectures built for a data set's channels and classes."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from absa import tv
from absa.run.data.splits import DatasetInfo
from absa.run.models.classifier import ImageClassifier
from absa.run.models.errors import ModelError

_resnet = tv.load("torchvision.models.resnet")
BasicBlock = _resnet.BasicBlock


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
# registry models whose layer widths are fixed by their paper: model.width does not reach them
FIXED_WIDTH = ("c1", "c2", "alexnet", "resnet18", "wresnet16_4")


def width_note(name: str) -> str:
    """``"model.width is ignored by model.name c1 (...)"`` for a registry model of fixed widths;
    "" for the others (the note the CLI prints when ``model.width`` is set for such a model)."""
    if name not in FIXED_WIDTH:
        return ""
    return f"model.width is ignored by model.name {name} (its layer widths are fixed)"
