"""Hessian spectrum of the mean training loss: exact HVPs, top-k eigenpairs, trace, density.

Pure math: no printing, no mode switching (the caller puts BatchNorm in eval mode), no
torch.distributed calls. Data-parallel callers pass ``reduce`` (a sum over ranks) and each
rank gives its shard of the data; every reduction goes through it, so all ranks see the same
numbers.

The operator is H = (1/N) sum_i d^2 l(x_i, y_i; theta) / d theta_B^2 over a parameter block
theta_B ("last" = the final classifier layer, the paper's block approximation; "full"; or name
patterns) and all N samples of the given batches. Vectors are flat 1-D tensors over the block,
in the order of ``select_params``.

Two exact ways to get H v from one batch (``HessianOperator(hvp=...)``; same H, the results
differ only by floating-point rounding):

- ``reverse`` (the default): double backprop, grad of (grad L . v);
- ``forward``: forward-over-reverse, the jvp of the gradient map in direction v
  (``torch.func.jvp`` of ``torch.func.grad`` of the loss of ``torch.func.functional_call``
  with the block's parameters as inputs; every other parameter and buffer is read from the
  module, so the forward pass must not update buffers: BatchNorm in eval mode);
- ``auto`` times one HVP of each on the first batch when the operator is built, checks that
  they agree, and keeps the faster one (``op.hvp_mode``, ``op.hvp_timings``).

``keep_graph=True`` (reverse only) keeps each batch's gradient graph g_B = grad L_B(theta)
(built once with create_graph) for the operator's life, so every later product is only the
second backward, grad(g_B . v): the forward pass and first backward are not redone. Same
operations on the same values, so the products are bit-identical to ``reverse``; the cost
is memory (every batch's activations and backward intermediates stay alive) and the
parameters must not change while the operator is used.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

Batch = tuple[Tensor, Tensor]
Reduce = Callable[[Tensor], Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]


def _identity(t: Tensor) -> Tensor:
    return t


def _sum_ce(out: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(out, y, reduction="sum")


HVP_MODES = ("auto", "reverse", "forward")
_clock = time.perf_counter  # auto's timer (tests replace it)
EXACT_HVPS = ("reverse", "forward")


def _as_batches(data: Batch | Iterable[Batch]) -> list[Batch]:
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Tensor):
        return [data]
    return list(data)


# --- parameter blocks ---------------------------------------------------------------------


def select_params(model: nn.Module, block: str) -> list[tuple[str, nn.Parameter]]:
    """Named parameters of a block: ``last`` (``model.classifier``), ``full``, or patterns.

    Patterns are comma-separated shell globs over parameter names (``layer4.*,classifier.*``);
    a pattern without wildcards also matches every parameter under that module name.
    Raises ValueError naming the pattern when it matches nothing.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if block == "full":
        return named
    if block == "last":
        head = getattr(model, "classifier", None)
        if not isinstance(head, nn.Module):
            raise ValueError("block 'last': the model has no `classifier` layer")
        ids = {id(p) for p in head.parameters()}
        return [(n, p) for n, p in named if id(p) in ids]
    chosen: dict[str, nn.Parameter] = {}
    for pattern in (s.strip() for s in block.split(",")):
        if not pattern:
            continue
        hits = [
            (n, p)
            for n, p in named
            if fnmatch.fnmatchcase(n, pattern) or n.startswith(pattern.rstrip(".") + ".")
        ]
        if not hits:
            examples = ", ".join(n for n, _ in named[:4])
            raise ValueError(
                f"block pattern {pattern!r} matches no parameter (names look like: {examples}, ...)"
            )
        chosen.update(hits)
    if not chosen:
        raise ValueError(f"block {block!r} selects no parameter")
    return [(n, p) for n, p in named if n in chosen]


# --- operators ----------------------------------------------------------------------------


