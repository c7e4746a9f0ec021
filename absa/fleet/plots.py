"""PNG figures of ``absa hessian`` (matplotlib, Agg backend): loss landscapes along the top
Hessian eigenvectors and the eigenvalue density (``context``, e.g. ``"run absa-b512-s0,
digits, small_cnn"``, goes into their titles), and the top eigenvalues of several models
side by side (``plot_spectra``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from absa.core.hessian import Density, density_on_grid  # noqa: E402
from absa.core.landscape import quadratic_model  # noqa: E402
from absa.run.folder import atomic_write_bytes  # noqa: E402

SMOOTH = 6  # landscape_2d draws the surface on a grid this many times finer (interpolated)
SMOOTHING = 0.01  # Gaussian width of the density plot, as a fraction of the spectrum's span


def save(fig: Any, path: Path) -> Path:
    """Write ``fig`` to ``path`` as a PNG (atomically) and close it."""
    atomic_write_bytes(path, lambda fh: fig.savefig(fh, format="png", dpi=120))
    plt.close(fig)
    return path


def _title(what: str, context: str) -> str:
    return f"{what}\n{context}" if context else what


def landscape_1d(
    land: dict[str, Any], eigenvalue: float, block: str, path: Path, context: str = ""
) -> Path:
    """Loss along the top eigenvector per split, with the quadratic model 0.5 lambda a^2."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    styles = {"train": ("C0", "-", "o"), "test": ("C3", "--", "s")}
    alphas = land["alphas"]
    for name, curve in land["curves"].items():
        color, ls, marker = styles.get(name, ("C2", ":", "^"))
        ax.plot(alphas, curve, color=color, ls=ls, marker=marker, ms=3, label=f"{name} loss")
    first = next(iter(land["curves"].values()), None)
    if first and eigenvalue > 0:
        base = first[len(first) // 2]
        ax.plot(
            alphas,
            quadratic_model(eigenvalue, alphas, base),
            color="0.5",
            ls=":",
            lw=1.2,
            label="quadratic model L0 + λ a²/2",
        )
    lo = min(min(c) for c in land["curves"].values())
    hi = max(max(c) for c in land["curves"].values())
    ax.set_ylim(lo - 0.05 * (hi - lo + 1e-12), hi + 0.1 * (hi - lo + 1e-12))
    ax.set_xlabel(f"step a along the top Hessian eigenvector ({block} block), parameter units")
    ax.set_ylabel("mean cross-entropy loss")
    ax.set_title(_title(f"1D loss landscape, λ_max = {eigenvalue:.4g}", context), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, path)


def landscape_2d(land: dict[str, Any], block: str, path: Path, context: str = "") -> Path:
    """Loss on the plane of the top two eigenvectors: 3D surface and contour map, both drawn
    from a bicubic interpolation of the measured grid (SMOOTH x finer; no extra loss
    evaluations), the measured points marked on the map."""
    surf = land["surface"]
    coarse = torch.tensor(surf["loss"], dtype=torch.float64)
    a0, b0 = torch.tensor(surf["alphas"]), torch.tensor(surf["betas"])
    n, m = coarse.shape
    size = ((n - 1) * SMOOTH + 1, (m - 1) * SMOOTH + 1)
    z = F.interpolate(coarse[None, None], size=size, mode="bicubic", align_corners=True)[0, 0]
    z = z.numpy()
    a = torch.linspace(float(a0[0]), float(a0[-1]), size[0])
    b = torch.linspace(float(b0[0]), float(b0[-1]), size[1])
    aa, bb = (t.numpy() for t in torch.meshgrid(a, b, indexing="ij"))
    fig = plt.figure(figsize=(10.5, 4.6))
    grid = fig.add_gridspec(1, 2, width_ratios=(1.2, 1.0), wspace=0.14)
    ax1 = fig.add_subplot(grid[0, 0], projection="3d")
    ax1.plot_surface(
        aa, bb, z, cmap="viridis", rcount=size[0], ccount=size[1], linewidth=0, antialiased=False
    )
    ax1.set_xlabel("v1 step", labelpad=-2)
    ax1.set_ylabel("v2 step", labelpad=-2)
    ax1.set_zlabel(f"{surf['split']} loss", labelpad=-1)
    ax1.tick_params(labelsize=7, pad=0)
    ax1.view_init(elev=28, azim=-55)
    ax1.set_box_aspect(None, zoom=1.25)
    ax2 = fig.add_subplot(grid[0, 1])
    cs = ax2.contourf(aa, bb, z, levels=20, cmap="viridis")
    ax2.contour(aa, bb, z, levels=10, colors="k", linewidths=0.4, alpha=0.5)
    ga, gb = torch.meshgrid(a0, b0, indexing="ij")
    ax2.plot(ga.flatten(), gb.flatten(), ".", color="w", ms=1.5, alpha=0.6)  # measured
    ax2.plot([0], [0], marker="+", color="w", ms=10, mew=2)
    fig.colorbar(cs, ax=ax2, label=f"{surf['split']} loss", fraction=0.05, pad=0.03)
    ax2.set_xlabel("step along v1 (top eigenvector)")
    ax2.set_ylabel("step along v2")
    ax2.set_aspect("equal")
    for axis in (ax1.xaxis, ax1.yaxis, ax2.xaxis, ax2.yaxis):
        axis.set_major_locator(MaxNLocator(5))
    fig.suptitle(
        _title(
            f"2D loss surface, {block} block (+: trained weights; dots: the {n}x{m} "
            "measured points, bicubic in between)",
            context,
        ),
        fontsize=10,
    )
    fig.subplots_adjust(left=0.0, right=0.93, bottom=0.11, top=0.86)
    return save(fig, path)


def density(
    den: dict[str, Any], eigenvalues: list[float], block: str, path: Path, context: str = ""
) -> Path:
    """SLQ eigenvalue density: Gaussian-smoothed on a linear axis (the smoothing width is in
    the legend), and below it the quadrature itself (Ritz values and their weights, log
    axis), which shows outliers without smoothing artefacts."""
    d = Density(den["nodes"], den["weights"], 0)
    lo = min(min(n) for n in d.nodes)
    hi = max(max(n) for n in d.nodes)
    span = max(hi - lo, 1e-12)
    sigma = SMOOTHING * span
    grid = torch.linspace(lo - 0.05 * span, hi + 0.05 * span, 1000)
    phi = density_on_grid(d, grid, sigma)
    fig, (ax, ax2) = plt.subplots(
        2, 1, figsize=(6.5, 5.2), sharex=True, gridspec_kw={"height_ratios": (2, 1.3)}
    )
    ax.plot(
        grid.numpy(),
        phi.numpy(),
        color="C0",
        label=f"SLQ density, Gaussian smoothing σ = {sigma:.3g}\n"
        f"({SMOOTHING:.0%} of the Ritz-value span)",
    )
    ax.fill_between(grid.numpy(), phi.numpy(), color="C0", alpha=0.15)
    ax.set_ylabel("density (linear)")
    ax.set_ylim(bottom=0)
    runs = len(d.nodes)
    for i, (nodes, weights) in enumerate(zip(d.nodes, d.weights, strict=True)):
        w = [max(x / runs, 1e-16) for x in weights]
        ax2.vlines(nodes, 1e-16, w, color=f"C{i % 10}", lw=1, alpha=0.8)
        ax2.plot(
            nodes, w, "o", color=f"C{i % 10}", ms=3, label=f"run {i + 1}" if runs > 1 else None
        )
    ax2.set_yscale("log")
    weights_all = [max(x / runs, 1e-16) for ws in d.weights for x in ws]
    ax2.set_ylim(min(weights_all) / 3, 2)
    ax2.set_ylabel("Ritz weight τ\n(log)")
    ax2.set_xlabel("eigenvalue")
    for a in (ax, ax2):
        for i, lam in enumerate(eigenvalues):
            a.axvline(lam, color="C3", ls=":", lw=1, label="top-k (Lanczos)" if i == 0 else None)
        a.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax2.legend(fontsize=7, ncol=4, loc="lower left")
    ax.set_title(_title(f"Hessian eigenvalue density ({block} block)", context), fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def plot_spectra(
    results: dict[str, list[float]], path: str | Path, title: str = "Top Hessian eigenvalues"
) -> Path:
    """Top-k Hessian eigenvalues of several models side by side (grouped bars, log y axis).

    ``results`` maps a label (e.g. ``"B=4096, adversarial"``) to its eigenvalues.
    Non-positive eigenvalues switch the y axis to symlog.
    """
    path = Path(path)
    labels = list(results)
    k = max((len(v) for v in results.values()), default=0)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.0 + 0.9 * k), 4.5))
    width = 0.8 / max(len(labels), 1)
    hatches = ("", "//", "..", "xx", "\\\\", "++", "oo", "--")
    values = [float(v) for vs in results.values() for v in vs]
    for i, label in enumerate(labels):
        eig = sorted((float(v) for v in results[label]), reverse=True)
        xs = [j + 1 + (i - (len(labels) - 1) / 2) * width for j in range(len(eig))]
        ax.bar(
            xs,
            eig,
            width=width,
            label=label,
            color=f"C{i % 10}",
            hatch=hatches[i % len(hatches)],
            edgecolor="black",
            lw=0.5,
        )
    scale = "log scale"
    if values and min(values) > 0:
        ax.set_yscale("log")
    elif values:
        scale = "symlog scale"
        nonzero = [abs(v) for v in values if v != 0]
        ax.set_yscale("symlog", linthresh=min(nonzero) if nonzero else 1.0)
        ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(1, k + 1))
    ax.set_xticklabels([f"λ{j}" for j in range(1, k + 1)])
    ax.set_xlabel("eigenvalue rank")
    ax.set_ylabel(f"Hessian eigenvalue ({scale})")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y", which="both")
    if labels:
        ax.legend(fontsize=9)
    fig.tight_layout()
    return save(fig, path)
