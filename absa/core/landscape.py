"""Loss landscape along Hessian eigenvectors: L(theta + a d1) and L(theta + a d1 + b d2).

The directions are flat unit vectors over a parameter block (as returned by
``hessian.top_eigen``); ``loss`` is any callable giving the mean loss at the current weights.
The block's weights are restored exactly afterwards, also on error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn


@contextmanager
def displaced(params: Sequence[nn.Parameter], delta: Tensor) -> Iterator[None]:
    """Temporarily set theta_B <- theta_B + delta (flat delta over the block)."""
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            offset = 0
            for p in params:
                n = p.numel()
                p.add_(delta[offset : offset + n].view_as(p).to(p.dtype))
                offset += n
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)


def curve_1d(
    params: Sequence[nn.Parameter],
    direction: Tensor,
    alphas: Sequence[float],
    loss: Callable[[], float],
) -> list[float]:
    """[L(theta + a d) for a in alphas]."""
    out = []
    for a in alphas:
        with displaced(params, a * direction):
            out.append(loss())
    return out


def surface_2d(
    params: Sequence[nn.Parameter],
    d1: Tensor,
    d2: Tensor,
    alphas: Sequence[float],
    betas: Sequence[float],
    loss: Callable[[], float],
) -> Tensor:
    """Matrix S[i, j] = L(theta + alphas[i] d1 + betas[j] d2)."""
    out = torch.empty(len(alphas), len(betas), dtype=torch.float64)
    for i, a in enumerate(alphas):
        for j, b in enumerate(betas):
            with displaced(params, a * d1 + b * d2):
                out[i, j] = loss()
    return out


def quadratic_model(eigenvalue: float, alphas: Sequence[float], base: float) -> list[float]:
    """Second-order prediction L(theta) + 0.5 lambda a^2 along a unit eigenvector (at a minimum
    the gradient term is ~0); drawn for comparison with the measured curve."""
    return [base + 0.5 * eigenvalue * a * a for a in alphas]
