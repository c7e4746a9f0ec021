"""GPU training speed: samples/s of ResNet-18 on CIFAR-shaped synthetic data for fp32, bf16,
bf16 + channels_last and bf16 + channels_last + compile, absa's trainer vs a bare PyTorch loop
with the same switches (target >= 0.95x), and the achieved TFLOP/s as a share of the device's
peak (from a table of known devices; "unknown" otherwise). All ratios are measured in one run.

    python scripts/bench_gpu.py [--batch 512] [--steps 30] [--warmup 5]

Without a CUDA device it says so and exits 0 (nothing to measure on a CPU).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

# dense bf16/fp16 tensor-core peak, TFLOP/s (vendor data sheets)
PEAK_TFLOPS = {"A100": 312.0, "H100": 989.0, "H200": 989.0, "L4": 121.0, "A10": 125.0,
               "V100": 125.0, "RTX 4090": 165.0, "RTX 3090": 71.0, "T4": 65.0, "L40": 181.0}  # fmt: skip
COMBOS = {
    "fp32": dict(precision="fp32", channels_last=False, compile=False),
    "bf16": dict(precision="bf16", channels_last=False, compile=False),
    "bf16+cl": dict(precision="bf16", channels_last=True, compile=False),
    "bf16+cl+compile": dict(precision="bf16", channels_last=True, compile=True),
}


def _peak(name: str) -> float | None:
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def _flops_per_sample(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Forward + backward FLOPs of one sample (torch's FLOP counter on a batch)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), torch.zeros(len(x), dtype=torch.long, device=x.device)).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(x)


def _bare(model, x, y, combo, steps, warmup) -> float:
    """A bare loop with the same switches: samples/s."""
    from absa.engine.accel import Precision, prepare_model, to_input

    prec = Precision.create(combo["precision"], x.device)
    net = prepare_model(model, combo["channels_last"], combo["compile"], print)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    xi = to_input(x, combo["channels_last"])
    for i in range(warmup + steps):
        if i == warmup:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with prec.autocast():
            loss = F.cross_entropy(net(xi), y)
        prec.backward(loss)
        prec.step(opt)
    torch.cuda.synchronize()
    return steps * len(x) / (time.perf_counter() - t0)


def _absa(model, x, y, combo, steps, warmup) -> float:
    """absa's trainer path (accumulate_gradients + the runtime's step): samples/s."""
    from absa.distributed import DistEnv
    from absa.engine import loop as T
    from absa.engine.accel import prepare_model
    from absa.engine.step import Attack
    from absa.run import config as C

    cfg = C.load(None, [f"train.precision={combo['precision']}",
                        f"train.channels_last={str(combo['channels_last']).lower()}",
                        f"batch.max_micro_batch={len(x)}", "signals.noise=false"])  # fmt: skip
    env = DistEnv(device=x.device)
    rt = T.Runtime.plain(cfg, x.device)
    attack = Attack.from_config(cfg)
    net = prepare_model(model, combo["channels_last"], combo["compile"], print)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    mask = torch.zeros(len(x), dtype=torch.bool)
    for i in range(warmup + steps):
        if i == warmup:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        T.accumulate_gradients(net, iter([(x, y, mask)]), len(x), env, attack, rt=rt)
        rt.precision.unscale(opt)
        rt.precision.step(opt)
    torch.cuda.synchronize()
    return steps * len(x) / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device on this machine; nothing to measure (exit 0)")
        return 0
    from absa.run.data import DatasetInfo
    from absa.run.models import build_model

    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(dev)
    info = DatasetInfo("synthetic", 10, 3, 32, (0.5,) * 3, (0.25,) * 3, True)
    x = torch.rand(args.batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (args.batch,), device=dev)
    flops = _flops_per_sample(build_model("resnet18", info).to(dev), x[:8])
    peak = _peak(name)
    print(f"bench_gpu: ResNet-18, batch {args.batch}, {args.steps} timed steps on {name}; "
          f"{flops / 1e9:.2f} GFLOP per sample (fwd+bwd); peak {peak or 'unknown'} TFLOP/s")  # fmt: skip
    print(
        f"{'combo':<18} {'bare/s':>9} {'absa/s':>9} {'absa/bare':>9} {'TFLOP/s':>8} {'of peak':>8}"
    )
    for label, combo in COMBOS.items():
        torch.manual_seed(0)
        bare = _bare(build_model("resnet18", info).to(dev), x, y, combo, args.steps, args.warmup)
        torch.manual_seed(0)
        ours = _absa(build_model("resnet18", info).to(dev), x, y, combo, args.steps, args.warmup)
        tflops = ours * flops / 1e12
        share = f"{100 * tflops / peak:.1f}%" if peak else "n/a"
        print(
            f"{label:<18} {bare:>9.0f} {ours:>9.0f} {ours / bare:>9.3f} {tflops:>8.1f} {share:>8}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
