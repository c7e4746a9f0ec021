"""Optimizers: ``build_optimizer(model, cfg)`` for ``optim.name`` sgd | adamw | lars | lamb.

- ``sgd``: ``torch.optim.SGD`` (momentum, optional Nesterov, L2 weight decay in the gradient).
  With the defaults it is exactly ``torch.optim.SGD(model.parameters(), lr, momentum,
  weight_decay, nesterov=nesterov and momentum > 0)``: one parameter group, every parameter
  decayed, as absa always did.
- ``adamw``: ``torch.optim.AdamW`` (Loshchilov & Hutter: decoupled weight decay
  w <- w - lr * wd * w, then the Adam step with ``optim.betas`` and ``optim.eps``).
- ``lars``: You, Gitman & Ginsburg 2017, "Large Batch Training of Convolutional Networks".
  Per parameter tensor ("layer") a trust ratio
  ``trust = eta * ||w|| / (||g|| + wd * ||w|| + eps)`` (1 when ||w|| or ||g|| is 0; eta =
  ``optim.trust_coefficient``) scales the L2-decayed gradient, which then goes through SGD
  momentum as in ``torch.optim.SGD``: ``d = trust * (g + wd * w)``, ``buf = m * buf + d``
  (``buf = d`` at the first step), ``w <- w - lr * buf`` (Nesterov: ``w <- w - lr * (d + m *
  buf)``). The paper's Algorithm 1 puts lr inside the buffer (``v = m v + lr * trust * ...``);
  both agree while lr is constant and differ only in how a changing lr (warm-up, decay)
  reaches the momentum already accumulated. We follow torch's SGD (and timm's Lars), so
  ``lars`` with the adaptation switched off is ``sgd``.
- ``lamb``: You et al. 2019, "Large Batch Optimization for Deep Learning: Training BERT in
  76 minutes". Adam moments with bias correction, ``m_hat = m / (1 - b1^t)``, ``v_hat = v /
  (1 - b2^t)``; update ``r = m_hat / (sqrt(v_hat) + eps) + wd * w``; per layer trust ratio
  ``||w|| / ||r||`` (1 when either norm is 0; the paper's scaling function phi is the
  identity, no clipping); ``w <- w - lr * trust * r``. No global gradient-norm clipping.

Weight-decay exclusion (``optim.exclude_from_decay``; default: on for adamw/lars/lamb, as in
the LARS/LAMB papers and common AdamW practice, off for sgd): biases, normalization weights
(every parameter with at most one dimension) and the names a submodule lists in a timm-style
``no_weight_decay()`` (position embeddings, class tokens) go into a second parameter group
with weight decay 0, and for lars/lamb without the trust ratio (a plain momentum-SGD / Adam
step). Groups hold parameters in ``model.named_parameters()`` order; the decayed group comes
first. The training loop sets ``group["lr"]`` of every group each step; nothing here keeps a
per-group lr multiplier.

``optim.impl: timm`` runs lars/lamb with ``timm.optim.Lars`` / ``timm.optim.Lamb`` configured to
the same semantics (trust ratio on the decayed group even at weight decay 0, no trust
clipping, no global gradient clipping, L2 not decoupled decay); ``absa`` (default) uses the
code below, which needs no optional package and keeps checkpoints independent of it. The two
agree to rounding (tests/test_optim.py). Optimizer state round-trips through
``state_dict`` / ``load_state_dict`` either way, so a resumed run continues exactly.

Learning rate vs batch size (``schedule.lr_scaling`` for the growing methods; ``fb`` scales
``optim.lr * batch.size / schedule.ref_batch``, i.e. linearly, so for a sqrt rule bake the
factor into ``optim.lr``):

- linear for SGD: Goyal et al. 2017, "Accurate, Large Minibatch SGD" (eta proportional to B,
  with a gradual warm-up); Krizhevsky 2014 and Smith et al. 2018 (batch growth = lr decay)
  argue the same from the SGD noise scale eta / B;
- sqrt for the Adam family: Krizhevsky 2014, "One weird trick" (sqrt(k) keeps the gradient
  variance per step), Hoffer et al. 2017, "Train longer, generalize better" (sqrt scaling of
  eta with B); the LAMB paper uses sqrt scaling (with a linear-epoch warm-up) for BERT;
- none: keep lr, e.g. when the trust ratio is meant to absorb the change.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from absa.run.models import TIMM_MISSING

if TYPE_CHECKING:
    from absa.run.config import Config, OptimConfig

OPTIMIZERS = ("sgd", "adamw", "lars", "lamb")


class OptimError(ValueError):
    """An optimizer that cannot be built as configured; one line for the user."""


# --- parameter groups ---------------------------------------------------------------------


def _no_weight_decay_names(model: nn.Module) -> set[str]:
    """Full parameter names that submodules list in a timm-style ``no_weight_decay()``."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        fn = getattr(module, "no_weight_decay", None)
        if not callable(fn):
            continue
        try:
            listed = fn()
        except TypeError:
            continue
        for name in listed or ():
            names.add(f"{prefix}.{name}" if prefix else str(name))
    return names


