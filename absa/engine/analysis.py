"""Hessian analysis of a trained model (what ``absa hessian`` computes).

Composes the pure pieces: block selection, an HVP operator over a sample of a split, top-k
eigenpairs, Hutchinson trace, SLQ density and the loss landscape along the top eigenvectors.
The model is analysed in eval mode (BatchNorm running statistics); its mode is restored.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from absa.core import hessian as H
from absa.core import landscape as L
from absa.engine.probes import probe_batches, probe_indices
from absa.run.models import model_mode

Batches = list[tuple[Tensor, Tensor]]


@dataclass
class SpectrumRequest:
    block: str = "last"
    k: int = 5
    method: str = "lanczos"
    max_iter: int = 100
    rtol: float = 1e-3
    trace_samples: int = 0  # Hutchinson samples; 0: no trace (opt-in: costs up to N HVPs)
    density_iter: int = 0  # Lanczos steps per SLQ run; 0: no density (runs x steps HVPs)
    density_runs: int = 3
    seed: int = 0
    hvp: str = "reverse"  # HVP of a full/named block (hessian.HVP_MODES)
    keep_graph: bool = False  # reverse HVPs reuse each batch's gradient graph (memory)


@dataclass
class Spectrum:
    block: str
    block_size: int
    samples: int
    eigenvalues: list[float]
    converged: bool
    eigen_hvps: int
    eigen_seconds: float
    trace: float | None = None
    trace_std_err: float | None = None
    trace_seconds: float = 0.0
    trace_hvps: int = 0
    density: dict[str, Any] | None = None
    density_seconds: float = 0.0
    density_hvps: int = 0
    hvp_seconds: float | None = None  # one timed HVP (made when say or progress is given)
    vectors: list[Tensor] = field(default_factory=list, repr=False)


def batches_of(split: Any, n: int | None, batch: int, device: torch.device, seed: int) -> Batches:
    """A fixed random sample of n items of a split (all if None), cut into batches: the
    probe-set sampler of training (absa.engine.probes), so on the train split with the run's seed
    these are the samples training's lambda_max was measured on."""
    total = len(split)
    idx = torch.arange(total) if n is None or n >= total else probe_indices(total, n, seed)
    return probe_batches(split, idx, batch, device)


def operator_for(
    model: nn.Module, block: str, batches: Batches, hvp: str = "reverse", keep_graph: bool = False
) -> tuple[Any, list[nn.Parameter]]:
    """The Hessian operator of ``block`` on ``batches`` and the block's parameters."""
    named = H.select_params(model, block)
    params = [p for _, p in named]
    if block == "last":
        return H.last_layer_operator(model, batches, hvp=hvp), params
    return H.HessianOperator(model, params, batches, hvp=hvp, keep_graph=keep_graph), params


# progress(phase, done, total): after each unit of work of a phase ("eigen", "trace",
# "density": HVPs; "landscape": loss evaluations); total is the phase's upper bound
Progress = Callable[[str, int, int], None]


class _Metered:
    """An operator that reports each HVP to ``tick`` (everything else is the wrapped one's)."""

    def __init__(self, op: Any, tick: Callable[[], None]) -> None:
        self._op = op
        self._tick = tick

    def matvec(self, v: Tensor) -> Tensor:
        out = self._op.matvec(v)
        self._tick()
        return out

    __call__ = matvec

    def __getattr__(self, name: str) -> Any:
        return getattr(self._op, name)


def _metered(op: Any, phase: str, total: int, progress: Progress | None) -> Any:
    if progress is None:
        return op
    done = [0]

    def tick() -> None:
        done[0] += 1
        progress(phase, done[0], total)

    progress(phase, 0, total)
    return _Metered(op, tick)


def time_hvp(op: Any, repeats: int = 2) -> float:
    """Seconds of one HVP on a fixed unit vector (no random state is used): the fastest of
    ``repeats``, as the first call also pays one-off costs (allocation, kernel selection)."""
    v = torch.full((op.dim,), op.dim**-0.5, dtype=op.dtype, device=op.device)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        op.matvec(v)
        best = min(best, time.perf_counter() - t0)
    return best


def cost_line(what: str, hvps: int, hvp_seconds: float | None) -> str:
    """``what: up to N HVPs, ~T s (one HVP took t s)``: said before a long phase."""
    if hvp_seconds is None:
        return f"{what}: up to {hvps} HVPs"
    return (
        f"{what}: up to {hvps} HVPs, ~{seconds_text(hvps * hvp_seconds)} "
        f"(one HVP took {seconds_text(hvp_seconds)})"
    )