class HessianOperator:
    """v -> H v over the block; data is one batch or a list of batches.

    Each batch contributes the Hessian of its *summed* loss, the total is divided by the
    (reduced) sample count N, so several batches give exactly the HVP on their concatenation.

    ``hvp`` picks how one batch's product is computed (see the module docstring):
    ``reverse`` (default, double backprop), ``forward`` (forward-over-reverse with
    ``torch.func``) or ``auto``. With ``auto`` the constructor runs one HVP of each on the
    first batch (after an untimed warm-up of each on two of its samples; none of these
    count in ``n_hvp``), sums the timings over ranks with ``reduce`` (so
    every rank makes the same choice; call it on all ranks), and keeps ``forward`` only if it
    was faster and agreed with ``reverse`` to ``AUTO_RTOL`` (relative norm); a forward pass that
    torch.func cannot differentiate (an op without a forward-mode formula, a buffer updated in
    place) makes it keep ``reverse``. After construction:

    - ``hvp_mode``: ``"reverse"`` or ``"forward"``, the product ``matvec`` uses;
    - ``hvp_timings``: ``{"reverse": s, "forward": s}``, seconds of one HVP on the first batch,
      averaged over the ranks that hold a batch (``auto`` only; empty otherwise);
    - ``hvp_agreement``: relative difference |Hv_fwd - Hv_rev| / |Hv_rev| of that trial;
    - ``hvp_note``: why ``auto`` kept ``reverse`` when forward was unusable (else None).

    ``keep_graph=True`` (needs ``hvp="reverse"``) keeps each batch's gradient graph from its
    first product on, so later products skip the forward pass and first backward
    (bit-identical; memory of every batch's graph; parameters must stay fixed).

    Under DistributedDataParallel / DataParallel ``forward`` calls the wrapped module directly.
    torch.func transforms must not run concurrently in several threads of one process.
    """

    AUTO_RTOL = 1e-3  # fp32 forward and reverse HVPs agree to ~1e-6; a mismatch means a bug

    def __init__(
        self,
        model: nn.Module,
        params: Sequence[nn.Parameter] | Sequence[tuple[str, nn.Parameter]],
        data: Batch | Iterable[Batch],
        loss_fn: LossFn | None = None,
        reduce: Reduce | None = None,
        device: torch.device | str | None = None,
        hvp: str = "reverse",
        keep_graph: bool = False,
    ) -> None:
        plist = [p[1] if isinstance(p, tuple) else p for p in params]
        if not plist:
            raise ValueError("the parameter block is empty")
        if hvp not in HVP_MODES:
            raise ValueError(f"unknown hvp {hvp!r} (valid: {', '.join(HVP_MODES)})")
        if keep_graph and hvp != "reverse":
            raise ValueError(f"keep_graph needs hvp='reverse' (got {hvp!r})")
        self.keep_graph = keep_graph
        self._graphs: dict[int, tuple[Tensor | None, ...]] = {}
        self.model = model
        self.params = plist
        self.loss_fn = loss_fn or _sum_ce
        self.reduce = reduce or _identity
        self.device = torch.device(device) if device is not None else plist[0].device
        self.batches = [(x.to(self.device), y.to(self.device)) for x, y in _as_batches(data)]
        self.dim = sum(p.numel() for p in plist)
        self.dtype = plist[0].dtype
        n_local = sum(len(y) for _, y in self.batches)
        count = torch.tensor([float(n_local)], dtype=torch.float64, device=self.device)
        self.n_samples = int(self.reduce(count).item())
        if self.n_samples == 0:
            raise ValueError("no samples to compute the Hessian on")
        self.n_hvp = 0
        self.hvp_mode = "reverse" if hvp == "auto" else hvp
        self.hvp_timings: dict[str, float] = {}
        self.hvp_agreement: float | None = None
        self.hvp_note: str | None = None
        self._names: list[str] | None = None
        if hvp == "forward":
            self._names = self._block_names()
        elif hvp == "auto":
            self._choose_hvp()

    def _flat(self, tensors: Sequence[Tensor | None]) -> Tensor:
        return torch.cat(
            [
                (t if t is not None else torch.zeros_like(p)).reshape(-1)
                for t, p in zip(tensors, self.params, strict=True)
            ]
        )

    def _split(self, v: Tensor) -> list[Tensor]:
        return [
            c.view_as(p)
            for c, p in zip(v.split([p.numel() for p in self.params]), self.params, strict=True)
        ]

    # -- one batch's summed-loss HVP, both ways ---------------------------------------------

    def _grad_graph(self, x: Tensor, y: Tensor) -> tuple[Tensor | None, ...]:
        loss = self.loss_fn(self.model(x), y)
        return torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)

    def _hvp_reverse(
        self, x: Tensor, y: Tensor, vs: Sequence[Tensor], key: int | None = None
    ) -> Tensor | None:
        """Double backprop; None when the loss does not depend on the block at second order.

        With ``keep_graph`` and a batch index ``key`` the gradient graph is built once and
        reused (the second backward retains it)."""
        keep = self.keep_graph and key is not None
        if keep and key in self._graphs:
            grads = self._graphs[key]
        else:
            grads = self._grad_graph(x, y)
            if keep:
                self._graphs[key] = grads
        dot = sum((g * u).sum() for g, u in zip(grads, vs, strict=True) if g is not None)
        if not isinstance(dot, Tensor) or not dot.requires_grad:
            return None
        hv = torch.autograd.grad(dot, self.params, allow_unused=True, retain_graph=keep)
        return self._flat(hv).detach()

    def _target(self) -> nn.Module:
        """The module functional_call runs: the wrapped one under (Distributed)DataParallel."""
        wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
        return self.model.module if isinstance(self.model, wrappers) else self.model

    def _block_names(self) -> list[str]:
        """Names of the block's parameters in the target module, in block order."""
        names = {id(p): n for n, p in self._target().named_parameters()}
        missing = [i for i, p in enumerate(self.params) if id(p) not in names]
        if missing:
            raise ValueError(
                "hvp='forward' needs the block's tensors to be parameters of the model "
                f"(block entry {missing[0]} is not)"
            )
        out = [names[id(p)] for p in self.params]
        if len(set(out)) != len(out):
            raise ValueError("hvp='forward': the block lists a parameter twice")
        return out

    def _hvp_forward(self, x: Tensor, y: Tensor, vs: Sequence[Tensor]) -> Tensor:
        """Forward-over-reverse: d/dt grad L(theta_B + t v) at t = 0, with torch.func."""
        if self._names is None:
            self._names = self._block_names()
        target, names = self._target(), self._names
        primals = {n: p.detach() for n, p in zip(names, self.params, strict=True)}
        tangents = {n: u for n, u in zip(names, vs, strict=True)}
        frozen = {n: p.detach() for n, p in target.named_parameters() if n not in primals}

        def loss(block: dict[str, Tensor]) -> Tensor:
            return self.loss_fn(functional_call(target, {**frozen, **block}, (x,)), y)

        _, hv = torch.func.jvp(torch.func.grad(loss), (primals,), (tangents,))
        return self._flat([hv[n] for n in names]).detach()

    def _hvp_batch(self, x: Tensor, y: Tensor, vs: Sequence[Tensor], key: int) -> Tensor | None:
        if self.hvp_mode == "forward":
            return self._hvp_forward(x, y, vs)
        return self._hvp_reverse(x, y, vs, key)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _choose_hvp(self) -> None:
        """``auto``: one timed HVP of each kind on the first batch; collective via reduce."""
        # [reverse s, forward s, ranks timed, ranks where forward failed or disagreed]
        stats = torch.zeros(4, dtype=torch.float64)
        note = None
        if self.batches:
            x, y = self.batches[0]
            g = torch.Generator().manual_seed(0)
            v = torch.randn(self.dim, generator=g, dtype=torch.float64)
            vs = self._split((v / v.norm()).to(self.device, self.dtype))
            # untimed warm-up on two samples: torch.func's first call costs ~1 s; a failure
            # shows again in the timed call below
            with contextlib.suppress(Exception):
                self._hvp_forward(x[:2], y[:2], vs)
            self._hvp_reverse(x[:2], y[:2], vs)
            self._sync()
            t0 = _clock()
            ref = self._hvp_reverse(x, y, vs)
            self._sync()
            stats[0] = _clock() - t0
            try:
                t0 = _clock()
                out = self._hvp_forward(x, y, vs)
                self._sync()
                stats[1] = _clock() - t0
            except Exception as err:  # noqa: BLE001 - any failure means: not usable here
                note = f"forward HVP failed: {type(err).__name__}: {str(err).strip()[:200]}"
                stats[3] = 1.0
            else:
                ref = torch.zeros_like(out) if ref is None else ref
                scale = float(ref.norm())
                diff = float((out - ref).norm())
                self.hvp_agreement = diff / scale if scale > 0 else diff
                if self.hvp_agreement > self.AUTO_RTOL:
                    note = f"forward and reverse HVPs differ (relative {self.hvp_agreement:.1e})"
                    stats[3] = 1.0
            stats[2] = 1.0
        stats = self.reduce(stats.to(self.device)).cpu()
        ranks = max(float(stats[2]), 1.0)
        self.hvp_timings = {"reverse": float(stats[0]) / ranks, "forward": float(stats[1]) / ranks}
        if float(stats[3]) > 0:
            self.hvp_note = note or "forward HVP failed or disagreed on another rank"
            self.hvp_mode = "reverse"
        else:
            fwd, rev = self.hvp_timings["forward"], self.hvp_timings["reverse"]
            self.hvp_mode = "forward" if fwd < rev else "reverse"
        if self.hvp_mode == "forward" and self._names is None:
            self._names = self._block_names()

    def matvec(self, v: Tensor) -> Tensor:
        """H v for a flat vector v over the block (call on all ranks when reduce is collective)."""
        vs = self._split(v.to(self.device, self.dtype))
        total = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        for i, (x, y) in enumerate(self.batches):
            hv = self._hvp_batch(x, y, vs, i)
            if hv is None:
                continue  # the loss does not depend on the block at second order
            total += hv
        self.n_hvp += 1
        return self.reduce(total) / self.n_samples

    __call__ = matvec

    def loss_and_grad(self) -> tuple[float, Tensor]:
        """Mean loss and its gradient over the block (reduced)."""
        total = torch.zeros(self.dim + 1, dtype=torch.float64, device=self.device)
        for x, y in self.batches:
            loss = self.loss_fn(self.model(x), y)
            grads = torch.autograd.grad(loss, self.params, allow_unused=True)
            total[0] += loss.detach().double()
            total[1:] += self._flat(grads).detach().double()
        total = self.reduce(total) / self.n_samples
        return total[0].item(), total[1:].to(self.dtype)


