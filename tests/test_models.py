import pytest
import torch
from torch import nn

from absa.data import DatasetInfo
from absa.models import MODELS, ModelError, build_model

CIFAR = DatasetInfo("c", 10, 3, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), True)
DIGITS = DatasetInfo("d", 10, 1, 8, (0.3,), (0.4,), False)


@pytest.mark.parametrize(
    "name", [n for n in MODELS if n not in ("resnet18", "wresnet16_4", "alexnet", "c1", "c2")]
)
@pytest.mark.parametrize("info", [CIFAR, DIGITS], ids=["cifar", "digits"])
def test_head_convention(name, info):
    torch.manual_seed(0)
    model = build_model(name, info, 8).eval()
    x = torch.rand(3, info.channels, info.image_size, info.image_size)
    out = model(x)
    assert out.shape == (3, info.num_classes)
    assert isinstance(model.classifier, nn.Linear)
    torch.testing.assert_close(out, model.classifier(model.features(x)))


@pytest.mark.parametrize("name", ["resnet18", "wresnet16_4", "alexnet", "c1", "c2"])
def test_paper_models_on_cifar_shapes(name):
    model = build_model(name, CIFAR).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.features(x)
        assert feats.shape == (2, model.classifier.in_features)
        torch.testing.assert_close(model(x), model.classifier(feats))


def test_resnet18_is_cifar_variant():
    model = build_model("resnet18", CIFAR)
    assert model.backbone.conv1.kernel_size == (3, 3) and model.backbone.conv1.stride == (1, 1)
    assert isinstance(model.backbone.maxpool, nn.Identity)
    n = sum(p.numel() for p in model.parameters())
    assert 11_000_000 < n < 11_300_000


def test_normalization_is_inside_the_model():
    model = build_model("mlp", CIFAR, 4)
    x = torch.full((1, 3, 32, 32), 0.5)
    assert torch.equal(model.normalize(x), torch.zeros_like(x))


def test_unknown_model_suggests():
    with pytest.raises(ModelError, match="did you mean resnet18"):
        build_model("resnt18", CIFAR)


def test_model_kwargs_reach_the_factory_and_are_checked():
    from absa import config as C
    from absa.models import ModelError, build_from_config

    info = DatasetInfo("t", 10, 1, 28, (0.5,), (0.5,), True)
    cfg = C.load(None, ["model.kwargs={pool: 4}"])
    m = build_from_config(cfg.model, info)
    assert m.classifier.in_features == 4 * 16 * 16  # 4w channels on a 4x4 grid
    assert m(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(
        C.ConfigError,
        match=r"model.kwargs.pol: small_cnn takes no argument 'pol'; did you mean pool",
    ):
        C.load(None, ["model.kwargs={pol: 4}"])
    with pytest.raises(ModelError, match="model.kwargs.pool: expected a positive integer"):
        build_model("small_cnn", info, 16, pool=0)
