"""Top-k Hessian eigenvalues of every finished run of a sweep, side by side.

For each run folder (config.yaml + last.pt + summary.json) of SWEEP_DIR, computes the top-k
eigenvalues (Lanczos) of the mean training loss on a fixed sample of the train split, on the
chosen block (``full`` by default; ``last`` is cheaper), with BatchNorm in eval mode; also the
clean and FGSM test accuracy. Writes hessian.json, hessian.md and top_eigenvalues.png into --out.

    absa sweep configs/sweeps/hessian_analysis.yaml
    python scripts/hessian_analysis.py sweeps/hessian_analysis --out docs/hessian_analysis
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from absa.distributed import DistEnv
from absa.engine import analysis as A
from absa.engine.evaluation import evaluate, robust_accuracy
from absa.fleet.plots import plot_spectra
from absa.run import checkpoint as ckpt_io
from absa.run import config as C
from absa.run.data import load_data
from absa.run.folder import atomic_write_text
from absa.run.models import build_model


def label_of(cfg: C.Config) -> str:
    r = cfg.adv_fraction
    adv = f"adversarial r={r:g}, eps={cfg.adversarial.eps:g}" if r > 0 else "clean"
    return f"B={cfg.batch.size} ({cfg.schedule.method.upper()}), {adv}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("sweep_dir", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("-k", type=int, default=20)
    ap.add_argument("--block", default="full")
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--max-iter", type=int, default=60)
    ap.add_argument("--eps", type=float, default=0.03, help="FGSM eps for robust accuracy")
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = args.out or args.sweep_dir / "hessian"
    root = args.sweep_dir / "runs" if (args.sweep_dir / "runs").is_dir() else args.sweep_dir
    env = DistEnv()
    results, rows = {}, []
    for folder in sorted(p for p in root.iterdir() if (p / "summary.json").is_file()):
        ck = ckpt_io.load(folder / ckpt_io.LAST)
        cfg = C.from_dict(ck["config"], str(folder))
        data = load_data(cfg.data)
        model = build_model(cfg.model.name, data.info, cfg.model.width)
        model.load_state_dict(ck["model"])
        batches = A.batches_of(data.train, args.samples, 256, env.device, seed=0)
        req = A.SpectrumRequest(
            block=args.block, k=args.k, method="lanczos", max_iter=args.max_iter,
            trace_samples=0, density_iter=0,
        )  # fmt: skip
        t0 = time.perf_counter()
        spec = A.spectrum(model, batches, req)
        clean = evaluate(model, data.test, env)
        fgsm = robust_accuracy(model, data.test, env, [args.eps], "fgsm")[args.eps]
        label = label_of(cfg)
        results[label] = spec.eigenvalues
        rows.append(
            {
                "run": folder.name,
                "label": label,
                "eigenvalues": spec.eigenvalues,
                "converged": spec.converged,
                "hvps": spec.eigen_hvps,
                "test_acc": clean.acc,
                "fgsm_acc": fgsm.acc,
                "train_loss": A.mean_loss(model, batches),
            }
        )
        print(
            f"{folder.name}: lambda_1 {spec.eigenvalues[0]:.4g}, lambda_{args.k} "
            f"{spec.eigenvalues[-1]:.4g} ({spec.eigen_hvps} HVPs, {time.perf_counter() - t0:.0f}s); "
            f"test {clean.acc:.2f}%, FGSM({args.eps:g}) {fgsm.acc:.2f}%"
        )
    if not rows:
        raise SystemExit(f"{args.sweep_dir}: no finished runs")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "hessian.json", json.dumps(rows, indent=2) + "\n")
    md = [
        f"Top-{args.k} Hessian eigenvalues ({args.block} block, {args.samples} training samples, "
        "BatchNorm in eval mode), test accuracy and FGSM "
        f"(eps={args.eps:g}) accuracy of each model.",
        "",
        f"| model | lambda_1 | lambda_5 | lambda_{args.k} | train loss | test acc % | FGSM acc % |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        e = r["eigenvalues"]
        md.append(
            f"| {r['label']} | {e[0]:.4g} | {e[min(4, len(e) - 1)]:.4g} | {e[-1]:.4g} | "
            f"{r['train_loss']:.4f} | {r['test_acc']:.2f} | {r['fgsm_acc']:.2f} |"
        )
    atomic_write_text(out / "hessian.md", "\n".join(md) + "\n")
    plot_spectra(
        results,
        out / "top_eigenvalues.png",
        title=f"Top-{args.k} Hessian eigenvalues ({args.block} block)",
    )
    print(f"wrote {out / 'hessian.md'}, {out / 'hessian.json'}, {out / 'top_eigenvalues.png'}")


if __name__ == "__main__":
    main()