class LinearSoftmaxHessian:
    """Closed-form Hessian of mean cross-entropy for a linear head on fixed features.

    With z_i = W f_i + b and p_i = softmax(z_i), the Hessian in (W, b) is
    (1/N) sum_i (diag p_i - p_i p_i^T) (x) [f_i; 1][f_i; 1]^T, so for V = (V_W, v_b):
    H V = (1/N) sum_i u_i [f_i; 1]^T with u_i = A_i (V_W f_i + v_b), A_i = diag p_i - p_i p_i^T.
    Vectors are flat (weight then bias), the order of ``select_params(model, "last")``.
    Two matrix products per HVP: the cost is dominated by computing the features once.
    """

    def __init__(
        self,
        head: nn.Linear,
        features: Sequence[Tensor],
        labels: Sequence[Tensor],
        reduce: Reduce | None = None,
    ) -> None:
        self.reduce = reduce or _identity
        self.weight, self.bias = head.weight, head.bias
        self.params = [p for p in (head.weight, head.bias) if p is not None]
        self.dtype = head.weight.dtype
        self.device = head.weight.device
        self.dim = sum(p.numel() for p in self.params)
        if features:
            self.features = torch.cat([f.to(self.device, self.dtype) for f in features])
            self.labels = torch.cat([y.to(self.device) for y in labels])
        else:  # this rank's shard of a probe smaller than the world: contributes zero
            self.features = torch.zeros(0, head.in_features, dtype=self.dtype, device=self.device)
            self.labels = torch.zeros(0, dtype=torch.long, device=self.device)
        with torch.no_grad():
            self.probs = torch.softmax(F.linear(self.features, self.weight, self.bias), dim=1)
        count = torch.tensor([float(len(self.labels))], dtype=torch.float64, device=self.device)
        self.n_samples = int(self.reduce(count).item())
        if self.n_samples == 0:
            raise ValueError("no samples to compute the Hessian on")
        self.n_hvp = 0

    def matvec(self, v: Tensor) -> Tensor:
        c, d = self.weight.shape
        v = v.to(self.device, self.dtype)
        vw = v[: c * d].view(c, d)
        vb = v[c * d :] if self.bias is not None else None
        z = self.features @ vw.T
        if vb is not None:
            z = z + vb
        p = self.probs
        u = p * z - p * (p * z).sum(dim=1, keepdim=True)
        out = [(u.T @ self.features).reshape(-1)]
        if vb is not None:
            out.append(u.sum(dim=0))
        self.n_hvp += 1
        return self.reduce(torch.cat(out)) / self.n_samples

    __call__ = matvec