def seconds_text(s: float) -> str:
    if s < 1:
        return f"{s * 1000:.3g} ms"
    if s < 120:
        return f"{s:.3g} s"
    return f"{s / 60:.3g} min"


def eigen_hvp_bound(req: SpectrumRequest) -> int:
    """Most HVPs the top-k phase can take: k x max_iter (power), max(max_iter, k) (Lanczos)."""
    return req.k * req.max_iter if req.method == "power" else max(req.max_iter, req.k)


def spectrum(
    model: nn.Module,
    batches: Batches,
    req: SpectrumRequest,
    say: Callable[[str], None] | None = None,
    progress: Progress | None = None,
) -> Spectrum:
    """Top-k eigenvalues, and on request trace and density, of the Hessian of the mean loss
    over ``batches``. With ``say``, each phase is announced with its cost estimate (from one
    timed HVP); ``progress`` gets each HVP as it is done."""
    tell = say or (lambda _m: None)
    with model_mode(model, train=False):
        op, _ = operator_for(model, req.block, batches, req.hvp, req.keep_graph)
        if req.k > op.dim:
            raise ValueError(f"k={req.k} is larger than the block size {op.dim} ({req.block})")
        gen = torch.Generator().manual_seed(req.seed)
        t_hvp = time_hvp(op) if (say is not None or progress is not None) else None
        bound = eigen_hvp_bound(req)
        tell(
            cost_line(f"top-{req.k} eigenvalues ({req.method}, {op.dim} parameters)", bound, t_hvp)
        )
        t0 = time.perf_counter()
        eig = H.top_eigen(
            _metered(op, "eigen", bound, progress),
            k=req.k,
            method=req.method,
            max_iter=req.max_iter,
            rtol=req.rtol,
            generator=gen,
        )
        out = Spectrum(
            block=req.block,
            block_size=op.dim,
            samples=op.n_samples,
            eigenvalues=eig.values,
            converged=eig.converged,
            eigen_hvps=eig.n_hvp,
            eigen_seconds=time.perf_counter() - t0,
            hvp_seconds=t_hvp,
            vectors=eig.vectors,
        )
        if t_hvp is not None and eig.n_hvp:  # a better per-HVP time for the next phases
            t_hvp = out.eigen_seconds / eig.n_hvp
        if req.trace_samples > 0:
            _trace(op, req, gen, out, t_hvp, tell, progress)
        if req.density_iter > 0 and req.density_runs > 0:
            _density(op, req, gen, out, t_hvp, tell, progress)
        return out


def _trace(
    op: Any,
    req: SpectrumRequest,
    gen: torch.Generator,
    out: Spectrum,
    t_hvp: float | None,
    tell: Callable[[str], None],
    progress: Progress | None,
) -> None:
    """Hutchinson's trace estimate into ``out`` (stops at 1% std err)."""
    tell(cost_line("trace (Hutchinson, stops at 1% std err)", req.trace_samples, t_hvp))
    t0 = time.perf_counter()
    tr = H.trace_hutchinson(
        _metered(op, "trace", req.trace_samples, progress), req.trace_samples, gen, rtol=1e-2
    )
    out.trace, out.trace_std_err, out.trace_hvps = tr.trace, tr.std_err, tr.n_hvp
    out.trace_seconds = time.perf_counter() - t0


def _density(
    op: Any,
    req: SpectrumRequest,
    gen: torch.Generator,
    out: Spectrum,
    t_hvp: float | None,
    tell: Callable[[str], None],
    progress: Progress | None,
) -> None:
    """The SLQ eigenvalue density into ``out``: density_runs x min(density_iter, dim) HVPs."""
    steps = min(req.density_iter, op.dim)
    total = req.density_runs * steps
    tell(cost_line(f"density (SLQ, {req.density_runs} x {steps} Lanczos steps)", total, t_hvp))
    t0 = time.perf_counter()
    den = H.density_slq(_metered(op, "density", total, progress), steps, req.density_runs, gen)
    out.density = {"nodes": den.nodes, "weights": den.weights, "mean": den.mean()}
    out.density_hvps = den.n_hvp
    out.density_seconds = time.perf_counter() - t0


@torch.no_grad()
def mean_loss(model: nn.Module, batches: Batches) -> float:
    total, count = 0.0, 0
    for x, y in batches:
        total += F.cross_entropy(model(x), y, reduction="sum").item()
        count += len(y)
    return total / max(count, 1)


