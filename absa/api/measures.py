"""Measurements of a model: accuracy under attack, top Hessian eigenvalues."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from absa.api.runs import Loaded
from absa.core import hessian as H
from absa.distributed import DistEnv
from absa.engine.analysis import operator_for
from absa.engine.evaluation import evaluate as clean_eval
from absa.engine.evaluation import robustness
from absa.run.models import model_mode

Rows = list[dict[str, Any]]


def top_eigenvalues(
    model: nn.Module,
    batches: Sequence[tuple[Tensor, Tensor]],
    k: int = 1,
    block: str = "last",
    method: str = "lanczos",
    max_iter: int = 100,
    rtol: float = 1e-3,
    seed: int = 0,
) -> list[float]:
    """Top-k eigenvalues (descending) of the Hessian of the mean cross-entropy over
    ``batches`` on a parameter block (``last``, ``full`` or name patterns), BatchNorm in
    eval mode; exact Hessian-vector products."""
    with model_mode(model, train=False):
        op, _ = operator_for(model, block, list(batches))
        gen = torch.Generator().manual_seed(seed)
        res = H.top_eigen(
            op, k=k, method=method, max_iter=max(max_iter, k), rtol=rtol, generator=gen
        )
    return list(res.values)


def _rows(
    model: nn.Module,
    split: Any,
    env: DistEnv,
    eps: list[float] | None,
    pgd_steps: int,
    batch_size: int,
    limit: int | None,
) -> Rows:
    """Clean only (``eps`` None), or clean then FGSM and PGD at each eps."""
    if eps is not None:
        return robustness(model, split, env, eps, pgd_steps, batch_size, limit)
    r = clean_eval(model, split, env, batch_size, limit)
    return [{"attack": "clean", "eps": 0.0, "loss": r.loss, "acc": r.acc, "n": r.n}]


def evaluate(
    model: nn.Module,
    split: Any,
    eps: Sequence[float] = (),
    pgd_steps: int = 10,
    limit: int | None = None,
    batch_size: int = 512,
) -> Rows:
    """Clean accuracy, plus FGSM and PGD-``pgd_steps`` accuracy at each L-inf ``eps`` in
    [0, 1] pixels, on the first ``limit`` samples of ``split`` (e.g. ``data.test``): rows
    ``{attack, eps, loss, acc (%), n}``, the same numbers as ``absa eval``."""
    env = DistEnv(device=next(model.parameters()).device)
    return _rows(model, split, env, list(eps) if eps else None, pgd_steps, batch_size, limit)


def evaluate_run(
    loaded: Loaded, robust: bool = True, eps: Sequence[float] = (), limit: int | None = None
) -> Rows:
    """``absa eval``: the rows of ``evaluate`` on the test split of an ``open_model``, with
    the run's settings (train.eval_batch, adversarial.pgd_steps; ``eps`` default
    adversarial.eval_eps); ``robust=False``: clean accuracy only."""
    cfg = loaded.cfg
    chosen = (list(eps) if eps else list(cfg.adversarial.eval_eps)) if robust else None
    return _rows(
        loaded.model,
        loaded.data.test,
        loaded.env,
        chosen,
        cfg.adversarial.pgd_steps,
        cfg.train.eval_batch,
        limit,
    )
