"""The PNGs of ``absa hessian --plot`` (matplotlib: imported with this module only)."""

from __future__ import annotations

import time
from pathlib import Path

from absa.api.spectra import HessianResult
from absa.fleet import plots


def hessian_figures(res: HessianResult, folder: Path) -> list[Path]:
    """Draw into ``folder`` what ``res`` holds: the loss landscape along the top eigenvector
    (and the surface on the top two) and the eigenvalue density; none when it holds
    neither. Sets ``res.plots`` and ``res.plots_seconds``."""
    t0 = time.perf_counter()
    spec, files = res.spectrum, []
    if res.landscape is not None:
        lam = spec.eigenvalues[0]
        path = folder / "landscape_1d.png"
        files.append(plots.landscape_1d(res.landscape, lam, res.block, path, res.context))
        if "surface" in res.landscape:
            path = folder / "landscape_2d.png"
            files.append(plots.landscape_2d(res.landscape, res.block, path, res.context))
    if spec.density is not None:
        path = folder / "density.png"
        files.append(plots.density(spec.density, spec.eigenvalues, res.block, path, res.context))
    res.plots_seconds = time.perf_counter() - t0
    res.plots = [str(f) for f in files]
    return files