def last_layer_operator(
    model: nn.Module,
    data: Batch | Iterable[Batch],
    reduce: Reduce | None = None,
    device: torch.device | str | None = None,
    hvp: str = "reverse",
) -> LinearSoftmaxHessian | HessianOperator:
    """Hessian on the ``last`` block with the backbone fixed: features computed once.

    ``model.features(x)`` runs once per batch without gradients; the iterations then only
    touch the head (closed form for an ``nn.Linear`` head under cross-entropy, double
    backprop on the head otherwise, or ``hvp`` as in ``HessianOperator``; the closed form
    ignores it). Equals ``HessianOperator`` on ``select_params(model, "last")``.
    """
    head = model.classifier
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    feats, labels = [], []
    with torch.no_grad():
        for x, y in _as_batches(data):
            feats.append(model.features(x.to(dev)))
            labels.append(y.to(dev))
    if isinstance(head, nn.Linear):
        return LinearSoftmaxHessian(head, feats, labels, reduce)
    params = [p for p in head.parameters() if p.requires_grad]
    return HessianOperator(
        head, params, list(zip(feats, labels, strict=True)), reduce=reduce, device=dev, hvp=hvp
    )


Operator = HessianOperator | LinearSoftmaxHessian


def rayleigh_stderr(
    op: Operator, v: Tensor, reduce: Reduce | None = None
) -> tuple[float | None, int]:
    """Standard error of lambda = v^T H v (v a unit eigenvector) over the probe's pieces.

    lambda is the mean of per-piece quadratic forms q = v^T H_piece v: per sample for the
    closed-form linear head (q_i = z_i^T A_i z_i, z_i = V_W f_i + v_b), per batch for
    ``HessianOperator`` (in its ``hvp_mode``). Returns (std(q) / sqrt(#pieces), HVPs spent), None with fewer
    than two pieces. Call on all ranks when ``reduce`` is collective.
    """
    reduce = reduce or _identity
    v = v.to(op.device, op.dtype)
    v = v / v.norm()
    if isinstance(op, LinearSoftmaxHessian):
        c, d = op.weight.shape
        z = op.features @ v[: c * d].view(c, d).T
        if op.bias is not None:
            z = z + v[c * d :]
        p = op.probs
        q = (p * z * z).sum(1) - (p * z).sum(1) ** 2
    else:
        vs = op._split(v)
        pieces = []
        for i, (x, y) in enumerate(op.batches):
            hv = op._hvp_batch(x, y, vs, i)  # in the operator's hvp_mode (and kept graphs)
            if hv is None:
                pieces.append(0.0)
                continue
            pieces.append(float((hv @ v).item()) / len(y))
        q = torch.tensor(pieces, dtype=torch.float64, device=op.device)
    q = q.double()
    stats = reduce(torch.stack([q.sum(), (q * q).sum(), q.new_tensor(float(len(q)))]))
    n = stats[2].item()
    if n < 2:
        return None, 1
    mean = stats[0].item() / n
    var = max(stats[1].item() / n - mean * mean, 0.0) * n / (n - 1)
    return math.sqrt(var / n), 1


