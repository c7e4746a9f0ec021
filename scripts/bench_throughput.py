"""Trainer overhead and accumulation memory, measured in one run.

1. Throughput: samples/s of absa's training epoch vs a bare PyTorch loop (same model, same
   batch, same in-memory data, no augmentation), alternating the two a few times and taking
   the best of each. Target: trainer >= 0.95x bare.
2. Memory: peak RSS of one training epoch at logical batch 128 vs 4096, both accumulated
   from micro-batches of 128, each in a fresh subprocess. Target: <= 1.2x.

    python scripts/bench_throughput.py [--model small_cnn] [--samples 4096] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from absa.distributed import DistEnv
from absa.engine import loop as T
from absa.run import config as C
from absa.run.data import load_data
from absa.run.models import build_model


def _cfg(model: str, samples: int, batch: int, micro: int) -> C.Config:
    return C.load(
        None,
        [
            "data.name=synthetic",
            f"data.train_size={samples}",
            "data.test_size=256",
            "data.augment=none",
            f"model.name={model}",
            f"batch.size={batch}",
            f"batch.max_micro_batch={micro}",
            "train.epochs=1",
            "train.deterministic=false",
        ],
    )


def trainer_epoch(cfg: C.Config, data, model) -> float:
    opt = T.make_optimizer(model, cfg)
    policy = T.policy_for(cfg)
    t0 = time.perf_counter()
    T.train_epoch(model, opt, data, cfg, DistEnv(), policy, 0)
    return len(data.train) / (time.perf_counter() - t0)


def bare_epoch(cfg: C.Config, data, model) -> float:
    opt = T.make_optimizer(model, cfg)
    n, b = len(data.train), cfg.batch.size
    x_all, y_all = data.train.get(torch.arange(n))
    perm = torch.randperm(n)
    model.train()
    t0 = time.perf_counter()
    for s in range(0, n, b):
        idx = perm[s : s + b]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x_all[idx]), y_all[idx]).backward()
        opt.step()
    return n / (time.perf_counter() - t0)


def child_memory(model_name: str, samples: int, batch: int, micro: int) -> None:
    cfg = _cfg(model_name, samples, batch, micro)
    torch.manual_seed(0)
    data = load_data(cfg.data)
    model = build_model(cfg.model.name, data.info, cfg.model.width)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    trainer_epoch(cfg, data, model)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"before_kb": before, "peak_kb": peak}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="small_cnn")
    ap.add_argument("--samples", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child-memory", nargs=2, type=int, metavar=("BATCH", "MICRO"))
    args = ap.parse_args()
    if args.child_memory:
        child_memory(args.model, args.samples, *args.child_memory)
        return

    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg = _cfg(args.model, args.samples, args.batch, args.batch)
    data = load_data(cfg.data)
    best = {"trainer": 0.0, "bare": 0.0}
    for _ in range(args.repeats):
        for name, fn in (("bare", bare_epoch), ("trainer", trainer_epoch)):
            torch.manual_seed(0)
            model = build_model(cfg.model.name, data.info, cfg.model.width)
            best[name] = max(best[name], fn(cfg, data, model))
    ratio = best["trainer"] / best["bare"]
    print(f"model {args.model}, {args.samples} samples, batch {args.batch}, best of {args.repeats}")
    print(f"  bare PyTorch loop : {best['bare']:9.1f} samples/s")
    print(f"  absa trainer      : {best['trainer']:9.1f} samples/s")
    print(
        f"  throughput ratio  : {ratio:.3f}  (target >= 0.95)  {'OK' if ratio >= 0.95 else 'MISS'}"
    )

    def peak(logical: int, micro: int) -> dict[str, int]:
        cmd = [sys.executable, __file__, "--model", args.model, "--samples", str(args.samples)]
        cmd += ["--child-memory", str(logical), str(micro)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    runs = {
        "logical batch  128, micro 128 ": peak(128, 128),
        "logical batch 4096, micro 128 ": peak(4096, 128),
        "logical batch 4096, no micro  ": peak(4096, 4096),  # control: the probe can see growth
    }
    print("peak RSS of one epoch (separate processes):")
    for name, m in runs.items():
        grow = (m["peak_kb"] - m["before_kb"]) / 1024
        print(f"  {name}: {m['peak_kb'] / 1024:8.1f} MiB (training adds {grow:.1f} MiB)")
    vals = list(runs.values())
    mratio = vals[1]["peak_kb"] / vals[0]["peak_kb"]
    print(
        f"  memory ratio 4096/128 (micro 128): {mratio:.3f}  (target <= 1.2)  "
        f"{'OK' if mratio <= 1.2 else 'MISS'}"
    )


if __name__ == "__main__":
    main()
