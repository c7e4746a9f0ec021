"""PNG figures (matplotlib, Agg backend): landscapes, eigenvalue density, run trajectories."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from absa.checkpoint import atomic_write_bytes  # noqa: E402
from absa.hessian import Density, density_on_grid  # noqa: E402


def _save(fig: Any, path: Path) -> Path:
    atomic_write_bytes(path, lambda fh: fig.savefig(fh, format="png", dpi=120))
    plt.close(fig)
    return path


def landscape_1d(land: dict[str, Any], eigenvalue: float, block: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    styles = {"train": ("C0", "-", "o"), "test": ("C3", "--", "s")}
    for name, curve in land["curves"].items():
        color, ls, marker = styles.get(name, ("C2", ":", "^"))
        ax.plot(
            land["alphas"], curve, color=color, ls=ls, marker=marker, ms=3, label=f"{name} loss"
        )
    ax.set_xlabel(f"step along the top Hessian eigenvector ({block} block), parameter-norm units")
    ax.set_ylabel("mean cross-entropy loss")
    ax.set_title(f"1D loss landscape, lambda_max = {eigenvalue:.4g}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def landscape_2d(land: dict[str, Any], block: str, path: Path) -> Path:
    surf = land["surface"]
    z = torch.tensor(surf["loss"])
    a = torch.tensor(surf["alphas"])
    b = torch.tensor(surf["betas"])
    fig = plt.figure(figsize=(11, 4.5))
    ax1 = fig.add_subplot(1, 2, 1, projection="3d")
    aa, bb = torch.meshgrid(a, b, indexing="ij")
    ax1.plot_surface(aa.numpy(), bb.numpy(), z.numpy(), cmap="viridis", alpha=0.9)
    ax1.set_xlabel("top eigenvector v1")
    ax1.set_ylabel("second eigenvector v2")
    ax1.set_zlabel(f"{surf['split']} loss")
    ax2 = fig.add_subplot(1, 2, 2)
    cs = ax2.contourf(aa.numpy(), bb.numpy(), z.numpy(), levels=20, cmap="viridis")
    fig.colorbar(cs, ax=ax2, label=f"{surf['split']} loss")
    ax2.set_xlabel("step along v1")
    ax2.set_ylabel("step along v2")
    ax2.set_title(f"2D loss surface ({block} block)")
    fig.tight_layout()
    return _save(fig, path)


def density(den: dict[str, Any], eigenvalues: list[float], block: str, path: Path) -> Path:
    d = Density(den["nodes"], den["weights"], 0)
    lo = min(min(n) for n in d.nodes)
    hi = max(max(n) for n in d.nodes)
    span = max(hi - lo, 1e-12)
    sigma = span / 100
    grid = torch.linspace(lo - 0.05 * span, hi + 0.05 * span, 1000)
    phi = density_on_grid(d, grid, sigma)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.semilogy(grid.numpy(), (phi + 1e-12).numpy(), color="C0", label="SLQ density")
    for i, lam in enumerate(eigenvalues):
        ax.axvline(lam, color="C3", ls=":", lw=1, label="top-k eigenvalues" if i == 0 else None)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (log scale)")
    ax.set_title(f"Hessian eigenvalue density ({block} block)")
    ax.set_ylim(bottom=1e-8)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)
