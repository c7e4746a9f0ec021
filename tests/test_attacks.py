import pytest
import torch
import torch.nn.functional as F
from torch import nn

from absa.core.attacks import METHODS, fast_fgsm, fgsm, make_adversarial, pgd
from absa.run.models import model_mode

ALL = sorted(METHODS)


def _seeded_gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _attack(method: str, model: nn.Module, x, y, eps: float, seed: int = 0):
    kw = {} if method == "fgsm" else {"generator": _seeded_gen(seed)}
    return make_adversarial(model, x, y, method, eps, **kw)


def _small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 10),
    )


def _image_batch(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [0,1] with some pixels exactly 0 and exactly 1."""
    g = _seeded_gen(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    x[:, :, :2] = 0.0
    x[:, :, -2:] = 1.0
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y


# --- closed form --------------------------------------------------------------------------


def test_fgsm_matches_closed_form_on_linear_model():
    torch.manual_seed(0)
    d, k, n = 20, 5, 32
    lin = nn.Linear(d, k).double()
    model = nn.Sequential(nn.Flatten(), lin)
    x = 0.3 + 0.4 * torch.rand(n, 4, 5, dtype=torch.float64)  # away from the borders
    y = torch.randint(0, k, (n,))
    eps = 0.05

    with torch.no_grad():
        xf = x.reshape(n, d)
        p = torch.softmax(xf @ lin.weight.T + lin.bias, dim=1)
        grad = (p - F.one_hot(y, k).double()) @ lin.weight  # rows: W^T (p - e_y)
    assert grad.abs().min() > 1e-8  # every sign is well defined
    expected = (xf + eps * grad.sign()).reshape_as(x)

    x_adv = fgsm(model, x, y, eps)
    assert x_adv.dtype == torch.float64
    torch.testing.assert_close(x_adv, expected, atol=1e-7, rtol=0)
    assert torch.allclose(x_adv, expected, atol=1e-7, rtol=0)
    assert torch.allclose((x_adv - x).abs(), torch.full_like(x, eps), atol=1e-12, rtol=0)


def test_pgd_one_step_without_random_start_is_fgsm():
    model = _small_cnn().eval()
    x, y = _image_batch()
    eps = 0.03
    a = pgd(model, x, y, eps, steps=1, step_size=eps, random_start=False)
    assert torch.equal(a, fgsm(model, x, y, eps))


def test_random_start_is_uniform_in_eps_ball():
    model = _small_cnn().eval()
    x = torch.full((64, 1, 8, 8), 0.5)
    y = torch.zeros(64, dtype=torch.long)
    eps = 0.1
    for start in (
        fast_fgsm(model, x, y, eps, step_size=0.0, generator=_seeded_gen()),
        pgd(model, x, y, eps, steps=1, step_size=0.0, generator=_seeded_gen()),
    ):
        delta = start - x
        assert delta.min().item() < -0.95 * eps and delta.max().item() > 0.95 * eps
        assert abs(delta.mean().item()) < 0.1 * eps
        assert delta.abs().max().item() <= eps + 1e-6


def test_default_step_sizes():
    model = _small_cnn().eval()
    x, y = _image_batch()
    eps = 0.08
    assert torch.equal(
        pgd(model, x, y, eps, steps=4, random_start=False),
        pgd(model, x, y, eps, steps=4, step_size=2.5 * eps / 4, random_start=False),
    )
    assert torch.equal(
        fast_fgsm(model, x, y, eps, generator=_seeded_gen()),
        fast_fgsm(model, x, y, eps, step_size=1.25 * eps, generator=_seeded_gen()),
    )


# --- constraints --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("eps", [0.01, 0.1, 0.5])
def test_attacks_stay_in_eps_ball_and_pixel_box(method, eps):
    model = _small_cnn().eval()
    x, y = _image_batch()
    x_adv = _attack(method, model, x, y, eps)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert not x_adv.requires_grad
    assert (x_adv - x).abs().max().item() <= eps + 1e-6
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    assert not torch.equal(x_adv, x)  # the attack actually moved something


@pytest.mark.parametrize("method", ALL)
def test_eps_zero_returns_copy_of_x(method):
    model = _small_cnn().eval()
    x, y = _image_batch()
    x.requires_grad_(True)
    x_adv = _attack(method, model, x, y, 0.0)
    assert torch.equal(x_adv, x.detach())
    assert x_adv is not x and x_adv.data_ptr() != x.data_ptr()
    assert not x_adv.requires_grad


@pytest.mark.parametrize("method", ALL)
def test_negative_eps_rejected(method):
    model = _small_cnn().eval()
    x, y = _image_batch(2)
    with pytest.raises(ValueError, match="eps"):
        _attack(method, model, x, y, -0.1)


def test_pgd_rejects_zero_steps():
    model = _small_cnn().eval()
    x, y = _image_batch(2)
    with pytest.raises(ValueError, match="steps"):
        pgd(model, x, y, 0.1, steps=0)


# --- side effects -------------------------------------------------------------------------


@pytest.mark.parametrize("method", ALL)
def test_parameter_grads_untouched(method):
    model = _small_cnn().eval()
    x, y = _image_batch()
    params = list(model.parameters())
    known = {}
    for i, p in enumerate(params):
        if i % 2 == 0:
            p.grad = torch.full_like(p, 0.25 + i)
            known[i] = p.grad.clone()
        else:
            p.grad = None
    _attack(method, model, x, y, 0.05)
    for i, p in enumerate(params):
        if i in known:
            assert torch.equal(p.grad, known[i])
        else:
            assert p.grad is None


@pytest.mark.parametrize("method", ALL)
def test_input_not_modified_and_output_detached(method):
    model = _small_cnn().eval()
    x, y = _image_batch()
    x.requires_grad_(True)
    before = x.detach().clone()
    x_adv = _attack(method, model, x, y, 0.1)
    assert torch.equal(x.detach(), before)
    assert x.grad is None
    assert not x_adv.requires_grad and x_adv.grad_fn is None


@pytest.mark.parametrize("method", ALL)
def test_attacks_work_under_no_grad(method):
    model = _small_cnn().eval()
    x, y = _image_batch()
    expected = _attack(method, model, x, y, 0.05)
    with torch.no_grad():
        got = _attack(method, model, x, y, 0.05)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("train", [False, True])
def test_attacks_do_not_change_model_mode(method, train):
    model = _small_cnn()
    model.train(train)
    model[1].train(not train)  # a mixed-mode model
    modes = [m.training for m in model.modules()]
    x, y = _image_batch()
    _attack(method, model, x, y, 0.05)
    assert [m.training for m in model.modules()] == modes


# --- model_mode ---------------------------------------------------------------------------


def test_model_mode_sets_and_restores_submodule_modes():
    model = _small_cnn().train()
    model[1].eval()  # frozen BatchNorm inside a training model
    modes = [m.training for m in model.modules()]
    with model_mode(model, train=False) as m:
        assert m is model
        assert not any(mod.training for mod in model.modules())
        with model_mode(model, train=True):
            assert all(mod.training for mod in model.modules())
        assert not any(mod.training for mod in model.modules())
    assert [m.training for m in model.modules()] == modes
    assert model[1].training is False and model.training is True


def test_model_mode_restores_on_exception():
    model = _small_cnn().eval()
    model[3].train()
    modes = [m.training for m in model.modules()]
    with pytest.raises(RuntimeError, match="boom"), model_mode(model, train=True):
        assert all(mod.training for mod in model.modules())
        raise RuntimeError("boom")
    assert [m.training for m in model.modules()] == modes


# --- strength on a trained network --------------------------------------------------------


@pytest.fixture(scope="module")
def digits_net():
    from sklearn.datasets import load_digits

    torch.set_num_threads(2)
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    net.eval()
    for p in net.parameters():
        p.grad = None
    return net, x, y


def _loss_acc(net, x, y):
    with torch.no_grad():
        out = net(x)
        return F.cross_entropy(out, y).item(), (out.argmax(1) == y).float().mean().item()


def test_attack_strength_ordering_on_trained_net(digits_net):
    net, x, y = digits_net
    clean_loss, clean_acc = _loss_acc(net, x, y)
    assert clean_acc > 0.98  # the net fits the data well

    eps = 0.05
    fgsm_loss, fgsm_acc = _loss_acc(net, fgsm(net, x, y, eps), y)
    pgd_loss, pgd_acc = _loss_acc(net, pgd(net, x, y, eps, generator=_seeded_gen()), y)
    fast_loss, _ = _loss_acc(net, fast_fgsm(net, x, y, eps, generator=_seeded_gen()), y)

    assert fgsm_loss > clean_loss + 1e-3
    assert fast_loss > clean_loss + 1e-3
    assert pgd_loss >= fgsm_loss - 1e-6
    assert pgd_acc < clean_acc
    assert fgsm_acc < clean_acc

    # a larger budget is a stronger attack
    pgd_loss_big, _ = _loss_acc(net, pgd(net, x, y, 2 * eps, generator=_seeded_gen()), y)
    assert pgd_loss_big > pgd_loss


# --- reproducibility and dispatch ---------------------------------------------------------


@pytest.mark.parametrize("method", ["pgd", "fast_fgsm"])
def test_random_start_reproducible_with_generator(method):
    model = _small_cnn().eval()
    x, y = _image_batch()
    a = _attack(method, model, x, y, 0.1, seed=3)
    b = _attack(method, model, x, y, 0.1, seed=3)
    c = _attack(method, model, x, y, 0.1, seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_make_adversarial_dispatch():
    model = _small_cnn().eval()
    x, y = _image_batch()
    eps = 0.05
    assert torch.equal(
        make_adversarial(model, x, y, "fgsm", eps, generator=_seeded_gen()), fgsm(model, x, y, eps)
    )
    assert torch.equal(
        make_adversarial(model, x, y, "pgd", eps, steps=3, step_size=0.02, generator=_seeded_gen()),
        pgd(model, x, y, eps, steps=3, step_size=0.02, generator=_seeded_gen()),
    )
    assert torch.equal(
        make_adversarial(model, x, y, "fast_fgsm", eps, step_size=0.04, generator=_seeded_gen()),
        fast_fgsm(model, x, y, eps, step_size=0.04, generator=_seeded_gen()),
    )
    # keywords a method does not take are ignored when None, rejected otherwise
    assert torch.equal(
        make_adversarial(model, x, y, "fgsm", eps, steps=None, step_size=None),
        fgsm(model, x, y, eps),
    )
    with pytest.raises(TypeError, match="steps"):
        make_adversarial(model, x, y, "fgsm", eps, steps=5)


def test_make_adversarial_unknown_method():
    model = _small_cnn().eval()
    x, y = _image_batch(2)
    with pytest.raises(ValueError, match="bim") as info:
        make_adversarial(model, x, y, "bim", 0.1)
    for name in ("fgsm", "pgd", "fast_fgsm"):
        assert name in str(info.value)
