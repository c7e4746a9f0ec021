"""absa.core.hessian checked against an independent dense Hessian.

The reference Hessian is built here with ``torch.func.hessian`` of the mean cross-entropy as a
function of the flattened block parameters (``torch.func.functional_call``), and its spectrum
with ``torch.linalg.eigh``; nothing in the reference path goes through absa.core.hessian. Models
and data are float64 so HVPs can be compared to ~1e-10.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from absa.core import hessian as H
from absa.run.config import DataConfig
from absa.run.data import load_data
from absa.run.models import build_model

F64 = torch.float64


# --- independent reference ----------------------------------------------------------------


def dense_hessian(model: nn.Module, names: list[str], x: Tensor, y: Tensor) -> Tensor:
    """Hessian of mean CE over (x, y) w.r.t. the named parameters, flattened in that order."""
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]
    flat0 = torch.cat([params[n].detach().reshape(-1) for n in names])

    def mean_loss(flat: Tensor) -> Tensor:
        chunks = {n: c.view(s) for n, c, s in zip(names, flat.split(sizes), shapes, strict=True)}
        return F.cross_entropy(functional_call(model, chunks, (x,)), y)

    hess = torch.func.hessian(mean_loss)(flat0).detach()
    return 0.5 * (hess + hess.T)


def names_of(model: nn.Module, block: str) -> list[str]:
    return [n for n, _ in H.select_params(model, block)]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def abs_cos(a: Tensor, b: Tensor) -> float:
    a, b = a.to(F64), b.to(F64)
    return float((a @ b).abs() / (a.norm() * b.norm()))


def rand_vec(dim: int, seed: int) -> Tensor:
    return torch.randn(dim, generator=gen(seed), dtype=F64)


def train(model: nn.Module, x: Tensor, y: Tensor, steps: int, lr: float = 0.03) -> None:
    """A short full-batch Adam run: near a minimum the top eigenvalues are positive outliers."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()


# --- models and data ----------------------------------------------------------------------


