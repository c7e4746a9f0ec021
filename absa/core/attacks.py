"""Adversarial examples in [0,1] pixel units: FGSM, L-inf PGD and "fast" FGSM (Wong et al. 2020).

Models in this project take raw pixels x in [0,1] (normalisation is a layer inside the model), so
every eps and step size here is in [0,1] pixel units and every result is clamped to [0,1].

Pure functions: no printing, no I/O, no torch.distributed. Input gradients come from
``torch.autograd.grad``, so parameter ``.grad`` fields are never read or written. The attacks do
not switch the model between train and eval mode; the caller decides (``model_mode`` of
absa.run.models). The input tensor is never modified in place, and every result is a detached
tensor with the dtype and device of ``x``.

Notation: L(x) = sum_i CE(model(x)_i, y_i) (summed, so the gradient of one sample does not depend
on the batch size), g = grad_x L, and Pi(z) = clamp(clamp(z, x - eps, x + eps), 0, 1) projects
onto the intersection of the L-inf eps-ball around x with the pixel box [0,1]^d.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["METHODS", "fast_fgsm", "fgsm", "make_adversarial", "pgd"]


# --- helpers ------------------------------------------------------------------------------


def _check_eps(eps: float) -> None:
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")


def _input_grad(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """grad_x sum_i CE(model(x)_i, y_i) at x, without touching any parameter's ``.grad``."""
    with torch.enable_grad():
        x_req = x.detach().requires_grad_(True)
        loss = F.cross_entropy(model(x_req), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_req)
    return grad.detach()


def _project(z: Tensor, x: Tensor, eps: float) -> Tensor:
    """Pi(z): clip z to the L-inf eps-ball around x, then to the pixel box [0,1]."""
    return torch.minimum(torch.maximum(z, x - eps), x + eps).clamp_(0.0, 1.0)


def _uniform_noise(x: Tensor, eps: float, generator: torch.Generator | None) -> Tensor:
    """Noise uniform in [-eps, eps] shaped like x, drawn where ``generator`` lives, moved to x.

    Drawing on the generator's own device (the CPU when it is None, then the global CPU RNG is
    used) makes a CPU generator usable with inputs on any device, and makes the noise for a given
    seed independent of where x lives.
    """
    dev = generator.device if generator is not None else torch.device("cpu")
    dtype = x.dtype if x.dtype.is_floating_point else torch.float32
    u = torch.rand(x.shape, generator=generator, device=dev, dtype=dtype)
    return (u.mul_(2.0).sub_(1.0).mul_(eps)).to(device=x.device, dtype=x.dtype)


# --- attacks ------------------------------------------------------------------------------


def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """Fast gradient sign method (Goodfellow et al. 2015).

    x_adv = clamp(x + eps * sign(grad_x L(x)), 0, 1), with L the summed cross-entropy.
    eps == 0 returns a detached copy of x.
    """
    _check_eps(eps)
    x0 = x.detach()
    if eps == 0:
        return x0.clone()
    g = _input_grad(model, x0, y)
    return (x0 + eps * g.sign()).clamp_(0.0, 1.0)


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """L-inf projected gradient descent (Madry et al. 2018), ascending the summed cross-entropy.

    x_0 = Pi(x + u) with u ~ U[-eps, eps]^d drawn from ``generator`` (x_0 = x without random
    start); x_{k+1} = Pi(x_k + a * sign(grad_x L(x_k))) for k < ``steps``, with step size
    a = ``step_size`` or 2.5 * eps / steps by default. Returns x_steps; eps == 0 returns x.
    """
    _check_eps(eps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    x0 = x.detach()
    if eps == 0:
        return x0.clone()
    alpha = 2.5 * eps / steps if step_size is None else step_size
    if random_start:
        x_adv = _project(x0 + _uniform_noise(x0, eps, generator), x0, eps)
    else:
        x_adv = x0.clone()
    for _ in range(steps):
        g = _input_grad(model, x_adv, y)
        x_adv = _project(x_adv + alpha * g.sign(), x0, eps)
    return x_adv


def fast_fgsm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """FGSM with random start, as in Wong et al. 2020 ("Fast is better than free").

    x_0 = Pi(x + u) with u ~ U[-eps, eps]^d drawn from ``generator``, then one signed step
    x_adv = Pi(x_0 + a * sign(grad_x L(x_0))) with a = ``step_size`` or 1.25 * eps by default.
    eps == 0 returns x.
    """
    _check_eps(eps)
    x0 = x.detach()
    if eps == 0:
        return x0.clone()
    alpha = 1.25 * eps if step_size is None else step_size
    x_start = _project(x0 + _uniform_noise(x0, eps, generator), x0, eps)
    g = _input_grad(model, x_start, y)
    return _project(x_start + alpha * g.sign(), x0, eps)


METHODS: dict[str, Callable[..., Tensor]] = {"fgsm": fgsm, "pgd": pgd, "fast_fgsm": fast_fgsm}


def make_adversarial(
    model: nn.Module, x: Tensor, y: Tensor, method: str, eps: float, **kw: Any
) -> Tensor:
    """Dispatch to ``fgsm`` | ``pgd`` | ``fast_fgsm`` with the given eps and keyword arguments.

    ``generator`` is ignored by fgsm (it is deterministic), and so is any other keyword the
    chosen method does not take when its value is None; any other unexpected keyword raises
    TypeError. An unknown method raises ValueError naming the valid ones.
    """
    fn = METHODS.get(method)
    if fn is None:
        valid = ", ".join(repr(m) for m in METHODS)
        raise ValueError(f"unknown attack method {method!r}; valid methods: {valid}")
    accepted = set(inspect.signature(fn).parameters)
    passed: dict[str, Any] = {}
    unexpected: list[str] = []
    for name, value in kw.items():
        if name in accepted:
            passed[name] = value
        elif not (value is None or (name == "generator" and method == "fgsm")):
            unexpected.append(name)
    if unexpected:
        raise TypeError(f"attack {method!r} got unexpected keyword(s): {', '.join(unexpected)}")
    return fn(model, x, y, eps, **passed)
