"""absa.engine.optim: sgd/adamw/lars/lamb against hand-computed updates, exclusion, state round trip."""

import copy
import importlib.util
import io
import math

import pytest
import torch
from torch import nn

from absa.engine.optim import (
    LAMB,
    LARS,
    OptimError,
    build_optimizer,
    excluded_from_decay,
    param_groups,
)
from absa.run import config as C

HAS_TIMM = importlib.util.find_spec("timm") is not None
W0 = [[0.5, -1.0, 2.0], [0.25, 0.0, -0.75]]
B0 = [0.1, -0.2]
GRADS = [  # (dW, db) at steps 1, 2 and 3
    ([[0.2, 0.1, -0.3], [0.0, 0.4, 0.05]], [0.3, -0.1]),
    ([[-0.1, 0.25, 0.2], [0.3, -0.2, 0.1]], [-0.05, 0.2]),
    ([[0.05, -0.15, 0.1], [-0.2, 0.1, 0.3]], [0.1, 0.1]),
]
LRS = [0.5, 0.25, 0.4]  # the schedule changes lr between steps


def optim_cfg(*overrides: str) -> C.OptimConfig:
    return C.load(None, [f"optim.{o}" for o in overrides]).optim


def linear() -> nn.Linear:
    lin = nn.Linear(3, 2).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(W0, dtype=torch.float64))
        lin.bias.copy_(torch.tensor(B0, dtype=torch.float64))
    return lin


def run(model: nn.Linear, opt: torch.optim.Optimizer, steps: int) -> list[list[float]]:
    for k in range(steps):
        for group in opt.param_groups:  # as absa.engine.loop does every step
            group["lr"] = LRS[k]
        model.weight.grad = torch.tensor(GRADS[k][0], dtype=torch.float64)
        model.bias.grad = torch.tensor(GRADS[k][1], dtype=torch.float64)
        opt.step()
    return [model.weight.detach().flatten().tolist(), model.bias.detach().tolist()]


# plain-Python reference arithmetic (no torch), lists of floats


def flat(m):
    return [x for row in m for x in row] if isinstance(m[0], list) else list(m)


def norm(v):
    return math.sqrt(sum(x * x for x in v))


def axpy(a, x, y):  # a * x + y
    return [a * xi + yi for xi, yi in zip(x, y, strict=True)]


def scale(a, x):
    return [a * xi for xi in x]


def lars_reference(steps, wd, m, eta, eps, nesterov=False):
    w, b = flat(W0), list(B0)
    buf_w = buf_b = None
    for k in range(steps):
        gw, gb, lr = flat(GRADS[k][0]), list(GRADS[k][1]), LRS[k]
        trust = eta * norm(w) / (norm(gw) + wd * norm(w) + eps)
        dw = scale(trust, axpy(wd, w, gw))  # trust * (g + wd w)
        db = gb  # bias: excluded (no decay, no trust ratio)
        buf_w = dw if buf_w is None else axpy(m, buf_w, dw)
        buf_b = db if buf_b is None else axpy(m, buf_b, db)
        step_w = axpy(m, buf_w, dw) if nesterov else buf_w
        step_b = axpy(m, buf_b, db) if nesterov else buf_b
        w, b = axpy(-lr, step_w, w), axpy(-lr, step_b, b)
    return [w, b]


def adam_direction(g, state, t, b1, b2, eps):
    m, v = state
    m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g, strict=True)]
    v = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(v, g, strict=True)]
    mh = [mi / (1 - b1**t) for mi in m]
    vh = [vi / (1 - b2**t) for vi in v]
    return [a / (math.sqrt(c) + eps) for a, c in zip(mh, vh, strict=True)], (m, v)


def lamb_reference(steps, wd, b1, b2, eps):
    w, b = flat(W0), list(B0)
    sw, sb = ([0.0] * 6, [0.0] * 6), ([0.0] * 2, [0.0] * 2)
    for k in range(steps):
        t, lr = k + 1, LRS[k]
        dw, sw = adam_direction(flat(GRADS[k][0]), sw, t, b1, b2, eps)
        db, sb = adam_direction(list(GRADS[k][1]), sb, t, b1, b2, eps)
        rw = axpy(wd, w, dw)  # r = m_hat / (sqrt(v_hat) + eps) + wd w
        trust = norm(w) / norm(rw)
        w = axpy(-lr * trust, rw, w)
        b = axpy(-lr, db, b)  # bias: excluded (no decay, trust 1)
    return [w, b]


