"""Clean and robust accuracy over a split, sharded across ranks and summed."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from absa.core.attacks import make_adversarial
from absa.distributed import DistEnv
from absa.run.data import Split, local_positions
from absa.run.models import model_mode


@dataclass(frozen=True)
class EvalResult:
    loss: float
    acc: float  # percent
    n: int


def _shard(n: int, env: DistEnv) -> torch.Tensor:
    return local_positions(torch.arange(n), env.rank, env.world_size)


def _reduced(loss_sum: float, correct: float, n: int, env: DistEnv, device) -> EvalResult:
    t = env.all_reduce_sum(
        torch.tensor([loss_sum, correct, float(n)], dtype=torch.float64, device=device)
    )
    total = max(t[2].item(), 1.0)
    return EvalResult(t[0].item() / total, 100.0 * t[1].item() / total, int(t[2].item()))


@torch.no_grad()
def evaluate(
    model: nn.Module, split: Split, env: DistEnv, batch_size: int = 512, limit: int | None = None
) -> EvalResult:
    """Collective: mean cross-entropy and top-1 accuracy (%) of ``model`` (eval mode) on ``split``.

    The model's mode is restored afterwards.
    """
    n = len(split) if limit is None else min(limit, len(split))
    loss_sum, correct, count = 0.0, 0.0, 0
    with model_mode(model, train=False):
        for idx in _shard(n, env).split(batch_size):
            x, y = split.get(idx)
            x, y = x.to(env.device), y.to(env.device)
            out = model(x)
            loss_sum += F.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
            count += len(y)
    return _reduced(loss_sum, correct, count, env, env.device)


def robust_accuracy(
    model: nn.Module,
    split: Split,
    env: DistEnv,
    eps_list: list[float],
    method: str = "pgd",
    batch_size: int = 256,
    limit: int | None = None,
    seed: int = 0,
    **attack_kw: float,
) -> dict[float, EvalResult]:
    """Collective: accuracy under ``method`` (fgsm | pgd | fast_fgsm) at each eps, model in eval mode."""
    n = len(split) if limit is None else min(limit, len(split))
    results: dict[float, EvalResult] = {}
    gen = torch.Generator(device=env.device).manual_seed(seed)
    with model_mode(model, train=False):
        for eps in eps_list:
            loss_sum, correct, count = 0.0, 0.0, 0
            for idx in _shard(n, env).split(batch_size):
                x, y = split.get(idx)
                x, y = x.to(env.device), y.to(env.device)
                kw = dict(attack_kw)
                if method in ("pgd", "fast_fgsm"):
                    kw["generator"] = gen
                x_adv = make_adversarial(model, x, y, method, eps, **kw)
                with torch.no_grad():
                    out = model(x_adv)
                    loss_sum += F.cross_entropy(out, y, reduction="sum").item()
                    correct += (out.argmax(1) == y).sum().item()
                count += len(y)
            results[eps] = _reduced(loss_sum, correct, count, env, env.device)
    return results


def robustness(
    model: nn.Module,
    split: Split,
    env: DistEnv,
    eps_list: list[float],
    pgd_steps: int,
    batch_size: int = 512,
    limit: int | None = None,
) -> list[dict[str, float | str | int]]:
    """Collective: clean accuracy, then FGSM and PGD-``pgd_steps`` (L-inf, eps in [0,1]
    pixels) accuracy at each eps, on the first ``limit`` samples of ``split``: the rows of
    ``absa eval`` and of a run's final robust evaluation (``adversarial.final_eval``)."""
    clean = evaluate(model, split, env, batch_size, limit)
    rows = [("clean", 0.0, clean)]
    for method, extra in (("fgsm", {}), ("pgd", {"steps": pgd_steps})):
        res = robust_accuracy(model, split, env, eps_list, method, limit=limit, **extra)
        rows += [(method, e, r) for e, r in res.items()]
    return [{"attack": a, "eps": e, "loss": r.loss, "acc": r.acc, "n": r.n} for a, e, r in rows]
