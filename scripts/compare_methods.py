"""Compare BL (small batch), BL and FB at a large batch, GG, ABS and ABSA in one table.

Trains each configs/digits_*.yaml variant (and configs/digits_bl.yaml, the small-batch BL)
for the given seeds on the embedded digits data, then prints test accuracy (mean +- std over
seeds), # SGD updates, the update reduction against small-batch BL, the final batch size,
and what triggered the batch growths of ABS/ABSA (eigenvalue drop vs duration fallback).
Finished runs in --out are reused, so the script can be interrupted and re-run.

    python scripts/compare_methods.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from absa.engine import loop as T
from absa.run import config as C
from absa.run.folder import read_metrics

ROOT = Path(__file__).resolve().parents[1]
METHODS = [  # label, config
    ("BL (small batch)", "configs/digits_bl.yaml"),
    ("BL (large batch)", "configs/digits_bl_large.yaml"),
    ("FB (large batch)", "configs/digits_fb.yaml"),
    ("GG", "configs/digits_gg.yaml"),
    ("ABS", "configs/digits_abs.yaml"),
    ("ABSA", "configs/digits_absa.yaml"),
]


def run_one(config: Path, seed: int, out: Path, overrides: list[str]) -> dict:
    name = f"{config.stem}-s{seed}"
    folder = out / name
    if (folder / "summary.json").is_file():
        summary = json.loads((folder / "summary.json").read_text())
    else:
        cfg = C.load(config, [f"train.seed={seed}", f"train.out_dir={out}", *overrides])
        resume = (folder / "last.pt").is_file()
        t0 = time.perf_counter()
        s = T.run(cfg, run_dir=folder, resume=resume)
        summary = s.__dict__
        print(
            f"  {name}: {s.test_acc:.2f}% in {s.updates} updates ({time.perf_counter() - t0:.0f}s)"
        )
    metrics = read_metrics(folder)
    triggers = [m["growth"]["trigger"] for m in metrics if m.get("growth")]
    return {**summary, "triggers": triggers}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "compare")
    ap.add_argument("overrides", nargs="*", help="dotted overrides applied to every run")
    args = ap.parse_args()
    torch.set_num_threads(2)

    rows = []
    for label, cfg_path in METHODS:
        print(f"{label}: {cfg_path}")
        cfg = C.load(ROOT / cfg_path, args.overrides)
        runs = [run_one(ROOT / cfg_path, s, args.out, args.overrides) for s in args.seeds]
        accs = [r["test_acc"] for r in runs]
        rows.append(
            {
                "label": label,
                "B": cfg.schedule.max_batch
                if cfg.schedule.method in ("gg", "abs", "absa")
                else cfg.batch.size,
                "start": cfg.batch.size,
                "acc": statistics.fmean(accs),
                "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "updates": statistics.fmean(r["updates"] for r in runs),
                "final": max(r["final_batch"] for r in runs),
                "eig": sum(r["triggers"].count("eigenvalue") for r in runs),
                "dur": sum(r["triggers"].count("duration") for r in runs),
            }
        )

    base = rows[0]
    print()
    print(f"digits, small_cnn, 30 epochs, seeds {args.seeds}; accuracy = final-epoch test accuracy")
    head = f"{'method':<18} {'B':>5} {'start':>5} {'test acc %':>14} {'updates':>8} {'fewer':>6} {'final B':>7}  growths (eig/fallback)"
    print(head)
    print("-" * len(head))
    for r in rows:
        grow = f"{r['eig']}/{r['dur']}" if r["eig"] + r["dur"] else "-"
        print(
            f"{r['label']:<18} {r['B']:>5} {r['start']:>5} {r['acc']:>7.2f} +- {r['std']:<4.2f} "
            f"{r['updates']:>8.0f} {base['updates'] / r['updates']:>5.1f}x {r['final']:>7}  {grow}"
        )
    absa = next(r for r in rows if r["label"] == "ABSA")
    fb = next(r for r in rows if r["label"].startswith("FB"))
    gap = base["acc"] - absa["acc"]
    ratio = base["updates"] / absa["updates"]
    print()
    print(
        f"ABSA vs small-batch BL: {gap:+.2f} pt accuracy gap (goal <= 0.5), "
        f"{ratio:.1f}x fewer updates (goal >= 5): "
        f"{'met' if gap <= 0.5 and ratio >= 5 else 'NOT met'}"
    )
    print(f"FB at B={fb['B']}: {base['acc'] - fb['acc']:+.2f} pt below small-batch BL")


if __name__ == "__main__":
    main()
