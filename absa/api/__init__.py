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

Every name is imported on first use (``__getattr__`` below): torch, and matplotlib for the
figures, load only when a function needs them, so ``absa --help`` stays fast. The modules:
``training`` (configs, run folders, ``train``), ``runs`` (checkpoints, data), ``measures``
(evaluation, eigenvalues), ``spectra`` (``absa hessian``), ``figures`` (its PNGs),
``workers`` (multi-process launch); the error classes, sweeps and reports are re-exported
from the layers below.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module that holds it
_HOMES = {
    **dict.fromkeys(
        [
            "Result",
            "load_config",
            "config_yaml",
            "check_device",
            "ignored_notes",
            "run_folder",
            "check_launch",
            "train",
        ],
        "absa.api.training",
    ),  # fmt: skip
    **dict.fromkeys(
        ["Loaded", "load_run", "open_model", "probe_set", "tensor_data", "write_json"],
        "absa.api.runs",
    ),
    **dict.fromkeys(["evaluate", "evaluate_run", "top_eigenvalues"], "absa.api.measures"),
    **dict.fromkeys(["HessianRequest", "HessianResult", "hessian_analysis"], "absa.api.spectra"),
    "hessian_figures": "absa.api.figures",
    **dict.fromkeys(["LaunchFailed", "end_if_worker", "launch"], "absa.api.workers"),
    # the failures a caller (the CLI) reports as one line
    "ConfigError": "absa.run.config",
    "DataError": "absa.run.data",
    "ModelError": "absa.run.models",
    "CheckpointError": "absa.run.checkpoint",
    "RunFolderError": "absa.run.folder",
    "TrainingDiverged": "absa.engine.loop",
    "is_oom": "absa.engine.accel",
    # the run folder's config file (absa.run.folder owns every file name)
    "CONFIG": "absa.run.folder",
    # sweeps and reports
    "run_sweep": "absa.fleet.sweep",
    "make_report": "absa.fleet.report",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'absa.api' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