def adamw_reference(steps, wd, b1, b2, eps):
    """torch.optim.AdamW's documented algorithm: decoupled decay, then the Adam step."""
    w, b = flat(W0), list(B0)
    sw, sb = ([0.0] * 6, [0.0] * 6), ([0.0] * 2, [0.0] * 2)
    for k in range(steps):
        t, lr = k + 1, LRS[k]
        w = scale(1 - lr * wd, w)  # bias: excluded from decay
        dw, sw = adam_direction(flat(GRADS[k][0]), sw, t, b1, b2, eps)
        db, sb = adam_direction(list(GRADS[k][1]), sb, t, b1, b2, eps)
        w, b = axpy(-lr, dw, w), axpy(-lr, db, b)
    return [w, b]


def close(got, want, tol=1e-12):
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(w, rel=tol, abs=tol)


# --- SGD: today's optimizer, bit for bit --------------------------------------------------------


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)
    )


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.rand(8, 1, 6, 6, generator=g)
        y = torch.randint(0, 3, (8,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("momentum", [0.9, 0.0])
def test_default_sgd_is_the_old_optimizer_bit_for_bit(nesterov, momentum):
    o = optim_cfg(f"nesterov={str(nesterov).lower()}", f"momentum={momentum}")
    assert o.name == "sgd" and o.exclude_from_decay is None
    a = small_net()
    b = copy.deepcopy(a)
    new = build_optimizer(a, o)
    old = torch.optim.SGD(
        b.parameters(),
        lr=o.lr,
        momentum=o.momentum,
        weight_decay=o.weight_decay,
        nesterov=o.nesterov and o.momentum > 0,
    )
    assert type(new) is torch.optim.SGD and len(new.param_groups) == 1
    assert [id(p) for p in new.param_groups[0]["params"]] == [id(p) for p in a.parameters()]
    assert {k: v for k, v in new.param_groups[0].items() if k != "params"} == {
        k: v for k, v in old.param_groups[0].items() if k != "params"
    }
    train_steps(a, new, 3)
    train_steps(b, old, 3)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_full_config_and_optim_section_both_work():
    cfg = C.load(None, ["optim.name=adamw"])
    assert type(build_optimizer(nn.Linear(2, 2), cfg)) is torch.optim.AdamW
    assert type(build_optimizer(nn.Linear(2, 2), cfg.optim)) is torch.optim.AdamW


def test_sgd_with_exclusion_has_two_groups():
    net = small_net()
    opt = build_optimizer(net, optim_cfg("exclude_from_decay=true"))
    decayed, excluded = opt.param_groups
    assert decayed["weight_decay"] == 5e-4 and excluded["weight_decay"] == 0.0
    names = dict((id(p), n) for n, p in net.named_parameters())
    assert [names[id(p)] for p in decayed["params"]] == ["0.weight", "4.weight"]
    assert [names[id(p)] for p in excluded["params"]] == ["0.bias", "1.weight", "1.bias", "4.bias"]
    assert "adapt" not in decayed


# --- LARS, LAMB, AdamW against hand-computed updates ------------------------------------------


@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_matches_hand_computed_updates(nesterov):
    o = optim_cfg(
        "name=lars", "weight_decay=0.01", "momentum=0.9", f"nesterov={str(nesterov).lower()}"
    )
    assert isinstance(build_optimizer(linear(), o), LARS)
    for steps in (1, 2, 3):
        model = linear()
        opt = build_optimizer(model, o)
        want = lars_reference(steps, 0.01, 0.9, 0.001, 1e-8, nesterov)
        close(flat(run(model, opt, steps)), flat(want))


def test_lars_first_step_written_out():
    """The first update with the numbers spelled out: trust = eta ||w|| / (||g|| + wd ||w||)."""
    model = linear()
    opt = build_optimizer(model, optim_cfg("name=lars", "weight_decay=0.01", "eps=1e-12"))
    w_norm = math.sqrt(0.25 + 1 + 4 + 0.0625 + 0 + 0.5625)  # ||W0|| = sqrt(5.875)
    g_norm = math.sqrt(0.04 + 0.01 + 0.09 + 0 + 0.16 + 0.0025)  # sqrt(0.3025) = 0.55
    trust = 0.001 * w_norm / (g_norm + 0.01 * w_norm)
    got = run(model, opt, 1)
    assert got[0][0] == pytest.approx(0.5 - 0.5 * trust * (0.2 + 0.01 * 0.5), rel=1e-12)
    assert got[1] == pytest.approx([0.1 - 0.5 * 0.3, -0.2 - 0.5 * -0.1], rel=1e-12)


def test_lars_without_exclusion_adapts_and_decays_the_bias_too():
    model = linear()
    opt = build_optimizer(model, optim_cfg("name=lars", "exclude_from_decay=false"))
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["adapt"]
    gb, b = GRADS[0][1], B0
    trust = 0.001 * norm(b) / (norm(gb) + 5e-4 * norm(b) + 1e-8)
    close(run(model, opt, 1)[1], axpy(-0.5 * trust, axpy(5e-4, b, gb), b))


def test_lars_trust_ratio_is_one_for_zero_weights():
    model = linear()
    with torch.no_grad():
        model.weight.zero_()
    opt = build_optimizer(model, optim_cfg("name=lars", "weight_decay=0"))
    close(run(model, opt, 1)[0], scale(-0.5, flat(GRADS[0][0])))


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_lamb_matches_hand_computed_updates(steps):
    o = optim_cfg("name=lamb", "weight_decay=0.01", "betas=[0.9, 0.99]", "eps=1e-6")
    model = linear()
    opt = build_optimizer(model, o)
    assert isinstance(opt, LAMB)
    close(flat(run(model, opt, steps)), flat(lamb_reference(steps, 0.01, 0.9, 0.99, 1e-6)))


def test_lamb_first_step_written_out():
    """Step 1: m_hat = g, v_hat = g^2, so r = g / (|g| + eps) + wd w ~ sign(g) + wd w."""
    model = linear()
    opt = build_optimizer(model, optim_cfg("name=lamb", "weight_decay=0", "eps=1e-12"))
    got = run(model, opt, 1)
    signs = [1.0, 1.0, -1.0, 0.0, 1.0, 1.0]  # sign of dW (0 stays 0)
    trust = norm(flat(W0)) / math.sqrt(5.0)  # ||r|| = sqrt(5)
    close(got[0], axpy(-0.5 * trust, signs, flat(W0)), 1e-9)
    close(got[1], [0.1 - 0.5, -0.2 + 0.5], 1e-9)  # bias: plain Adam step, trust 1


@pytest.mark.parametrize("steps", [1, 3])
def test_adamw_matches_torch_formula(steps):
    o = optim_cfg("name=adamw", "weight_decay=0.05", "betas=[0.8, 0.95]", "eps=1e-7")
    model = linear()
    opt = build_optimizer(model, o)
    assert type(opt) is torch.optim.AdamW
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    close(flat(run(model, opt, steps)), flat(adamw_reference(steps, 0.05, 0.8, 0.95, 1e-7)), 1e-10)


def test_exclusion_defaults_and_names():
    net = small_net()
    for name in ("adamw", "lars", "lamb"):
        assert len(build_optimizer(net, optim_cfg(f"name={name}")).param_groups) == 2
    assert (
        len(build_optimizer(net, optim_cfg("name=lamb", "exclude_from_decay=false")).param_groups)
        == 1
    )

    class WithToken(nn.Module):
        def __init__(self):
            super().__init__()
            self.pos_embed = nn.Parameter(torch.zeros(1, 4, 2))
            self.proj = nn.Linear(2, 2)

        def no_weight_decay(self):
            return {"pos_embed"}

    outer = nn.Sequential(WithToken())
    assert excluded_from_decay(outer) == ["0.pos_embed", "0.proj.bias"]
    groups = param_groups(outer, 0.1, exclude=True)
    assert [g["adapt"] for g in groups] == [True, False]


# --- checkpoint resume: state round trip ------------------------------------------------------

VARIANTS = [("sgd",), ("sgd", "exclude_from_decay=true"), ("adamw",), ("lars",), ("lamb",)]
if HAS_TIMM:
    VARIANTS += [("lars", "impl=timm"), ("lamb", "impl=timm")]


@pytest.mark.parametrize("variant", VARIANTS, ids=["-".join(v) for v in VARIANTS])
def test_state_round_trip_resumes_exactly(variant):
    o = optim_cfg(f"name={variant[0]}", *variant[1:])
    a = small_net()
    opt_a = build_optimizer(a, o)
    train_steps(a, opt_a, 2)
    buf = io.BytesIO()
    torch.save({"model": a.state_dict(), "optimizer": opt_a.state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)  # as absa.run.checkpoint loads
    b = small_net()
    b.load_state_dict(ck["model"])
    opt_b = build_optimizer(b, o)
    opt_b.load_state_dict(ck["optimizer"])
    train_steps(a, opt_a, 2, seed=5)
    train_steps(b, opt_b, 2, seed=5)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


# --- timm ---------------------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_TIMM, reason="timm is not installed")
@pytest.mark.parametrize("name", ["lars", "lamb"])
@pytest.mark.parametrize("exclude", ["true", "false"])
def test_timm_implementation_agrees_with_ours(name, exclude):
    overrides = [f"name={name}", "weight_decay=0.01", f"exclude_from_decay={exclude}"]
    ours_model, timm_model = linear(), linear()
    ours = build_optimizer(ours_model, optim_cfg(*overrides))
    theirs = build_optimizer(timm_model, optim_cfg(*overrides, "impl=timm"))
    assert type(theirs).__module__.startswith("timm.")
    close(flat(run(ours_model, ours, 3)), flat(run(timm_model, theirs, 3)), 1e-10)


def test_timm_impl_without_timm_is_one_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "timm" else real(n, *a)
    )
    with pytest.raises(OptimError, match=r"^optim.impl: timm is not installed; pip install"):
        build_optimizer(linear(), optim_cfg("name=lamb", "impl=timm"))


def test_config_fields_are_validated():
    o = optim_cfg()
    assert (o.name, o.betas, o.eps, o.trust_coefficient, o.exclude_from_decay, o.impl) == (
        "sgd",
        (0.9, 0.999),
        1e-8,
        0.001,
        None,
        "absa",
    )
    for bad, msg in [
        ("name=adam", "optim.name"),
        ("betas=[0.9, 1.0]", "optim.betas.1"),
        ("betas=[0.9]", "optim.betas"),
        ("eps=0", "optim.eps"),
        ("trust_coefficient=0", "optim.trust_coefficient"),
        ("impl=apex", "optim.impl"),
    ]:
        with pytest.raises(C.ConfigError, match=msg):
            optim_cfg(bad)


# --- the foreach steps equal the per-tensor loops they replaced -------------------------------


class _LoopLARS(LARS):
    """LARS.step as a loop over tensors (absa before issue 25)."""

    @torch.no_grad()
    def step(self, closure=None):
        from absa.engine.optim import _trust

        for group in self.param_groups:
            lr, m, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                d = g.add(p, alpha=wd) if wd != 0 else g.clone()
                if group["adapt"]:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    ratio = (
                        group["trust_coefficient"] * w_norm / (g_norm + wd * w_norm + group["eps"])
                    )
                    d.mul_(_trust(ratio, w_norm, g_norm))
                if m != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = d.clone()
                    else:
                        buf.mul_(m).add_(d)
                    d = d.add(buf, alpha=m) if group["nesterov"] else buf
                p.add_(d, alpha=-lr)


class _LoopLAMB(LAMB):
    """LAMB.step as a loop over tensors (absa before issue 25)."""

    @torch.no_grad()
    def step(self, closure=None):
        from absa.engine.optim import _trust

        for group in self.param_groups:
            b1, b2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = float(state["step"])
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                r = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt_().add_(eps))
                if wd != 0:
                    r.add_(p, alpha=wd)
                if group["adapt"]:
                    w_norm, r_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(r)
                    r.mul_(_trust(w_norm / r_norm, w_norm, r_norm))
                p.add_(r, alpha=-lr)


def _trained(cls, kind, **kw):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    with torch.no_grad():
        net[0].bias.zero_()  # a zero tensor: trust ratio 1
    net[2].bias.requires_grad_(False)  # a tensor without .grad
    groups = param_groups(net, kw.pop("weight_decay"), exclude=True)
    opt = cls(groups, **kw)
    gen = torch.Generator().manual_seed(1)
    for step in range(6):
        x, y = torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen)
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        for group in opt.param_groups:
            group["lr"] = 0.1 / (1 + step)  # a changing lr, as the trainer sets it
        opt.step()
    return [p.detach().clone() for p in net.parameters()], opt


@pytest.mark.parametrize(
    "kind, kw",
    [
        ("lars", dict(lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=False)),
        ("lars", dict(lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)),
        ("lars", dict(lr=0.1, momentum=0.0, weight_decay=0.0)),
        ("lamb", dict(lr=0.01, weight_decay=0.01)),
        ("lamb", dict(lr=0.01, weight_decay=0.0)),
    ],
)
def test_foreach_steps_equal_the_per_tensor_loops_bit_for_bit(kind, kw):
    new, loop = (LARS, _LoopLARS) if kind == "lars" else (LAMB, _LoopLAMB)
    a, oa = _trained(new, kind, **dict(kw))
    b, ob = _trained(loop, kind, **dict(kw))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    sa, sb = oa.state_dict()["state"], ob.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert all(torch.equal(sa[k][n], sb[k][n]) for n in sa[k])