def landscape_evaluations(n_splits: int, points_1d: int, points_2d: int, surface: bool) -> int:
    """Loss evaluations of ``landscape``: each is a forward pass over one split's sample."""
    return n_splits * points_1d + (points_2d * points_2d if surface and points_2d > 1 else 0)


def landscape(
    model: nn.Module,
    block: str,
    vectors: list[Tensor],
    splits: dict[str, Batches],
    radius: float,
    points_1d: int = 21,
    points_2d: int = 11,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Loss along the top eigenvector (each split) and on the plane of the top two (first split).

    ``progress("landscape", done, total)`` after each loss evaluation."""
    total = landscape_evaluations(len(splits), points_1d, points_2d, len(vectors) >= 2)
    done = [0]

    def counted(fn: Callable[[], float]) -> Callable[[], float]:
        def run() -> float:
            value = fn()
            done[0] += 1
            if progress is not None:
                progress("landscape", done[0], total)
            return value

        return run

    with model_mode(model, train=False):
        params = [p for _, p in H.select_params(model, block)]
        alphas = torch.linspace(-radius, radius, points_1d).tolist()
        out: dict[str, Any] = {"alphas": alphas, "curves": {}}
        for name, batches in splits.items():
            out["curves"][name] = L.curve_1d(
                params, vectors[0], alphas, counted(lambda b=batches: mean_loss(model, b))
            )
        if len(vectors) >= 2 and points_2d > 1:
            grid = torch.linspace(-radius, radius, points_2d).tolist()
            first = next(iter(splits))
            surf = L.surface_2d(
                params,
                vectors[0],
                vectors[1],
                grid,
                grid,
                counted(lambda: mean_loss(model, splits[first])),
            )
            out["surface"] = {"split": first, "alphas": grid, "betas": grid, "loss": surf.tolist()}
        return out


@dataclass
class LandscapeRequest:
    points: int = 21  # per 1D axis (>= 3); the 2D surface has max(points // 2, 3) per axis
    radius: float | None = None  # half-width; None: sqrt(2 / lambda_max), +1 nat quadratic
    max_iter: int = 100  # Lanczos steps of a second eigenvector (when the spectrum kept one)
    rtol: float = 1e-3
    seed: int = 0


def landscape_radius(lam: float, radius: float | None) -> float:
    """``radius``, else sqrt(2 / lambda_max): where 0.5 lambda a^2 reaches 1 nat (1 if
    lambda_max <= 0)."""
    return radius if radius is not None else (math.sqrt(2 / lam) if lam > 0 else 1.0)


def fastest_loss(model: nn.Module, batches: Batches, repeats: int = 2) -> float:
    """Seconds of one ``mean_loss``: the fastest of ``repeats`` (the first also pays
    one-off costs)."""
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        mean_loss(model, batches)
        best = min(best, time.perf_counter() - t0)
    return best


def landscape_near(
    model: nn.Module,
    spec: Spectrum,
    batches: Batches,
    splits: dict[str, Batches],
    req: LandscapeRequest,
    say: Callable[[str], None] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """``landscape`` along the top eigenvector(s) of ``spec`` (measured on ``batches``; a
    second one is computed for the 2D surface when ``spec`` has one only), its cost said
    first (from one timed loss evaluation on the first split)."""
    tell = say or (lambda _m: None)
    r = landscape_radius(spec.eigenvalues[0], req.radius)
    vecs = spec.vectors
    if len(vecs) < 2 and spec.block_size >= 2:
        tell("second eigenvector for the 2D surface...")
        two = SpectrumRequest(
            block=spec.block, k=2, method="lanczos", max_iter=max(req.max_iter, 2),
            rtol=req.rtol, seed=req.seed,
        )  # fmt: skip
        vecs = spectrum(model, batches, two).vectors
    points_2d = max(req.points // 2, 3)
    evals = landscape_evaluations(len(splits), req.points, points_2d, len(vecs) >= 2)
    t_loss = fastest_loss(model, next(iter(splits.values())))
    tell(
        f"loss landscape: {req.points} points x {len(splits)} splits"
        + (f" + {points_2d}x{points_2d} surface" if len(vecs) >= 2 else "")
        + f" = {evals} loss evaluations, ~{seconds_text(evals * t_loss)} "
        f"(one took {seconds_text(t_loss)}); radius {r:.3g}"
    )
    return landscape(model, spec.block, vecs, splits, r, req.points, points_2d, progress)