class TanhHeadNet(nn.Module):
    """Same convention as absa.run.models (``features`` + ``classifier``), non-Linear head."""

    def __init__(self, d_in: int, classes: int) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(d_in, 6), nn.Tanh())
        self.classifier = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, classes))

    def features(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class NoBiasHeadNet(nn.Module):
    def __init__(self, d_in: int, classes: int) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(d_in, 6), nn.Tanh())
        self.classifier = nn.Linear(6, classes, bias=False)

    def features(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


@dataclass
class Case:
    model: nn.Module
    x: Tensor
    y: Tensor
    names: list[str]  # the "full" block
    hess: Tensor  # dense full-block Hessian on (x, y)
    evals: Tensor  # ascending
    evecs: Tensor

    def op(self, block: str = "full", **kw) -> H.HessianOperator:
        return H.HessianOperator(
            self.model, H.select_params(self.model, block), (self.x, self.y), **kw
        )


def make_case(model: nn.Module, x: Tensor, y: Tensor) -> Case:
    names = [n for n, _ in model.named_parameters()]
    hess = dense_hessian(model, names, x, y)
    evals, evecs = torch.linalg.eigh(hess)
    return Case(model, x, y, names, hess, evals, evecs)


@pytest.fixture(scope="module")
def digits():
    torch.set_num_threads(2)
    data = load_data(DataConfig(name="digits", image_size=8))
    x, y = data.train.get(torch.arange(256))
    return data, x.to(F64), y


@pytest.fixture(scope="module")
def mlp_case(digits):
    data, x, y = digits
    torch.manual_seed(0)
    model = build_model("mlp", data.info, 1).double()  # 330 parameters
    train(model, x, y, 150)
    return make_case(model, x[:96], y[:96])


@pytest.fixture(scope="module")
def cnn_case(digits):
    data, x, y = digits
    torch.manual_seed(2)
    model = build_model("small_cnn", data.info, 2).double()  # 496 parameters, 3 BatchNorms
    train(model, x, y, 60)
    model.train()
    with torch.no_grad():  # a few more train-mode passes: running stats from other samples
        for i in range(3):
            model(data.train.get(torch.arange(300 + 100 * i, 400 + 100 * i))[0].to(F64))
    model.eval()
    return make_case(model, x[:96], y[:96])


@pytest.fixture(scope="module")
def tanh_head(digits):
    data, x, y = digits
    torch.manual_seed(1)
    model = TanhHeadNet(64, data.info.num_classes).double()
    train(model, x, y, 100)
    return model, x[:96], y[:96]


@pytest.fixture(scope="module")
def nobias_head(digits):
    data, x, y = digits
    torch.manual_seed(3)
    model = NoBiasHeadNet(64, data.info.num_classes).double()
    train(model, x, y, 100)
    return model, x[:96], y[:96]


def bn_state(model: nn.Module) -> dict[str, Tensor]:
    return {n: b.clone() for n, b in model.named_buffers()}


# --- 1. top-k eigenpairs against the dense spectrum ---------------------------------------


def test_cnn_fixture_has_nontrivial_eval_batchnorm(cnn_case):
    bns = [m for m in cnn_case.model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 3 and not any(m.training for m in bns)
    for bn in bns:
        assert bn.running_mean.abs().max() > 1e-3
        assert (bn.running_var - 1).abs().max() > 1e-3


@pytest.mark.parametrize("which", ["mlp", "cnn"])
@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_top3_match_dense(which, method, request):
    case: Case = request.getfixturevalue(f"{which}_case")
    top = case.evals.flip(0)[:3]
    # the setups are chosen so the top-3 are well separated and dominate |lambda_min|
    assert (top[:-1] / top[1:] > 1.2).all() and top[-1] > 5 * case.evals[0].abs()
    buffers = bn_state(case.model)
    op = case.op()
    assert op.dim == case.hess.shape[0] and op.n_samples == 96
    if method == "lanczos":
        res = H.top_eigen(op, 3, "lanczos", max_iter=80, rtol=1e-8, generator=gen(0))
    else:
        res = H.top_eigen(op, 3, "power", max_iter=500, rtol=1e-10, generator=gen(0))
    assert res.converged
    assert len(res.values) == 3 and len(res.vectors) == 3
    torch.testing.assert_close(torch.tensor(res.values, dtype=F64), top, rtol=1e-3, atol=0)
    assert res.values == sorted(res.values, reverse=True)
    for j in range(3):
        assert abs_cos(res.vectors[j], case.evecs[:, -1 - j]) > 0.99
        assert abs(float(res.vectors[j].norm()) - 1) < 1e-8
    assert res.n_hvp == op.n_hvp
    # pure math: no mode switching, running stats untouched
    assert not case.model.training
    for name, buf in bn_state(case.model).items():
        assert torch.equal(buf, buffers[name])


# --- 2. HVPs equal dense H @ v ------------------------------------------------------------


@pytest.mark.parametrize(
    ("which", "block", "expected"),
    [
        ("mlp", "full", None),
        ("mlp", "last", ["classifier.weight", "classifier.bias"]),
        ("mlp", "backbone.3.*", ["backbone.3.weight", "backbone.3.bias"]),
        (
            "mlp",
            "classifier.bias, backbone.1",
            ["backbone.1.weight", "backbone.1.bias", "classifier.bias"],
        ),
        ("cnn", "full", None),
        ("cnn", "last", ["classifier.weight", "classifier.bias"]),
        ("cnn", "backbone.4.*", ["backbone.4.weight", "backbone.4.bias"]),
        ("cnn", "backbone.[03].weight", ["backbone.0.weight", "backbone.3.weight"]),
    ],
)
def test_hvp_matches_dense(which, block, expected, request):
    case: Case = request.getfixturevalue(f"{which}_case")
    names = names_of(case.model, block)
    assert names == (case.names if expected is None else expected)
    hess = case.hess if block == "full" else dense_hessian(case.model, names, case.x, case.y)
    op = case.op(block)
    assert op.dim == hess.shape[0]
    for seed in range(3):
        v = rand_vec(op.dim, seed)
        torch.testing.assert_close(op.matvec(v), hess @ v, rtol=0, atol=1e-10)
    assert op.n_hvp == 3
    # the block Hessian is the matching sub-block of the full one
    if block != "full":
        idx, offset = [], 0
        sizes = dict((n, p.numel()) for n, p in case.model.named_parameters())
        for n in case.names:
            if n in names:
                idx.extend(range(offset, offset + sizes[n]))
            offset += sizes[n]
        idx_t = torch.tensor(idx)
        torch.testing.assert_close(hess, case.hess[idx_t][:, idx_t], rtol=0, atol=1e-10)


def test_loss_and_grad_match_autograd(mlp_case):
    model, x, y = mlp_case.model, mlp_case.x, mlp_case.y
    op = H.HessianOperator(
        model, H.select_params(model, "full"), [(x[:30], y[:30]), (x[30:], y[30:])]
    )
    loss, grad = op.loss_and_grad()
    ref_loss = F.cross_entropy(model(x), y)
    ref_grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(ref_loss, model.parameters())])
    assert loss == pytest.approx(ref_loss.detach().item(), rel=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-12)


# --- 3. Hutchinson trace ------------------------------------------------------------------


def test_hutchinson_trace_matches_dense(mlp_case):
    hess = mlp_case.hess
    true = float(hess.trace())
    n = 2000
    res = H.trace_hutchinson(mlp_case.op(), n, gen(5))
    assert res.n_hvp == n
    assert res.trace == pytest.approx(true, rel=0.05)
    # Rademacher: Var(v^T H v) = 2 (||H||_F^2 - sum_i H_ii^2)
    sd = math.sqrt(2 * (float((hess**2).sum()) - float((hess.diagonal() ** 2).sum())) / n)
    assert 0.8 * sd < res.std_err < 1.25 * sd
    assert abs(res.trace - true) < 4 * sd


def test_hutchinson_early_stop(mlp_case):
    op = H.last_layer_operator(mlp_case.model, (mlp_case.x, mlp_case.y))
    true = float(
        dense_hessian(
            mlp_case.model, names_of(mlp_case.model, "last"), mlp_case.x, mlp_case.y
        ).trace()
    )
    res = H.trace_hutchinson(op, 5000, gen(1), rtol=0.02)
    assert 10 <= res.n_hvp < 5000
    assert res.std_err <= 0.02 * abs(res.trace)
    assert abs(res.trace - true) < 5 * res.std_err


# --- 4. SLQ density -----------------------------------------------------------------------


