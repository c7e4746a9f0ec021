"""Hessian analysis of a trained model (what ``absa hessian`` computes).

Composes the pure pieces: block selection, an HVP operator over a sample of a split, top-k
eigenpairs, Hutchinson trace, SLQ density and the loss landscape along the top eigenvectors.
The model is analysed in eval mode (BatchNorm running statistics); its mode is restored.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from absa import hessian as H
from absa import landscape as L
from absa.attacks import model_mode
from absa.probes import probe_batches, probe_indices

Batches = list[tuple[Tensor, Tensor]]


@dataclass
class SpectrumRequest:
    block: str = "last"
    k: int = 5
    method: str = "lanczos"
    max_iter: int = 100
    rtol: float = 1e-3
    trace_samples: int = 100
    density_iter: int = 60
    density_runs: int = 3
    seed: int = 0


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
    density: dict[str, Any] | None = None
    density_seconds: float = 0.0
    vectors: list[Tensor] = field(default_factory=list, repr=False)


def batches_of(split: Any, n: int | None, batch: int, device: torch.device, seed: int) -> Batches:
    """A fixed random sample of n items of a split (all if None), cut into batches: the
    probe-set sampler of training (absa.probes), so on the train split with the run's seed
    these are the samples training's lambda_max was measured on."""
    total = len(split)
    idx = torch.arange(total) if n is None or n >= total else probe_indices(total, n, seed)
    return probe_batches(split, idx, batch, device)


def operator_for(model: nn.Module, block: str, batches: Batches) -> tuple[Any, list[nn.Parameter]]:
    named = H.select_params(model, block)
    params = [p for _, p in named]
    if block == "last":
        return H.last_layer_operator(model, batches), params
    return H.HessianOperator(model, params, batches), params


def spectrum(
    model: nn.Module,
    batches: Batches,
    req: SpectrumRequest,
    say: Callable[[str], None] = lambda _m: None,
) -> Spectrum:
    """Top-k eigenvalues, trace and density of the Hessian of the mean loss over ``batches``."""
    with model_mode(model, train=False):
        op, _ = operator_for(model, req.block, batches)
        if req.k > op.dim:
            raise ValueError(f"k={req.k} is larger than the block size {op.dim} ({req.block})")
        gen = torch.Generator().manual_seed(req.seed)
        t0 = time.perf_counter()
        say(f"top-{req.k} eigenvalues ({req.method}) on {op.dim} parameters...")
        eig = H.top_eigen(
            op, k=req.k, method=req.method, max_iter=req.max_iter, rtol=req.rtol, generator=gen
        )
        out = Spectrum(
            block=req.block,
            block_size=op.dim,
            samples=op.n_samples,
            eigenvalues=eig.values,
            converged=eig.converged,
            eigen_hvps=eig.n_hvp,
            eigen_seconds=time.perf_counter() - t0,
            vectors=eig.vectors,
        )
        if req.trace_samples > 0:
            t0 = time.perf_counter()
            say(f"trace (Hutchinson, up to {req.trace_samples} samples)...")
            tr = H.trace_hutchinson(op, req.trace_samples, gen, rtol=1e-2)
            out.trace, out.trace_std_err = tr.trace, tr.std_err
            out.trace_seconds = time.perf_counter() - t0
        if req.density_iter > 0 and req.density_runs > 0:
            t0 = time.perf_counter()
            say(f"density (SLQ, {req.density_runs} x {req.density_iter} Lanczos steps)...")
            den = H.density_slq(op, min(req.density_iter, op.dim), req.density_runs, gen)
            out.density = {"nodes": den.nodes, "weights": den.weights, "mean": den.mean()}
            out.density_seconds = time.perf_counter() - t0
        return out


@torch.no_grad()
def mean_loss(model: nn.Module, batches: Batches) -> float:
    total, count = 0.0, 0
    for x, y in batches:
        total += F.cross_entropy(model(x), y, reduction="sum").item()
        count += len(y)
    return total / max(count, 1)


def landscape(
    model: nn.Module,
    block: str,
    vectors: list[Tensor],
    splits: dict[str, Batches],
    radius: float,
    points_1d: int = 21,
    points_2d: int = 11,
) -> dict[str, Any]:
    """Loss along the top eigenvector (each split) and on the plane of the top two (first split)."""
    with model_mode(model, train=False):
        params = [p for _, p in H.select_params(model, block)]
        alphas = torch.linspace(-radius, radius, points_1d).tolist()
        out: dict[str, Any] = {"alphas": alphas, "curves": {}}
        for name, batches in splits.items():
            out["curves"][name] = L.curve_1d(
                params, vectors[0], alphas, lambda b=batches: mean_loss(model, b)
            )
        if len(vectors) >= 2 and points_2d > 1:
            grid = torch.linspace(-radius, radius, points_2d).tolist()
            first = next(iter(splits))
            surf = L.surface_2d(
                params, vectors[0], vectors[1], grid, grid, lambda: mean_loss(model, splits[first])
            )
            out["surface"] = {"split": first, "alphas": grid, "betas": grid, "loss": surf.tolist()}
        return out