def excluded_from_decay(model: nn.Module) -> list[str]:
    """Names of the parameters that ``exclude_from_decay`` takes out of weight decay (and
    layer adaptation): at most one dimension (biases, norm weights) or listed by a
    ``no_weight_decay()``."""
    listed = _no_weight_decay_names(model)
    return [n for n, p in model.named_parameters() if p.ndim <= 1 or n in listed]


def param_groups(model: nn.Module, weight_decay: float, exclude: bool) -> list[dict[str, Any]]:
    """``[{"params": decayed, "weight_decay": wd, "adapt": True}, {"params": excluded,
    "weight_decay": 0.0, "adapt": False}]`` (empty groups dropped); one group of every
    parameter when ``exclude`` is false."""
    named = list(model.named_parameters())
    if not exclude:
        return [{"params": [p for _, p in named], "weight_decay": weight_decay, "adapt": True}]
    skip = set(excluded_from_decay(model))
    groups = [
        {"params": [p for n, p in named if n not in skip], "weight_decay": weight_decay},
        {"params": [p for n, p in named if n in skip], "weight_decay": 0.0},
    ]
    groups[0]["adapt"], groups[1]["adapt"] = True, False
    return [g for g in groups if g["params"]]


def _without(groups: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    return [{k: v for k, v in g.items() if k != key} for g in groups]


# --- LARS and LAMB --------------------------------------------------------------------------


def _trust(numerator: Tensor, w_norm: Tensor, d_norm: Tensor) -> Tensor:
    """``numerator / ...`` as computed by the caller, or 1 when either norm is zero."""
    one = torch.ones_like(numerator)
    return torch.where((w_norm > 0) & (d_norm > 0), numerator, one)


class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017) on torch's SGD momentum; see the module docstring.

    Group options: ``lr``, ``momentum``, ``weight_decay``, ``nesterov``,
    ``trust_coefficient`` (eta), ``eps``, ``adapt`` (apply the trust ratio; false for the
    group excluded from weight decay). State: ``momentum_buffer`` per parameter.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        trust_coefficient: float = 0.001,
        eps: float = 1e-8,
        adapt: bool = True,
    ) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0 or trust_coefficient <= 0 or eps < 0:
            raise ValueError("LARS: lr, momentum, weight_decay, eps >= 0 and eta > 0 expected")
        if nesterov and momentum <= 0:
            raise ValueError("LARS: Nesterov momentum needs momentum > 0")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            nesterov=nesterov,
            trust_coefficient=trust_coefficient,
            eps=eps,
            adapt=adapt,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One step over each group's tensors at once (torch._foreach_*: one call per
        operation instead of one per tensor); the arithmetic per tensor is the loop's of the
        module docstring, bit for bit on the CPU (tests/test_optim.py), and the trust ratios
        stay on the device."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, m, wd = group["lr"], group["momentum"], group["weight_decay"]
            ps = [p for p in group["params"] if p.grad is not None]
            if not ps:
                continue
            gs = [p.grad for p in ps]
            ds = torch._foreach_add(gs, ps, alpha=wd) if wd != 0 else [g.clone() for g in gs]
            if group["adapt"]:
                w_norm = torch.stack(torch._foreach_norm(ps))
                g_norm = torch.stack(torch._foreach_norm(gs))
                ratio = group["trust_coefficient"] * w_norm / (g_norm + wd * w_norm + group["eps"])
                torch._foreach_mul_(ds, list(_trust(ratio, w_norm, g_norm).unbind()))
            if m != 0:
                has = [self.state[p].get("momentum_buffer") is not None for p in ps]
                bufs = [self.state[p]["momentum_buffer"] for p, h in zip(ps, has, strict=True) if h]
                if bufs:  # buf = m * buf + d
                    torch._foreach_mul_(bufs, m)
                    torch._foreach_add_(bufs, [d for d, h in zip(ds, has, strict=True) if h])
                for p, d, h in zip(ps, ds, has, strict=True):
                    if not h:  # the first step: buf = d
                        self.state[p]["momentum_buffer"] = d.clone()
                bufs = [self.state[p]["momentum_buffer"] for p in ps]
                ds = torch._foreach_add(ds, bufs, alpha=m) if group["nesterov"] else bufs
            torch._foreach_add_(ps, ds, alpha=-lr)
        return loss