class FirstVectors:
    """Operator wrapper recording every vector it is applied to (sees the Lanczos starts)."""

    def __init__(self, op) -> None:
        self.op, self.seen = op, []
        self.dim, self.dtype, self.device = op.dim, op.dtype, op.device

    @property
    def n_hvp(self) -> int:
        return self.op.n_hvp

    def matvec(self, v: Tensor) -> Tensor:
        self.seen.append(v.clone())
        return self.op.matvec(v)

    __call__ = matvec


def test_slq_density_on_network(mlp_case):
    n_iter, n_runs = 40, 6
    op = FirstVectors(mlp_case.op())
    dens = H.density_slq(op, n_iter, n_runs, gen(4))
    assert dens.n_hvp == n_iter * n_runs == len(op.seen)
    assert len(dens.nodes) == len(dens.weights) == n_runs
    lo, hi = float(mlp_case.evals[0]), float(mlp_case.evals[-1])
    for nodes, weights in zip(dens.nodes, dens.weights, strict=True):
        assert len(nodes) == len(weights) == n_iter
        assert sum(weights) == pytest.approx(1.0, abs=1e-10)
        assert min(weights) >= 0
        # Ritz values lie inside the spectrum, and the outlier is found in 40 steps
        assert lo - 1e-8 <= min(nodes) and max(nodes) <= hi + 1e-8
        assert max(nodes) == pytest.approx(hi, rel=1e-6)
    # each run's quadrature mean is v^T H v for its unit start vector
    starts = op.seen[::n_iter]
    quad = [float(v @ mlp_case.hess @ v) for v in starts]
    assert all(abs(float(v.norm()) - 1) < 1e-12 for v in starts)
    assert dens.mean() == pytest.approx(sum(quad) / n_runs, rel=1e-9)
    # the broadened density integrates to 1 on a grid covering the nodes with margin
    for sigma in (0.05, 1.0):
        grid = torch.linspace(lo - 10 * sigma, hi + 10 * sigma, 40001, dtype=F64)
        phi = H.density_on_grid(dens, grid, sigma)
        assert phi.shape == grid.shape and (phi >= 0).all()
        assert float(torch.trapezoid(phi, grid)) == pytest.approx(1.0, abs=1e-3)


def test_slq_mean_estimates_trace_over_n():
    """Flat known spectrum (so a few runs suffice statistically): mean ~ tr(H) / n."""
    d = 200
    lam = torch.linspace(1.0, 3.0, d, dtype=F64)
    model, batch, loss_fn, _ = quadratic(lam, seed=11)
    op = H.HessianOperator(model, list(model.parameters()), batch, loss_fn=loss_fn)
    dens = H.density_slq(op, 20, 16, gen(2))
    assert dens.mean() == pytest.approx(float(lam.mean()), rel=0.04)
    for weights in dens.weights:
        assert sum(weights) == pytest.approx(1.0, abs=1e-10)
    grid = torch.linspace(0.0, 4.0, 8001, dtype=F64)
    phi = H.density_on_grid(dens, grid, 0.1)
    assert float(torch.trapezoid(phi, grid)) == pytest.approx(1.0, abs=1e-3)


# --- 5. power and Lanczos agree -----------------------------------------------------------


@pytest.mark.parametrize(
    ("which", "block"), [("cnn", "full"), ("mlp", "last"), ("cnn", "backbone.6.*")]
)
def test_power_and_lanczos_agree(which, block, request):
    case: Case = request.getfixturevalue(f"{which}_case")
    op = case.op(block)
    p = H.top_eigen(op, 1, "power", max_iter=300, rtol=1e-9, generator=gen(8))
    q = H.top_eigen(op, 1, "lanczos", max_iter=60, rtol=1e-8, generator=gen(9))
    assert p.converged and q.converged
    assert p.values[0] == pytest.approx(q.values[0], rel=1e-5)
    assert abs_cos(p.vectors[0], q.vectors[0]) > 0.99


# --- 6. last-layer fast path --------------------------------------------------------------


@pytest.mark.parametrize("which", ["mlp", "cnn", "tanh_head", "nobias_head"])
def test_last_layer_operator_equals_generic(which, request):
    fix = request.getfixturevalue(which if "head" in which else f"{which}_case")
    model, x, y = (fix.model, fix.x, fix.y) if isinstance(fix, Case) else fix
    batches = [(x[:40], y[:40]), (x[40:], y[40:])]
    fast = H.last_layer_operator(model, batches)
    slow = H.HessianOperator(model, H.select_params(model, "last"), batches)
    closed_form = isinstance(model.classifier, nn.Linear)
    assert isinstance(fast, H.LinearSoftmaxHessian if closed_form else H.HessianOperator)
    assert fast.dim == slow.dim and fast.n_samples == slow.n_samples == 96
    hess = dense_hessian(model, names_of(model, "last"), x, y)
    for seed in range(3):
        v = rand_vec(fast.dim, seed)
        hv = fast.matvec(v)
        torch.testing.assert_close(hv, slow.matvec(v), rtol=0, atol=1e-10)
        torch.testing.assert_close(hv, hess @ v, rtol=0, atol=1e-10)
    a = H.top_eigen(fast, 1, "lanczos", max_iter=fast.dim, rtol=1e-10, generator=gen(3))
    b = H.top_eigen(slow, 1, "lanczos", max_iter=slow.dim, rtol=1e-10, generator=gen(3))
    top = float(torch.linalg.eigvalsh(hess)[-1])
    assert a.values[0] == pytest.approx(b.values[0], rel=1e-8)
    assert a.values[0] == pytest.approx(top, rel=1e-8)


