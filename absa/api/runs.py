"""Data and trained models: your own tensors, a run folder's model, a probe set."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from absa.distributed import DistEnv, resolve_device
from absa.engine.probes import probe_batches, probe_indices
from absa.run import checkpoint as ckpt_io
from absa.run import config as C
from absa.run.data import Data, DatasetInfo, TensorSplit, channel_stats, load_data
from absa.run.models import ModelError, build_from_config, code_imports


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
    train_split, test_split = TensorSplit(x_train, y_train), TensorSplit(x_test, y_test)
    classes = num_classes or int(max(y_train.max(), y_test.max()).item()) + 1
    mean, std = channel_stats(train_split)
    info = DatasetInfo(name, classes, x_train.shape[1], x_train.shape[-1], mean, std, flip)
    return Data(train_split, test_split, info)


def _trust_mode(file: Path, trust_code: bool, model: nn.Module | None = None) -> str:
    """absa.run.models.code_imports' mode: a checkpoint is data, so by default it cannot
    make absa import the ``module:function`` its config names."""
    return "allow" if trust_code else "skip" if model is not None else f"deny:{file}"


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
    with code_imports(_trust_mode(file, trust_code, model)):
        cfg = C.from_dict(ck["config"], str(path))
        data = load_data(cfg.data)
        net = model if model is not None else build_from_config(cfg.model, data.info)
    net.load_state_dict(ck["model"])
    return net.eval(), cfg, data


@dataclass
class Loaded:
    """A model to measure, from a checkpoint or a config (``open_model``)."""

    cfg: C.Config  # the checkpoint's config (+ overrides), or the config's
    env: DistEnv  # one process on cfg.train.device
    data: Data
    model: nn.Module  # on env.device, in the mode it was built in
    checkpoint: dict[str, Any] | None  # the checkpoint's entries (epoch, updates, ...)
    path: Path | None  # the checkpoint given (last.pt or its run folder)
    config: Path | None  # the config given

    @property
    def source(self) -> str:
        """What was measured: the checkpoint, or ``<config> (fresh init)``."""
        return str(self.path) if self.path is not None else f"{self.config} (fresh init)"


def open_model(
    checkpoint: Path | None,
    config: Path | None = None,
    overrides: Sequence[str] = (),
    trust_code: bool = False,
) -> Loaded:
    """The model, data and config of a checkpoint (its config + ``overrides``; ``config``,
    if given too, must name the same model), or a fresh model of ``config`` (seeded with
    train.seed). Applies train.threads; one-line ``ModelError`` when the weights do not fit.
    A checkpoint's ``module:function`` model is imported only with ``trust_code``."""
    mode = "allow" if trust_code or checkpoint is None else f"deny:{checkpoint}"
    with code_imports(mode):
        if checkpoint is not None:
            ck: dict[str, Any] | None = ckpt_io.load(checkpoint)
            cfg = _checkpoint_config(ck, checkpoint, config, list(overrides))
        else:
            ck = None
            cfg = C.load(config, list(overrides))
            torch.manual_seed(cfg.train.seed)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        env = DistEnv(device=resolve_device(cfg.train.device))
        data = load_data(cfg.data)
        model = build_from_config(cfg.model, data.info).to(env.device)
        if ck is not None:
            _load_weights(model, ck, cfg, checkpoint)
    return Loaded(cfg, env, data, model, ck, checkpoint, config)


def _checkpoint_config(
    ck: dict[str, Any], checkpoint: Path, config: Path | None, overrides: list[str]
) -> C.Config:
    cfg = C.from_dict(ck["config"], str(checkpoint))  # blame the file for its own errors
    if overrides:
        tree = C.apply_overrides(ck["config"], overrides)
        cfg = C.from_dict(tree, f"{checkpoint} + overrides")
    if config is not None:
        other = C.load(config, overrides)
        if other.model != cfg.model:
            raise ModelError(
                f"{checkpoint}: checkpoint is from model {ck['config']['model']} but "
                f"{config} asks for {C.to_dict(other)['model']}"
            )
    return cfg


def _load_weights(model: nn.Module, ck: dict[str, Any], cfg: C.Config, checkpoint: Any) -> None:
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as err:
        lines = [ln.strip() for ln in str(err).strip().splitlines()]
        detail = next((ln for ln in lines[1:] if ln), lines[0])  # first missing/mismatch
        if len(detail) > 200:
            detail = detail[:200] + "..."
        raise ModelError(
            f"{checkpoint}: weights do not fit model {cfg.model.name} "
            f"(width {cfg.model.width}): {detail}"
        ) from None


def probe_set(
    data: Data, n: int = 4096, seed: int = 0, batch: int = 256
) -> list[tuple[Tensor, Tensor]]:
    """The training probe set: the same ``n`` train samples a run with ``train.seed = seed``
    measures lambda_max on, in batches of ``batch``."""
    idx = probe_indices(len(data.train), n, seed)
    return probe_batches(data.train, idx, batch, torch.device("cpu"))


def write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as JSON, creating the parent folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt_io.atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