class LAMB(torch.optim.Optimizer):
    """LAMB (You et al. 2019); see the module docstring.

    Group options: ``lr``, ``betas``, ``eps``, ``weight_decay`` (added to the Adam direction,
    as in the paper), ``adapt`` (apply the trust ratio). State per parameter: ``step`` (a
    float tensor, as torch's Adam keeps it), ``exp_avg``, ``exp_avg_sq``.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        adapt: bool = True,
    ) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError("LAMB: lr, eps, weight_decay >= 0 and betas in [0, 1) expected")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, adapt=adapt)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            ps = [p for p in group["params"] if p.grad is not None]
            if not ps:
                continue
            gs = [p.grad for p in ps]
            for p in ps:
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
            ts = [float(self.state[p]["step"]) for p in ps]  # host tensors: no device read
            ms = [self.state[p]["exp_avg"] for p in ps]
            vs = [self.state[p]["exp_avg_sq"] for p in ps]
            torch._foreach_mul_(ms, b1)
            torch._foreach_add_(ms, gs, alpha=1 - b1)
            torch._foreach_mul_(vs, b2)
            torch._foreach_addcmul_(vs, gs, gs, value=1 - b2)
            # r = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
            den = torch._foreach_div(vs, [1 - b2**t for t in ts])
            torch._foreach_sqrt_(den)
            torch._foreach_add_(den, eps)
            rs = torch._foreach_div(torch._foreach_div(ms, [1 - b1**t for t in ts]), den)
            if wd != 0:
                torch._foreach_add_(rs, ps, alpha=wd)
            if group["adapt"]:
                w_norm = torch.stack(torch._foreach_norm(ps))
                r_norm = torch.stack(torch._foreach_norm(rs))
                torch._foreach_mul_(rs, list(_trust(w_norm / r_norm, w_norm, r_norm).unbind()))
            torch._foreach_add_(ps, rs, alpha=-lr)
        return loss


# --- building -------------------------------------------------------------------------------


def excludes(o: OptimConfig) -> bool:
    """Whether biases and norm weights leave weight decay (``optim.exclude_from_decay``;
    unset: true for adamw/lars/lamb, false for sgd)."""
    return o.name != "sgd" if o.exclude_from_decay is None else o.exclude_from_decay


def _timm_optim() -> Any:
    if importlib.util.find_spec("timm") is None:
        raise OptimError(f"optim.impl: {TIMM_MISSING}")
    import absa.tv  # noqa: F401  - timm imports torchvision; absa.tv makes that safe

    return importlib.import_module("timm.optim")


def build_optimizer(model: nn.Module, cfg: Config | OptimConfig) -> torch.optim.Optimizer:
    """The optimizer that ``cfg.optim`` (or an ``OptimConfig``) describes for ``model``.

    The default config gives exactly the SGD absa always built. The lr passed here is the
    initial one; the training loop overwrites ``group["lr"]`` of every group each step.
    Raises OptimError (one line) for ``optim.impl: timm`` without timm installed.
    """
    o = getattr(cfg, "optim", cfg)
    nesterov = bool(o.nesterov and o.momentum > 0)
    exclude = excludes(o)
    if o.name == "sgd" and not exclude:
        return torch.optim.SGD(
            model.parameters(),
            lr=o.lr,
            momentum=o.momentum,
            weight_decay=o.weight_decay,
            nesterov=nesterov,
        )
    groups = param_groups(model, o.weight_decay, exclude)
    plain = _without(groups, "adapt")
    if o.name == "sgd":
        return torch.optim.SGD(plain, lr=o.lr, momentum=o.momentum, nesterov=nesterov)
    if o.name == "adamw":
        return torch.optim.AdamW(plain, lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    # timm skips the trust ratio of a group with weight_decay 0 unless always_adapt is set
    timm_groups = [
        {**g, "always_adapt": full["adapt"]} for g, full in zip(plain, groups, strict=True)
    ]
    if o.name == "lars":
        return _lars(o, groups, timm_groups, nesterov)
    if o.name == "lamb":
        return _lamb(o, groups, timm_groups)
    raise OptimError(f"optim.name: unknown optimizer {o.name!r} (valid: {', '.join(OPTIMIZERS)})")


def _lars(
    o: OptimConfig, groups: list[dict[str, Any]], timm_groups: list[dict[str, Any]], nesterov: bool
) -> torch.optim.Optimizer:
    """LARS, absa's or timm's (``optim.impl``), with the same semantics."""
    if o.impl == "timm":
        return _timm_optim().Lars(
            timm_groups,
            lr=o.lr,
            momentum=o.momentum,
            nesterov=nesterov,
            trust_coeff=o.trust_coefficient,
            eps=o.eps,
            trust_clip=False,
        )
    return LARS(
        groups,
        lr=o.lr,
        momentum=o.momentum,
        nesterov=nesterov,
        trust_coefficient=o.trust_coefficient,
        eps=o.eps,
    )


def _lamb(
    o: OptimConfig, groups: list[dict[str, Any]], timm_groups: list[dict[str, Any]]
) -> torch.optim.Optimizer:
    """LAMB, absa's or timm's (``optim.impl``), with the same semantics."""
    if o.impl == "timm":
        return _timm_optim().Lamb(
            timm_groups,
            lr=o.lr,
            betas=tuple(o.betas),
            eps=o.eps,
            bias_correction=True,
            grad_averaging=True,
            max_grad_norm=None,
            trust_clip=False,
            decoupled_decay=False,
        )
    return LAMB(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)
