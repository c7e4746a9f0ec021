"""absa from Python: the functions the CLI is built on.

    import absa
    cfg = absa.load_config("configs/digits_absa.yaml", ["train.epochs=3"])
    result = absa.train(cfg)                     # Result: summary, model, data, run_dir
    model, cfg, data = absa.load_run(result.run_dir)
    lams = absa.top_eigenvalues(model, absa.probe_set(data, 1024), k=3)
    rows = absa.evaluate(model, data.test, eps=[0.01, 0.03])

Units and shapes: images are float tensors in [0, 1] pixels, [N, C, H, W]; labels int64 [N];
attack eps in [0, 1] pixel units (L-inf); accuracies in percent; eigenvalues are those of
the Hessian of the mean cross-entropy over the given samples. A model is an ``nn.Module``
with ``features(x) -> [N, D]`` and a ``classifier`` head (the last-layer Hessian block) that
normalizes its own inputs: every model of absa.run.models has that shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from absa.distributed import DistEnv, resolve_device
from absa.engine.loop import Summary, execute
from absa.engine.probes import probe_batches, probe_indices
from absa.run import checkpoint as ckpt_io
from absa.run import config as C
from absa.run.data import Data, DatasetInfo, TensorSplit, load_data
from absa.run.folder import read_metrics
from absa.run.models import build_from_config, code_imports, model_mode


@dataclass
class Result:
    """A finished training run."""

    summary: Summary  # final/best test accuracy (%), updates, final batch, times, growths
    model: nn.Module  # the trained model (bare: no DDP/compile wrapper), in eval-ready state
    data: Data  # the train/test splits it was trained on
    run_dir: Path  # config.yaml, metrics.jsonl, last.pt, summary.json

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """One dict per epoch, as in metrics.jsonl (0-based ``epoch``)."""
        return read_metrics(self.run_dir)


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> C.Config:
    """Defaults < YAML ``path`` < dotted ``overrides`` (``"optim.lr=0.2"``), validated;
    raises ``ConfigError`` (one line naming the file and field) on bad input."""
    return C.load(path, list(overrides))


def train(
    cfg: C.Config,
    run_dir: str | Path | None = None,
    *,
    model: nn.Module | None = None,
    data: Data | None = None,
    resume: bool = False,
    log: Any = print,
) -> Result:
    """Train per ``cfg`` in one process (``run_dir`` default: train.out_dir/train.run_name).

    ``model``: your own ``nn.Module`` instead of ``cfg.model`` (shape: see the module
    docstring; ``absa.run.models.wrap`` adapts torchvision/timm-style classifiers if present).
    ``data``: your own splits instead of ``cfg.data`` (see ``tensor_data``).
    """
    from absa.engine.loop import check_run_dir, prepare_run_dir

    if run_dir is None:
        folder = prepare_run_dir(cfg, "run", None)
    else:
        folder = check_run_dir(Path(run_dir), resume)
    out = execute(cfg, DistEnv(device=resolve_device(cfg.train.device)), folder, resume, log,
                  model=model, data=data)  # fmt: skip
    return Result(out.summary, out.model, out.data, out.run_dir)


def tensor_data(
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    num_classes: int | None = None,
    name: str = "tensors",
    flip: bool = True,
) -> Data:
    """Your own tensors as absa data: x float in [0, 1] (or uint8 0..255), [N, C, H, W];
    y int64 class indices [N]. Normalization constants are measured on x_train."""
    from absa.run.data import channel_stats as _channel_stats

    train_split, test_split = TensorSplit(x_train, y_train), TensorSplit(x_test, y_test)
    classes = num_classes or int(max(y_train.max(), y_test.max()).item()) + 1
    mean, std = _channel_stats(train_split)
    info = DatasetInfo(name, classes, x_train.shape[1], x_train.shape[-1], mean, std, flip)
    return Data(train_split, test_split, info)


def load_run(
    run_dir: str | Path, model: nn.Module | None = None, trust_code: bool = False
) -> tuple[nn.Module, C.Config, Data]:
    """The trained model (eval mode, on the CPU), resolved config and data of a run folder
    (or of a last.pt). A run trained with your own module needs that ``model`` passed in
    (its weights are loaded into it), or ``trust_code=True`` to import the
    ``module:function`` its config names (a checkpoint is data: by default it cannot make
    absa import code)."""
    path = Path(run_dir)
    file = path / ckpt_io.LAST if path.is_dir() else path
    ck = ckpt_io.load(file)
    mode = "allow" if trust_code else "skip" if model is not None else f"deny:{file}"
    with code_imports(mode):
        cfg = C.from_dict(ck["config"], str(path))
        data = load_data(cfg.data)
        net = model if model is not None else build_from_config(cfg.model, data.info)
    net.load_state_dict(ck["model"])
    return net.eval(), cfg, data


def probe_set(
    data: Data, n: int = 4096, seed: int = 0, batch: int = 256
) -> list[tuple[Tensor, Tensor]]:
    """The training probe set: the same ``n`` train samples a run with ``train.seed = seed``
    measures lambda_max on, in batches of ``batch``."""
    idx = probe_indices(len(data.train), n, seed)
    return probe_batches(data.train, idx, batch, torch.device("cpu"))


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
    from absa.engine.analysis import operator_for
    from absa.math import hessian as H

    with model_mode(model, train=False):
        op, _ = operator_for(model, block, list(batches))
        gen = torch.Generator().manual_seed(seed)
        res = H.top_eigen(
            op, k=k, method=method, max_iter=max(max_iter, k), rtol=rtol, generator=gen
        )
    return list(res.values)


def evaluate(
    model: nn.Module,
    split: Any,
    eps: Sequence[float] = (),
    pgd_steps: int = 10,
    limit: int | None = None,
    batch_size: int = 512,
) -> list[dict[str, Any]]:
    """Clean accuracy, plus FGSM and PGD-``pgd_steps`` accuracy at each L-inf ``eps`` in
    [0, 1] pixels, on the first ``limit`` samples of ``split`` (e.g. ``data.test``): rows
    ``{attack, eps, loss, acc (%), n}``, the same numbers as ``absa eval``."""
    from absa.engine.evaluation import evaluate as clean_eval
    from absa.engine.evaluation import robustness

    env = DistEnv(device=next(model.parameters()).device)
    if eps:
        return robustness(model, split, env, list(eps), pgd_steps, batch_size, limit)
    r = clean_eval(model, split, env, batch_size, limit)
    return [{"attack": "clean", "eps": 0.0, "loss": r.loss, "acc": r.acc, "n": r.n}]