# --- 7. several batches == their concatenation --------------------------------------------


@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_batches_of_unequal_size_equal_concatenation(which, request):
    case: Case = request.getfixturevalue(f"{which}_case")
    cuts = [0, 5, 22, 52, 96]
    batches = [(case.x[a:b], case.y[a:b]) for a, b in zip(cuts, cuts[1:], strict=False)]
    for block in ("full", "last"):
        params = H.select_params(case.model, block)
        split = H.HessianOperator(case.model, params, batches)
        whole = H.HessianOperator(case.model, params, (case.x, case.y))
        assert split.n_samples == whole.n_samples == 96
        for seed in range(2):
            v = rand_vec(split.dim, seed)
            torch.testing.assert_close(split.matvec(v), whole.matvec(v), rtol=0, atol=1e-10)
        la, ga = split.loss_and_grad()
        lb, gb = whole.loss_and_grad()
        assert la == pytest.approx(lb, rel=1e-12)
        torch.testing.assert_close(ga, gb, rtol=0, atol=1e-12)
    fast_split = H.last_layer_operator(case.model, batches)
    fast_whole = H.last_layer_operator(case.model, (case.x, case.y))
    v = rand_vec(fast_split.dim, 7)
    torch.testing.assert_close(fast_split.matvec(v), fast_whole.matvec(v), rtol=0, atol=1e-10)


# --- 8. a quadratic with a known spectrum -------------------------------------------------


class Theta(nn.Module):
    """model(x) = sqrt(x_i) * theta per sample, so sum_i 0.5 out_i^T A out_i = 0.5 (sum x) q(theta)."""

    def __init__(self, d: int, seed: int) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.randn(d, generator=gen(seed), dtype=F64))

    def forward(self, x: Tensor) -> Tensor:
        return x.sqrt()[:, None] * self.theta


def quadratic(lam: Tensor, seed: int):
    """theta -> 0.5 theta^T A theta with A = Q diag(lam) Q^T; per-sample weights average to 1."""
    d = len(lam)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen(seed), dtype=F64))
    a = q @ torch.diag(lam) @ q.T

    def loss_fn(out: Tensor, _y: Tensor) -> Tensor:  # summed over the batch
        return 0.5 * torch.einsum("ni,ij,nj->", out, a, out)

    w = torch.tensor([0.25, 1.75, 1.0, 0.5, 1.5, 1.0], dtype=F64)  # mean 1
    y = torch.zeros(len(w), dtype=torch.long)
    batches = [(w[:2], y[:2]), (w[2:], y[2:])]
    return Theta(d, seed + 1), batches, loss_fn, q


LAM = torch.tensor([9.0, 6.0, 4.0, 2.5, 1.5, 1.0, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05], dtype=F64)


def test_quadratic_operator_is_a():
    model, batches, loss_fn, q = quadratic(LAM, 0)
    op = H.HessianOperator(model, list(model.parameters()), batches, loss_fn=loss_fn)
    assert op.n_samples == 6
    dense = torch.stack([op.matvec(e) for e in torch.eye(len(LAM), dtype=F64)], dim=1)
    torch.testing.assert_close(dense, q @ torch.diag(LAM) @ q.T, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ["power", "lanczos"])
def test_quadratic_top_k_recovered(method):
    model, batches, loss_fn, q = quadratic(LAM, 0)
    op = H.HessianOperator(model, list(model.parameters()), batches, loss_fn=loss_fn)
    res = H.top_eigen(op, 4, method, max_iter=300, rtol=1e-12, generator=gen(1))
    assert res.converged
    torch.testing.assert_close(torch.tensor(res.values, dtype=F64), LAM[:4], rtol=1e-8, atol=0)
    for j in range(4):
        assert abs_cos(res.vectors[j], q[:, j]) > 0.999
    if method == "power":
        assert len(res.iterations) == 4 and sum(res.iterations) == res.n_hvp
    else:
        assert res.iterations == [res.n_hvp] and res.n_hvp <= len(LAM)


@pytest.mark.parametrize(("method", "max_hvp"), [("power", 3), ("lanczos", 2)])
def test_quadratic_warm_start_converges_at_once(method, max_hvp):
    model, batches, loss_fn, q = quadratic(LAM, 0)
    op = H.HessianOperator(model, list(model.parameters()), batches, loss_fn=loss_fn)
    cold = H.top_eigen(op, 1, method, max_iter=300, rtol=1e-10, generator=gen(2))
    warm = H.top_eigen(op, 1, method, max_iter=300, rtol=1e-10, init=-3.0 * q[:, 0])
    assert warm.converged and warm.n_hvp <= max_hvp < cold.n_hvp
    assert warm.values[0] == pytest.approx(9.0, rel=1e-10)
    assert abs_cos(warm.vectors[0], q[:, 0]) > 1 - 1e-10


def test_quadratic_power_is_magnitude_lanczos_is_algebraic():
    lam = torch.tensor([4.0, 2.0, 1.0, 0.5, -0.5, -12.0], dtype=F64)
    model, batches, loss_fn, q = quadratic(lam, 5)
    op = H.HessianOperator(model, list(model.parameters()), batches, loss_fn=loss_fn)
    p = H.top_eigen(op, 2, "power", max_iter=300, rtol=1e-12, generator=gen(0))
    assert p.values == pytest.approx([-12.0, 4.0], rel=1e-8)
    assert abs_cos(p.vectors[0], q[:, 5]) > 0.999
    s = H.top_eigen(op, 2, "lanczos", max_iter=6, rtol=1e-10, generator=gen(0))
    assert s.values == pytest.approx([4.0, 2.0], rel=1e-8)


