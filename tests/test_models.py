import importlib.util
import os
import sys
import textwrap
import uuid

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from absa.core import hessian as H
from absa.run import config as C
from absa.run.data import DatasetInfo
from absa.run.models import MODELS, ModelError, build_from_config, build_model

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


# --- torchvision:, timm: and module:function models (issue 14) ---------------------------------

HAS_TIMM = importlib.util.find_spec("timm") is not None
RGB3 = DatasetInfo("r", 3, 3, 32, (0.5, 0.4, 0.3), (0.25, 0.2, 0.3), True)  # 3 classes: small heads
GRAY3 = DatasetInfo("g", 3, 1, 32, (0.3,), (0.4,), False)

USER_CODE = '''
import torch
from torch import nn


def make_mlp(num_classes, hidden=8):
    """A factory returning a Sequential whose last element is the head."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(3 * 32 * 32, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
    )


class TinyNet(nn.Module):
    """A user nn.Module whose head has a name absa cannot guess."""

    def __init__(self, num_classes=10, hidden=4):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * hidden, 6), nn.Tanh(),
        )
        self.out = nn.Linear(6, num_classes)

    def forward(self, x):
        return self.out(self.body(x))


class LogProbs(nn.Module):
    """fc is not the last operation: the wrapper would drop the log-softmax."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, num_classes)

    def forward(self, x):
        return torch.log_softmax(self.fc(x.flatten(1)), dim=1)


def not_a_module(num_classes):
    return 42
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module file in a fresh current directory (not on sys.path); yields its name."""
    name = f"absa_usernets_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_CODE))
    monkeypatch.chdir(tmp_path)
    yield name
    sys.modules.pop(name, None)


def model_from(*overrides: str, info: DatasetInfo = RGB3):
    cfg = C.load(None, list(overrides))
    return build_from_config(cfg.model, info)


def check_shape_and_hessian(model, info: DatasetInfo, batch: int = 2):
    """model(x) == classifier(features(x)); the last-layer operator (closed form on the
    features) equals a dense autograd Hessian of the mean loss in the head's parameters,
    taken through the full model's forward."""
    torch.manual_seed(1)
    model = model.double().eval()
    x = torch.rand(batch, info.channels, info.image_size, info.image_size, dtype=torch.float64)
    y = torch.arange(batch) % info.num_classes
    assert isinstance(model.classifier, nn.Linear)
    out = model(x)
    assert out.shape == (batch, info.num_classes)
    feats = model.features(x)
    assert feats.shape == (batch, model.classifier.in_features)
    torch.testing.assert_close(out, model.classifier(feats))

    names = [n for n, _ in H.select_params(model, "last")]
    assert names == ["classifier.weight", "classifier.bias"]
    w, b = model.classifier.weight.detach(), model.classifier.bias.detach()

    def loss(w_, b_):
        params = {"classifier.weight": w_, "classifier.bias": b_}
        return F.cross_entropy(torch.func.functional_call(model, params, (x,)), y)

    (hww, hwb), (hbw, hbb) = torch.autograd.functional.hessian(loss, (w, b), vectorize=True)
    dw, db = w.numel(), b.numel()
    dense = torch.cat(
        [
            torch.cat([hww.reshape(dw, dw), hwb.reshape(dw, db)], 1),
            torch.cat([hbw.reshape(db, dw), hbb.reshape(db, db)], 1),
        ]
    )
    op = H.last_layer_operator(model, (x, y))
    v = torch.randn(dw + db, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(op.matvec(v), dense @ v, rtol=1e-9, atol=1e-12)
    top = H.top_eigen(
        op, 1, "lanczos", max_iter=60, rtol=1e-10, generator=torch.Generator().manual_seed(3)
    )
    assert top.values[0] == pytest.approx(torch.linalg.eigvalsh(dense)[-1].item(), rel=1e-7)


def test_torchvision_resnet18_wraps_fc_and_last_layer_hessian_matches():
    model = model_from("model.name=torchvision:resnet18")
    assert model.arch == "torchvision:resnet18"
    assert isinstance(model.backbone.fc, nn.Identity)
    assert model.classifier.in_features == 512 and model.repeat_channels is None
    assert model.backbone.conv1.kernel_size == (7, 7)  # torchvision's own (ImageNet) stem
    check_shape_and_hessian(model, RGB3)


def test_torchvision_head_inside_sequential_and_gray_input_repeated():
    model = model_from("model.name=torchvision:mobilenet_v3_small", info=GRAY3)
    assert isinstance(model.backbone.classifier[3], nn.Identity)
    assert model.classifier.in_features == 1024 and model.repeat_channels == 3
    assert model.normalize.mean.shape == (1, 1, 1, 1)  # the data's one channel, then repeated
    x = torch.rand(2, 1, 32, 32)
    model.eval()
    with torch.no_grad():
        want = model.classifier(model.backbone(model.normalize(x).expand(-1, 3, -1, -1)))
        torch.testing.assert_close(model(x), want)


def test_library_class_as_factory_finds_heads_head():
    model = model_from(
        "model.name=torchvision.models.vision_transformer:VisionTransformer",
        "model.kwargs={image_size: 32, patch_size: 8, num_layers: 1, num_heads: 2, "
        "hidden_dim: 16, mlp_dim: 32}",
    )
    assert isinstance(model.backbone.heads.head, nn.Identity)
    assert model.classifier.in_features == 16
    check_shape_and_hessian(model, RGB3)


def test_user_factory_builds_from_the_current_directory(user_module):
    model = model_from(f"model.name={user_module}:make_mlp", "model.kwargs={hidden: 5}")
    assert model.classifier.in_features == 5 and isinstance(model.backbone[3], nn.Identity)
    assert os.getcwd() not in sys.path  # cwd was on sys.path only to import
    check_shape_and_hessian(model, RGB3)


def test_user_module_class_with_named_head(user_module):
    model = model_from(f"model.name={user_module}:TinyNet", "model.classifier=out", info=GRAY3)
    assert isinstance(model.backbone.out, nn.Identity) and model.repeat_channels == 3
    assert model.classifier.in_features == 6
    check_shape_and_hessian(model, GRAY3, batch=3)


def test_head_not_found_says_how_to_name_it(user_module):
    with pytest.raises(
        ModelError,
        match=r"^model.classifier: cannot find the classification head of .*TinyNet .*"
        r"name its final nn.Linear with model.classifier: <path> "
        r"\(its last nn.Linear layers: body.5, out\)$",
    ):
        model_from(f"model.name={user_module}:TinyNet")
    with pytest.raises(ModelError, match="no nn.Linear layer"):
        build_model("torchvision:squeezenet1_0", RGB3)


def test_a_head_that_is_not_the_last_layer_is_refused(user_module):
    with pytest.raises(
        ModelError,
        match=r"model.classifier: fc is not the last layer of .*LogProbs \(its output changes",
    ):
        model_from(f"model.name={user_module}:LogProbs")
    with pytest.raises(ModelError, match=r"body.5 of .* has 6 outputs but the data set has 3"):
        model_from(f"model.name={user_module}:TinyNet", "model.classifier=body.5")
    with pytest.raises(ModelError, match=r"model.classifier: .* has no submodule 'outt'; did you"):
        model_from(f"model.name={user_module}:TinyNet", "model.classifier=outt")
    with pytest.raises(ModelError, match=r"body.2 of .* is a ReLU, not an nn.Linear"):
        model_from(f"model.name={user_module}:TinyNet", "model.classifier=body.2")


def test_config_validation_of_external_names(user_module):
    C.load(None, ["model.name=torchvision:vit_b_16"])  # accepted without building it
    cases = [
        ("model.name=torchvision:resnt18", "did you mean torchvision:resnet18"),
        (f"model.name={user_module}:make_mpl", "did you mean make_mlp"),
        (f"model.name={user_module}:not_a_module", None),
        ("model.name=absa_no_such_module_x:f", "cannot import 'absa_no_such_module_x'"),
        ("model.name=1bad:f", "expected a registry name, torchvision:<name>"),
        ("model.name=torchvision:resnet18", "model.kwargs.num_classes: set from the data"),
        (f"model.name={user_module}:make_mlp", "model.kwargs.hiden: .* did you mean hidden"),
        ("model.classifier=fc", "model.classifier: only for torchvision:, timm: or module"),
    ]
    extra = {5: ["model.kwargs={num_classes: 3}"], 6: ["model.kwargs={hiden: 3}"]}
    for i, (override, msg) in enumerate(cases):
        if msg is None:
            C.load(None, [override])  # validates; the factory runs (and fails) only when built
            with pytest.raises(ModelError, match="returned a int, not an nn.Module"):
                model_from(override)
            continue
        with pytest.raises(C.ConfigError, match=msg):
            C.load(None, [override, *extra.get(i, [])])


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        ("{weights: IMAGENET1K_V1}", r"model.kwargs.weights: 'IMAGENET1K_V1' is not a local file"),
        ("{pretrained: true}", r"model.kwargs.pretrained: absa downloads no weights at run time"),
        ("{weights: DEFAULT}", r"absa downloads no weights"),
    ],
)
def test_pretrained_needs_a_local_file(kwargs, msg):
    with pytest.raises(C.ConfigError, match=msg):
        C.load(None, ["model.name=torchvision:resnet18", f"model.kwargs={kwargs}"])
    with pytest.raises(ModelError, match=msg):
        build_model("torchvision:resnet18", RGB3, **C.parse_yaml(kwargs))


def test_weights_from_a_local_file(user_module, tmp_path):
    model_from(f"model.name={user_module}:make_mlp")  # imports the module from the cwd
    mod = sys.modules[user_module]
    torch.manual_seed(5)
    saved = mod.TinyNet(num_classes=7)  # another head size: the head is skipped
    torch.save(saved.state_dict(), tmp_path / "tiny.pt")
    name = [f"model.name={user_module}:TinyNet", "model.classifier=out"]
    model = model_from(*name, "model.kwargs={pretrained: tiny.pt}")
    for key, value in saved.body.state_dict().items():
        assert torch.equal(model.backbone.body.state_dict()[key], value)
    # an absa model's own state_dict (e.g. of a finished run) loads whole, head included
    torch.save({"model": model.state_dict()}, tmp_path / "run.pt")
    again = model_from(*name, "model.kwargs={weights: run.pt}")
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value)
    torch.save({"other.weight": torch.zeros(2)}, tmp_path / "bad.pt")
    with pytest.raises(ModelError, match=r"bad.pt does not fit .*missing entries"):
        model_from(*name, "model.kwargs={weights: bad.pt}")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(ModelError, match=r"cannot read junk.pt with torch.load\(weights_only"):
        model_from(*name, "model.kwargs={weights: junk.pt}")


def test_timm_missing_is_one_line(monkeypatch):
    import absa.run.models as M

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "timm" else real(n, *a)
    )
    with pytest.raises(
        ModelError,
        match=r"^model.name: timm is not installed; pip install absa\[timm\] "
        r"\(with -c constraints.txt\)$",
    ):
        M.check_model_args("timm:resnet18", {})


@pytest.mark.skipif(not HAS_TIMM, reason="timm is not installed (pip install absa[timm])")
def test_timm_model_builds_and_its_hessian_matches():
    from absa.engine.optim import excluded_from_decay

    model = model_from("model.name=timm:test_vit", "model.kwargs={img_size: 32}")
    assert isinstance(model.backbone.head, nn.Identity)  # found by get_classifier()
    assert "backbone.pos_embed" in excluded_from_decay(model)  # timm's no_weight_decay()
    check_shape_and_hessian(model, RGB3)
    with pytest.raises(ModelError, match="did you mean timm:test_vit"):
        build_model("timm:test_vt", RGB3)


def test_fixed_width_models_say_model_width_is_ignored():
    from absa.run.models import FIXED_WIDTH, count_params, width_note

    assert (
        width_note("c1") == "model.width is ignored by model.name c1 (its layer widths are fixed)"
    )
    for name in MODELS:
        widths = {count_params(build_model(name, DIGITS, w)) for w in (4, 8)}
        assert (len(widths) == 1) == (name in FIXED_WIDTH), name  # the list tells the truth
        assert bool(width_note(name)) == (name in FIXED_WIDTH)
    assert width_note("torchvision:resnet18") == ""
