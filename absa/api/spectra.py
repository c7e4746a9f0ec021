"""``absa hessian``: the Hessian spectrum of a model, and its loss landscape on request."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from absa.api.runs import Loaded
from absa.engine import analysis as A


@dataclass
class HessianRequest:
    """What to measure; None: the run's setting (hessian.*, train.seed)."""

    split: str = "train"  # train | test
    samples: int | None = None  # random samples of the split (hessian.probe_size)
    block: str | None = None  # last | full | name patterns (hessian.block)
    k: int = 5
    method: str = "lanczos"  # lanczos | power
    max_iter: int = 100
    rtol: float = 1e-3
    trace_samples: int = 0  # Hutchinson samples; 0: no trace
    density_iter: int = 0  # Lanczos steps per SLQ run; 0: no density
    density_runs: int = 3
    batch: int = 256  # micro-batch of HVPs and losses
    seed: int | None = None  # sample and random starts (train.seed)
    landscape_points: int | None = None  # per landscape axis; None: no landscape
    radius: float | None = None  # landscape half-width (sqrt(2 / lambda_max))


@dataclass
class HessianResult:
    """The spectrum of ``hessian_analysis`` and what it was measured on."""

    source: str  # the checkpoint, or "<config> (fresh init)"
    context: str  # figure subtitle: run, dataset, model
    split: str
    block: str
    method: str
    spectrum: A.Spectrum
    epoch: int | None  # the checkpoint's (None: fresh init)
    landscape: dict[str, Any] | None = None
    landscape_seconds: float | None = None
    plots_seconds: float | None = None  # set by hessian_figures
    plots: list[str] | None = None  # the PNGs hessian_figures wrote

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``absa hessian --json``."""
        s = self.spectrum
        out: dict[str, Any] = {
            "source": self.source, "split": self.split, "block": self.block,
            "block_size": s.block_size, "samples": s.samples, "method": self.method,
            "eigenvalues": s.eigenvalues, "converged": s.converged, "eigen_hvps": s.eigen_hvps,
            "eigen_seconds": s.eigen_seconds, "hvp_seconds": s.hvp_seconds, "trace": s.trace,
            "trace_std_err": s.trace_std_err, "trace_hvps": s.trace_hvps,
            "trace_seconds": s.trace_seconds, "density": s.density,
            "density_hvps": s.density_hvps, "density_seconds": s.density_seconds,
            "epoch": self.epoch,
        }  # fmt: skip
        if self.landscape is not None:
            out.update(landscape=self.landscape, landscape_seconds=self.landscape_seconds)
        if self.plots is not None:
            out.update(plots_seconds=self.plots_seconds, plots=self.plots)
        return out


def figure_context(loaded: Loaded) -> str:
    """``run absa-b512-s0, digits, small_cnn (width 16)``: the figures' subtitle."""
    if loaded.path is not None:
        path = loaded.path
        where = f"run {(path.parent if path.suffix == '.pt' else path).name}"
    else:
        where = f"{loaded.config.name if loaded.config else 'defaults'} (fresh init)"
    cfg = loaded.cfg
    return f"{where}, {cfg.data.name}, {cfg.model.name} (width {cfg.model.width})"


def hessian_analysis(
    loaded: Loaded,
    req: HessianRequest,
    say: Callable[[str], None] | None = None,
    progress: A.Progress | None = None,
) -> HessianResult:
    """Top-k eigenvalues (trace, density and loss landscape on request) of the Hessian of
    the mean cross-entropy over a fixed random sample of a split, BatchNorm in eval mode.
    ``say`` gets each phase's expected cost, ``progress(phase, done, total)`` its steps."""
    cfg, env, data, model = loaded.cfg, loaded.env, loaded.data, loaded.model
    blk = req.block or cfg.hessian.block
    n = req.samples if req.samples is not None else cfg.hessian.probe_size
    seed = cfg.train.seed if req.seed is None else req.seed
    chosen = data.train if req.split == "train" else data.test
    batches = A.batches_of(chosen, n, req.batch, env.device, seed)
    spec_req = A.SpectrumRequest(
        block=blk, k=req.k, method=req.method, max_iter=max(req.max_iter, req.k), rtol=req.rtol,
        trace_samples=req.trace_samples, density_iter=req.density_iter,
        density_runs=req.density_runs, seed=seed, hvp=cfg.hessian.hvp,
        keep_graph=cfg.hessian.keep_graph,
    )  # fmt: skip
    ck = loaded.checkpoint
    out = HessianResult(
        loaded.source, figure_context(loaded), req.split, blk, req.method,
        A.spectrum(model, batches, spec_req, say, progress), ck["epoch"] if ck else None,
    )  # fmt: skip
    if req.landscape_points is not None:
        t0 = time.perf_counter()
        splits = {s: A.batches_of(getattr(data, s), n, req.batch, env.device, seed)
                  for s in ("train", "test")}  # fmt: skip
        land = A.LandscapeRequest(req.landscape_points, req.radius, req.max_iter, req.rtol, seed)
        out.landscape = A.landscape_near(model, out.spectrum, batches, splits, land, say, progress)
        out.landscape_seconds = time.perf_counter() - t0
    return out