@pytest.mark.parametrize("k", [2, 3])
def test_lanczos_warm_start_still_returns_k_pairs(k):
    """Starting on an exact eigenvector makes the Krylov space invariant after one step.

    top_eigen promises the top-k eigenpairs; with a warm start and k > 1 (or a spectrum with
    fewer distinct eigenvalues than k) the Lanczos path must still return k values, or at
    least not report convergence with fewer. Power iteration handles the same input.
    """
    model, batches, loss_fn, q = quadratic(LAM, 0)
    op = H.HessianOperator(model, list(model.parameters()), batches, loss_fn=loss_fn)
    p = H.top_eigen(op, k, "power", max_iter=300, rtol=1e-12, init=q[:, 0])
    assert p.values == pytest.approx(LAM[:k].tolist(), rel=1e-8)
    res = H.top_eigen(op, k, "lanczos", max_iter=50, rtol=1e-10, init=q[:, 0])
    assert len(res.values) == k or not res.converged, (res.values, res.converged)
    assert len(res.values) == len(res.vectors) == k
    assert res.values == pytest.approx(LAM[:k].tolist(), rel=1e-8)


# --- 9. the reduce hook (simulated data parallelism) --------------------------------------


class ThreadWorld:
    """In-process all-reduce (sum) between threads, one per simulated rank."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.barrier = threading.Barrier(size, timeout=60)
        self.slots: list[Tensor | None] = [None] * size
        self.calls = [0] * size

    def reducer(self, rank: int):
        def reduce(t: Tensor) -> Tensor:
            self.calls[rank] += 1
            self.slots[rank] = t.detach().clone()
            self.barrier.wait()
            total = self.slots[0].clone()
            for other in self.slots[1:]:
                total = total + other
            self.barrier.wait()  # nobody overwrites a slot before all have summed
            return total

        return reduce

    def run(self, fn):
        results, errors = [None] * self.size, []

        def target(rank: int) -> None:
            try:
                results[rank] = fn(rank, self.reducer(rank))
            except BaseException as e:  # surface in the main thread, unblock the others
                errors.append(e)
                self.barrier.abort()

        threads = [threading.Thread(target=target, args=(r,)) for r in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results


def probe_all(op, v: Tensor):
    eig = H.top_eigen(op, 2, "lanczos", max_iter=60, rtol=1e-9, generator=gen(3))
    pw = H.top_eigen(op, 1, "power", max_iter=300, rtol=1e-9, generator=gen(4))
    tr = H.trace_hutchinson(op, 30, gen(5))
    out = {
        "n": op.n_samples,
        "hv": op.matvec(v),
        "eig": eig.values,
        "power": pw.values,
        "trace": tr.trace,
    }
    if isinstance(op, H.HessianOperator):
        out["loss"], out["grad"] = op.loss_and_grad()
    return out


@pytest.mark.parametrize("kind", ["full", "last_fast", "last_fallback"])
def test_reduce_two_simulated_ranks_equal_full_data(kind, mlp_case, tanh_head):
    model, x, y = tanh_head if kind == "last_fallback" else (mlp_case.model, mlp_case.x, mlp_case.y)
    shards = [[(x[:15], y[:15]), (x[15:40], y[15:40])], [(x[40:], y[40:])]]  # 40 and 56 samples

    def build(data, reduce=None):
        if kind == "full":
            return H.HessianOperator(model, H.select_params(model, "full"), data, reduce=reduce)
        return H.last_layer_operator(model, data, reduce=reduce)

    whole = build((x, y))
    v = rand_vec(whole.dim, 0)
    ref = probe_all(whole, v)
    world = ThreadWorld(2)
    per_rank = world.run(lambda rank, reduce: probe_all(build(shards[rank], reduce), v))
    assert world.calls[0] == world.calls[1] > 1
    for res in per_rank:
        assert res["n"] == 96
        torch.testing.assert_close(res["hv"], ref["hv"], rtol=0, atol=1e-10)
        assert res["eig"] == pytest.approx(ref["eig"], rel=1e-8)
        assert res["power"] == pytest.approx(ref["power"], rel=1e-8)
        assert res["trace"] == pytest.approx(ref["trace"], rel=1e-8)
        if "loss" in ref:
            assert res["loss"] == pytest.approx(ref["loss"], rel=1e-12)
            torch.testing.assert_close(res["grad"], ref["grad"], rtol=0, atol=1e-12)
    # every rank sees the very same numbers
    assert per_rank[0]["eig"] == per_rank[1]["eig"] and per_rank[0]["trace"] == per_rank[1]["trace"]
    assert torch.equal(per_rank[0]["hv"], per_rank[1]["hv"])


@pytest.mark.parametrize("kind", ["full", "last_fast", "last_fallback"])
def test_rank_with_an_empty_shard_contributes_zero(kind, mlp_case, tanh_head):
    """A probe smaller than the world leaves some rank no samples: it must still take part."""
    model, x, y = tanh_head if kind == "last_fallback" else (mlp_case.model, mlp_case.x, mlp_case.y)

    def build(data, reduce=None):
        if kind == "full":
            return H.HessianOperator(model, H.select_params(model, "full"), data, reduce=reduce)
        return H.last_layer_operator(model, data, reduce=reduce)

    whole = build((x, y))
    v = rand_vec(whole.dim, 0)
    ref = whole.matvec(v)
    shards = [[(x, y)], []]
    world = ThreadWorld(2)
    out = world.run(lambda rank, reduce: build(shards[rank], reduce).matvec(v))
    for hv in out:
        torch.testing.assert_close(hv, ref, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="no samples"):
        build([])


def test_reduce_applies_to_count_and_hvp(mlp_case):
    """A reduce that sums two identical ranks: the count doubles with the HVP, H unchanged."""
    x, y = mlp_case.x[:50], mlp_case.y[:50]
    params = H.select_params(mlp_case.model, "full")
    doubled = H.HessianOperator(mlp_case.model, params, (x, y), reduce=lambda t: 2 * t)
    stacked = H.HessianOperator(mlp_case.model, params, (torch.cat([x, x]), torch.cat([y, y])))
    assert doubled.n_samples == stacked.n_samples == 100
    v = rand_vec(doubled.dim, 1)
    torch.testing.assert_close(doubled.matvec(v), stacked.matvec(v), rtol=0, atol=1e-10)
    # a reduce that adds a constant only to the count rescales the operator: it is used there
    skew = H.HessianOperator(
        mlp_case.model, params, (x, y), reduce=lambda t: t + 50 if t.numel() == 1 else t
    )
    assert skew.n_samples == 100
    torch.testing.assert_close(skew.matvec(v), 0.5 * stacked.matvec(v), rtol=0, atol=1e-10)


# --- 10. reproducibility and bad input ----------------------------------------------------


def test_seeded_generator_reproducible(mlp_case):
    op = mlp_case.op()
    fast = H.last_layer_operator(mlp_case.model, (mlp_case.x, mlp_case.y))

    def everything(seed: int):
        return (
            H.top_eigen(op, 2, "power", max_iter=15, rtol=1e-12, generator=gen(seed)).values,
            H.top_eigen(op, 2, "lanczos", max_iter=6, rtol=1e-12, generator=gen(seed)).values,
            H.trace_hutchinson(fast, 25, gen(seed)).trace,
            H.density_slq(fast, 8, 2, gen(seed)).nodes,
        )

    first, again, other = everything(123), everything(123), everything(124)
    assert first == again
    for a, b in zip(first, other, strict=True):
        assert a != b


def test_select_params_no_match_names_pattern(mlp_case):
    with pytest.raises(ValueError, match="nomatch"):
        H.select_params(mlp_case.model, "nomatch.*")
    with pytest.raises(ValueError, match="bogus"):
        H.select_params(mlp_case.model, "classifier.*,bogus")
    with pytest.raises(ValueError, match="classifier"):
        H.select_params(nn.Sequential(nn.Linear(2, 2)), "last")


def test_top_eigen_bad_arguments(mlp_case):
    op = H.last_layer_operator(mlp_case.model, (mlp_case.x, mlp_case.y))
    with pytest.raises(ValueError, match=str(op.dim + 1)):
        H.top_eigen(op, op.dim + 1)
    with pytest.raises(ValueError):
        H.top_eigen(op, 0)
    with pytest.raises(ValueError, match="arnoldi"):
        H.top_eigen(op, 1, method="arnoldi")
    assert op.n_hvp == 0


def test_operator_bad_inputs(mlp_case):
    with pytest.raises(ValueError):
        H.HessianOperator(mlp_case.model, [], (mlp_case.x, mlp_case.y))
    with pytest.raises(ValueError):
        H.HessianOperator(mlp_case.model, H.select_params(mlp_case.model, "full"), [])


# --- 11. forward-over-reverse and automatic HVPs --------------------------------------------

CUTS = [0, 7, 30, 61, 96]  # several batches of unequal size


def _batches(case: Case) -> list[tuple[Tensor, Tensor]]:
    return [(case.x[a:b], case.y[a:b]) for a, b in zip(CUTS, CUTS[1:], strict=False)]


@pytest.mark.parametrize("hvp", ["reverse", "forward", "auto"])
@pytest.mark.parametrize(
    ("which", "block"),
    [
        ("cnn", "full"),
        ("cnn", "backbone.[03].weight,backbone.4,classifier.bias"),  # conv, BN, head
        ("mlp", "full"),
        ("mlp", "backbone.3.*"),
    ],
)
def test_hvp_modes_match_dense_on_several_batches(which, block, hvp, request):
    """Both exact products (and auto's choice) equal the dense Hessian of the concatenation;
    the CNN has BatchNorm in eval mode with non-trivial running statistics."""
    case: Case = request.getfixturevalue(f"{which}_case")
    names = names_of(case.model, block)
    hess = case.hess if block == "full" else dense_hessian(case.model, names, case.x, case.y)
    buffers = bn_state(case.model)
    op = H.HessianOperator(case.model, H.select_params(case.model, block), _batches(case), hvp=hvp)
    assert op.hvp_mode in H.EXACT_HVPS and (hvp == "auto" or op.hvp_mode == hvp)
    for seed in range(2):
        v = rand_vec(op.dim, seed)
        torch.testing.assert_close(op.matvec(v), hess @ v, rtol=0, atol=1e-10)
    assert op.n_hvp == 2  # auto's trial products are not counted
    assert all(torch.equal(b, buffers[n]) for n, b in case.model.named_buffers())
    if hvp == "auto":
        assert set(op.hvp_timings) == {"reverse", "forward"}
        assert all(t > 0 for t in op.hvp_timings.values())
        assert op.hvp_agreement is not None and op.hvp_agreement < 1e-10
        assert op.hvp_note is None
    else:
        assert op.hvp_timings == {} and op.hvp_agreement is None


def _old_matvec(op: H.HessianOperator, v: Tensor) -> Tensor:
    """HessianOperator.matvec as it was before the hvp option (double backprop)."""
    vs = op._split(v.to(op.device, op.dtype))
    total = torch.zeros(op.dim, dtype=op.dtype, device=op.device)
    for x, y in op.batches:
        loss = op.loss_fn(op.model(x), y)
        grads = torch.autograd.grad(loss, op.params, create_graph=True, allow_unused=True)
        dot = sum((g * u).sum() for g, u in zip(grads, vs, strict=True) if g is not None)
        if not isinstance(dot, Tensor) or not dot.requires_grad:
            continue
        total += op._flat(torch.autograd.grad(dot, op.params, allow_unused=True)).detach()
    return op.reduce(total) / op.n_samples


def test_default_hvp_is_the_unchanged_reverse_path(cnn_case):
    op = H.HessianOperator(
        cnn_case.model, H.select_params(cnn_case.model, "full"), _batches(cnn_case)
    )
    assert op.hvp_mode == "reverse" and op.hvp_timings == {}
    f32 = build_model("small_cnn", load_data(DataConfig(name="digits")).info, 2).eval()
    op32 = H.HessianOperator(f32, H.select_params(f32, "full"), (cnn_case.x.float(), cnn_case.y))
    for o in (op, op32):
        v = rand_vec(o.dim, 3)
        assert torch.equal(o.matvec(v), _old_matvec(o, v))  # bitwise


@pytest.mark.parametrize("method", ["power", "lanczos"])
def test_auto_gives_the_same_top_eigenvalue(cnn_case, method):
    params = H.select_params(cnn_case.model, "full")
    auto = H.HessianOperator(cnn_case.model, params, _batches(cnn_case), hvp="auto")
    rev = H.HessianOperator(cnn_case.model, params, _batches(cnn_case))
    fwd = H.HessianOperator(cnn_case.model, params, _batches(cnn_case), hvp="forward")
    vals = [
        H.top_eigen(op, 1, method, max_iter=200, rtol=1e-10, generator=gen(1)).values[0]
        for op in (auto, rev, fwd)
    ]
    assert vals[0] == pytest.approx(vals[1], rel=1e-8) == pytest.approx(vals[2], rel=1e-8)
    assert vals[0] == pytest.approx(float(cnn_case.evals[-1]), rel=1e-6)
    se = [H.rayleigh_stderr(op, cnn_case.evecs[:, -1])[0] for op in (rev, fwd)]
    assert se[0] == pytest.approx(se[1], rel=1e-8)


@pytest.mark.parametrize("slow", ["reverse", "forward"])
def test_auto_keeps_the_faster_product(cnn_case, monkeypatch, slow):
    """A fake clock: the slow product's trial advances it by 10 s, the other's by 1 s."""
    now = [0.0]
    monkeypatch.setattr(H, "_clock", lambda: now[0])
    for name in ("reverse", "forward"):
        inner = getattr(H.HessianOperator, f"_hvp_{name}")

        def timed(self, x, y, vs, inner=inner, cost=10.0 if name == slow else 1.0):
            now[0] += cost
            return inner(self, x, y, vs)

        monkeypatch.setattr(H.HessianOperator, f"_hvp_{name}", timed)
    op = H.HessianOperator(
        cnn_case.model, H.select_params(cnn_case.model, "full"), _batches(cnn_case), hvp="auto"
    )
    assert op.hvp_mode == ("forward" if slow == "reverse" else "reverse")
    assert op.hvp_timings == {slow: 10.0, op.hvp_mode: 1.0}


def test_auto_falls_back_to_reverse_when_forward_cannot_run():
    """A forward pass that updates buffers (BatchNorm in train mode) defeats torch.func."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2)).to(F64).train()
    x, y = torch.randn(8, 4, dtype=F64), torch.randint(0, 2, (8,))
    params = H.select_params(model, "full")
    op = H.HessianOperator(model, params, (x, y), hvp="auto")
    assert op.hvp_mode == "reverse" and "forward HVP failed" in op.hvp_note
    forced = H.HessianOperator(model, params, (x, y), hvp="forward")
    with pytest.raises(RuntimeError, match="in-place"):
        forced.matvec(rand_vec(forced.dim, 0))


def test_auto_disagreement_keeps_reverse(cnn_case, monkeypatch):
    inner = H.HessianOperator._hvp_forward
    monkeypatch.setattr(
        H.HessianOperator, "_hvp_forward", lambda self, x, y, vs: 1.01 * inner(self, x, y, vs)
    )
    op = H.HessianOperator(
        cnn_case.model, H.select_params(cnn_case.model, "full"), _batches(cnn_case), hvp="auto"
    )
    assert op.hvp_mode == "reverse" and "differ" in op.hvp_note
    assert op.hvp_agreement == pytest.approx(0.01, rel=1e-6)


@pytest.mark.parametrize(
    ("other", "mode", "note"),
    [
        ([0.0, 0.0, 1.0, 0.0], None, False),  # another rank as fast as this one: own choice
        ([0.0, 100.0, 1.0, 0.0], "reverse", False),  # forward very slow on another rank
        ([100.0, 0.0, 1.0, 0.0], "forward", False),  # reverse very slow on another rank
        ([0.0, 0.0, 1.0, 1.0], "reverse", True),  # forward failed on another rank
    ],
)
def test_auto_decides_on_timings_summed_over_ranks(mlp_case, other, mode, note):
    """auto reduces [t_reverse, t_forward, ranks, failures]: every rank makes the same choice.
    (Simulated: the other rank's numbers are added by reduce; real ranks are processes, and
    torch.func transforms must not run concurrently in threads of one process.)"""
    model, x, y = mlp_case.model, mlp_case.x, mlp_case.y
    extra = torch.tensor(other, dtype=F64)
    seen = []

    def reduce(t: Tensor) -> Tensor:
        if t.numel() == 4:  # auto's statistics
            seen.append(t.clone())
            return t + extra
        return 2 * t  # the other rank holds the same data

    op = H.HessianOperator(model, H.select_params(model, "full"), (x, y), reduce=reduce, hvp="auto")
    assert len(seen) == 1 and seen[0][2] == 1.0
    own = "forward" if seen[0][1] < seen[0][0] else "reverse"
    assert op.hvp_mode == (mode or own)
    assert (op.hvp_note is not None) == note
    assert op.hvp_timings == pytest.approx(
        {"reverse": float(seen[0][0] + extra[0]) / 2, "forward": float(seen[0][1] + extra[1]) / 2}
    )
    whole = H.HessianOperator(model, H.select_params(model, "full"), (x, y))
    v = rand_vec(op.dim, 0)
    torch.testing.assert_close(op.matvec(v), whole.matvec(v), rtol=0, atol=1e-10)


def test_forward_on_a_non_linear_head_and_quadratic(tanh_head):
    model, x, y = tanh_head
    ref = H.last_layer_operator(model, (x, y))
    fwd = H.last_layer_operator(model, (x, y), hvp="forward")
    assert isinstance(fwd, H.HessianOperator) and fwd.hvp_mode == "forward"
    v = rand_vec(ref.dim, 4)
    torch.testing.assert_close(fwd.matvec(v), ref.matvec(v), rtol=0, atol=1e-10)
    qmodel, batches, loss_fn, q = quadratic(LAM, 0)
    op = H.HessianOperator(
        qmodel, list(qmodel.parameters()), batches, loss_fn=loss_fn, hvp="forward"
    )
    a = q @ torch.diag(LAM) @ q.T
    torch.testing.assert_close(op.matvec(v[: len(LAM)]), a @ v[: len(LAM)], rtol=0, atol=1e-10)


def test_hvp_bad_arguments(mlp_case):
    params = H.select_params(mlp_case.model, "full")
    with pytest.raises(ValueError, match="hvp"):
        H.HessianOperator(mlp_case.model, params, (mlp_case.x, mlp_case.y), hvp="gauss_newton")
    stray = [nn.Parameter(torch.zeros(3, dtype=F64))]
    with pytest.raises(ValueError, match="parameters of the model"):
        H.HessianOperator(mlp_case.model, stray, (mlp_case.x, mlp_case.y), hvp="forward")


@pytest.mark.parametrize(("which", "block"), [("cnn", "full"), ("mlp", "backbone.3.*")])
def test_keep_graph_is_bitwise_the_reverse_product_and_skips_the_forward(which, block, request):
    """keep_graph: products (and the stderr's per-batch products) equal the recomputed
    reverse ones bit for bit and the dense Hessian; the model's forward runs once per batch
    for the operator's life instead of once per batch and product."""
    case: Case = request.getfixturevalue(f"{which}_case")
    params = H.select_params(case.model, block)
    names = names_of(case.model, block)
    hess = case.hess if block == "full" else dense_hessian(case.model, names, case.x, case.y)
    calls = [0]
    handle = case.model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        kept = H.HessianOperator(case.model, params, _batches(case), keep_graph=True)
        plain = H.HessianOperator(case.model, params, _batches(case))
        n_batches = len(kept.batches)
        for seed in range(3):
            v = rand_vec(kept.dim, seed)
            before = calls[0]
            hv = kept.matvec(v)
            assert calls[0] - before == (n_batches if seed == 0 else 0)
            assert torch.equal(hv, plain.matvec(v))
            torch.testing.assert_close(hv, hess @ v, rtol=0, atol=1e-10)
        u = rand_vec(kept.dim, 9)
        assert H.rayleigh_stderr(kept, u) == H.rayleigh_stderr(plain, u)
    finally:
        handle.remove()


def test_keep_graph_needs_reverse(mlp_case):
    params = H.select_params(mlp_case.model, "full")
    for hvp in ("forward", "auto"):
        with pytest.raises(ValueError, match="keep_graph needs hvp='reverse'"):
            H.HessianOperator(
                mlp_case.model, params, (mlp_case.x, mlp_case.y), hvp=hvp, keep_graph=True
            )