# --- eigenvalues --------------------------------------------------------------------------


@dataclass
class EigenResult:
    values: list[float]  # descending
    vectors: list[Tensor]  # unit vectors over the block
    n_hvp: int  # Hessian-vector products spent
    converged: bool
    iterations: list[int]  # per eigenvalue (power) or Lanczos steps (one entry)


def _random_unit(dim: int, like: Tensor, generator: torch.Generator | None) -> Tensor:
    v = torch.randn(dim, generator=generator, dtype=torch.float64)
    return (v / v.norm()).to(like.device, like.dtype)


def _probe_tensor(op: Operator) -> Tensor:
    return torch.empty(0, dtype=op.dtype, device=op.device)


def top_eigen(
    op: Operator,
    k: int = 1,
    method: str = "power",
    max_iter: int = 20,
    rtol: float = 1e-3,
    generator: torch.Generator | None = None,
    init: Tensor | None = None,
) -> EigenResult:
    """Top-k eigenpairs of H: ``power`` iteration with deflation or ``lanczos``.

    Power iteration returns the k eigenvalues largest in magnitude (what the paper's method
    uses; near a minimum these are the top ones); it stops eigenvalue j when
    |lambda_t - lambda_{t-1}| <= rtol |lambda_t| or after ``max_iter`` HVPs. Lanczos (full
    re-orthogonalisation) returns the k algebraically largest Ritz values once each residual
    bound beta_m |s_mj| <= rtol |theta_j|, or after ``max_iter`` steps (at least k).
    ``init`` warm-starts from a previous top eigenvector; otherwise a Gaussian start from
    ``generator``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1 (got {k})")
    if k > op.dim:
        raise ValueError(f"k={k} is larger than the block size {op.dim}")
    if method == "power":
        return _power(op, k, max_iter, rtol, generator, init)
    if method == "lanczos":
        return _lanczos_top(op, k, max_iter, rtol, generator, init)
    raise ValueError(f"unknown eigen method {method!r} (valid: power, lanczos)")


def _start(op: Operator, generator: torch.Generator | None, init: Tensor | None) -> Tensor:
    like = _probe_tensor(op)
    if init is not None and init.numel() == op.dim and float(init.norm()) > 0:
        v = init.reshape(-1).to(like.device, like.dtype)
        return v / v.norm()
    return _random_unit(op.dim, like, generator)


def _power(
    op: Operator,
    k: int,
    max_iter: int,
    rtol: float,
    generator: torch.Generator | None,
    init: Tensor | None,
) -> EigenResult:
    n0 = op.n_hvp
    values: list[float] = []
    vectors: list[Tensor] = []
    iterations: list[int] = []
    all_converged = True
    for j in range(k):
        v = _start(op, generator, init if j == 0 else None)
        lam = None
        converged = False
        it = 0
        while it < max_iter:
            it += 1
            for u in vectors:  # keep the iterate in the complement of the found space
                v = v - (u @ v) * u
            v = v / v.norm()
            w = op.matvec(v)
            for lam_u, u in zip(values, vectors, strict=True):  # deflation: H - sum lam u u^T
                w = w - lam_u * (u @ v) * u
            new = float(v @ w)
            norm = float(w.norm())
            if norm == 0.0:
                lam, converged = 0.0, True
                break
            done = lam is not None and abs(new - lam) <= rtol * abs(new)
            lam, v = new, w / norm
            if done:
                converged = True
                break
        values.append(float(lam))
        vectors.append(v)
        iterations.append(it)
        all_converged &= converged
    return EigenResult(values, vectors, op.n_hvp - n0, all_converged, iterations)


@dataclass
class LanczosRun:
    alphas: list[float]
    betas: list[float]  # beta_1..beta_m (the last one is the residual norm)
    basis: Tensor  # m x dim, orthonormal rows


def lanczos(
    op: Operator,
    steps: int,
    generator: torch.Generator | None = None,
    init: Tensor | None = None,
    stop: Callable[[LanczosRun], bool] | None = None,
    restart: bool = False,
) -> LanczosRun:
    """Lanczos tridiagonalisation with full re-orthogonalisation (Gram-Schmidt, twice).

    Stops after ``steps`` steps or when ``stop`` returns True after a step. On an invariant
    subspace (beta ~ 0) it stops, or with ``restart`` continues from a random vector
    orthogonal to the basis (beta = 0: T becomes block diagonal), so that eigenvalues the
    Krylov space cannot reach (multiplicities, a warm start on an eigenvector) are found.
    """
    v = _start(op, generator, init)
    basis = [v]
    alphas: list[float] = []
    betas: list[float] = []
    for j in range(min(steps, op.dim)):
        w = op.matvec(basis[j])
        a = float(w @ basis[j])
        alphas.append(a)
        q = torch.stack(basis)
        for _ in range(2):
            w = w - q.T @ (q @ w)
        b = float(w.norm())
        betas.append(b)
        if j + 1 == op.dim:
            break
        scale = max(abs(x) for x in alphas) or 1.0
        if b <= 1e-9 * scale:
            betas[-1] = 0.0
            if not restart or j + 1 == steps:
                break
            w = _random_unit(op.dim, q, generator)
            for _ in range(2):
                w = w - q.T @ (q @ w)
            if float(w.norm()) <= 1e-6:
                break
            basis.append(w / w.norm())
            continue
        if stop is not None and stop(LanczosRun(alphas, betas, q)):
            break
        basis.append(w / b)
    return LanczosRun(alphas, betas, torch.stack(basis[: len(alphas)]))


def tridiagonal_eigh(alphas: Sequence[float], betas: Sequence[float]) -> tuple[Tensor, Tensor]:
    """Eigenvalues (ascending) and eigenvectors of the Lanczos tridiagonal T, in float64."""
    m = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if m > 1:
        off = torch.tensor(betas[: m - 1], dtype=torch.float64)
        t = t + torch.diag(off, 1) + torch.diag(off, -1)
    return torch.linalg.eigh(t)


def _lanczos_top(
    op: Operator,
    k: int,
    max_iter: int,
    rtol: float,
    generator: torch.Generator | None,
    init: Tensor | None,
) -> EigenResult:
    n0 = op.n_hvp
    state = {"ok": False}

    def stop(run: LanczosRun) -> bool:
        if len(run.alphas) < k:
            return False
        theta, s = tridiagonal_eigh(run.alphas, run.betas)
        top = theta[-k:]
        resid = abs(run.betas[-1]) * s[-1, -k:].abs()
        state["ok"] = bool((resid <= rtol * top.abs().clamp_min(1e-30)).all())
        return state["ok"]

    run = lanczos(op, max(max_iter, k), generator, init, stop, restart=True)
    theta, s = tridiagonal_eigh(run.alphas, run.betas)
    m = len(run.alphas)
    if m == op.dim or run.betas[-1] == 0.0:
        state["ok"] = True  # invariant subspace: Ritz pairs are exact
    state["ok"] = state["ok"] and m >= k
    idx = torch.arange(m - 1, max(m - 1 - k, -1), -1)
    basis = run.basis.to(torch.float64)
    s = s.to(basis.device)  # eigh of the small T ran on the CPU; the basis lives with op
    values = [float(theta[i]) for i in idx]
    vectors = []
    for i in idx:
        vec = (s[:, i] @ basis).to(op.dtype)
        vectors.append(vec / vec.norm())
    return EigenResult(values, vectors, op.n_hvp - n0, state["ok"], [m])


# --- trace and density --------------------------------------------------------------------


@dataclass
class TraceResult:
    trace: float
    std_err: float
    n_hvp: int


def trace_hutchinson(
    op: Operator,
    n_samples: int = 100,
    generator: torch.Generator | None = None,
    rtol: float | None = None,
) -> TraceResult:
    """tr(H) ~ mean of v^T H v over Rademacher v (E[v v^T] = I).

    Stops early once the standard error is below ``rtol`` * |mean| (after 10 samples).
    """
    like = _probe_tensor(op)
    n0 = op.n_hvp
    samples: list[float] = []
    for i in range(n_samples):
        v = torch.randint(0, 2, (op.dim,), generator=generator).to(like.device, like.dtype) * 2 - 1
        samples.append(float(v @ op.matvec(v)))
        if rtol is not None and i >= 9:
            t = torch.tensor(samples, dtype=torch.float64)
            if float(t.std() / math.sqrt(len(samples))) <= rtol * abs(float(t.mean())):
                break
    t = torch.tensor(samples, dtype=torch.float64)
    err = float(t.std() / math.sqrt(len(samples))) if len(samples) > 1 else float("inf")
    return TraceResult(float(t.mean()), err, op.n_hvp - n0)


@dataclass
class Density:
    """Stochastic Lanczos quadrature: per run, Ritz nodes theta_j with weights tau_j."""

    nodes: list[list[float]]
    weights: list[list[float]]
    n_hvp: int

    def mean(self) -> float:
        """Estimate of the average eigenvalue tr(H) / n."""
        per_run = [
            sum(t * w for t, w in zip(n, ws, strict=True))
            for n, ws in zip(self.nodes, self.weights, strict=True)
        ]
        return sum(per_run) / len(per_run)


def density_slq(
    op: Operator,
    n_iter: int = 40,
    n_runs: int = 1,
    generator: torch.Generator | None = None,
) -> Density:
    """Spectral density by SLQ: phi(t) ~ (1/runs) sum_runs sum_j tau_j delta(t - theta_j).

    Each run starts Lanczos at a random unit vector v; theta_j are the eigenvalues of the
    tridiagonal T and tau_j = (first component of its j-th eigenvector)^2, so sum_j tau_j = 1
    and sum_j tau_j theta_j = v^T H v.
    """
    n0 = op.n_hvp
    nodes, weights = [], []
    for _ in range(n_runs):
        run = lanczos(op, n_iter, generator)
        theta, s = tridiagonal_eigh(run.alphas, run.betas)
        nodes.append(theta.tolist())
        weights.append((s[0, :] ** 2).tolist())
    return Density(nodes, weights, op.n_hvp - n0)


def density_on_grid(density: Density, grid: Tensor, sigma: float) -> Tensor:
    """Gaussian-broadened density on ``grid``: integrates to ~1 when the grid covers it."""
    grid = grid.to(torch.float64)
    out = torch.zeros_like(grid)
    for nodes, weights in zip(density.nodes, density.weights, strict=True):
        th = torch.tensor(nodes, dtype=torch.float64)
        w = torch.tensor(weights, dtype=torch.float64)
        kern = torch.exp(-((grid[:, None] - th[None, :]) ** 2) / (2 * sigma**2))
        out += (kern * w).sum(dim=1) / (sigma * math.sqrt(2 * math.pi))
    return out / len(density.nodes)
