"""Whole training epochs: ``absa.engine.loop.train_epoch`` vs a bare PyTorch loop doing the same
math on the same data held on the device (same permutation, micro-batching, loss scaling,
running loss and accuracy), for ResNet-18 at batch 128 and 512 and small_cnn at 128, in fp32,
bf16 + channels_last, bf16 + channels_last + torch.compile, and the same compiled with CUDA
graphs (``train.compile_mode=reduce-overhead``). Then, per case, the share of
an ABSA-like epoch (noise meter on, a fifth of each batch FGSM) taken by the noise meter, by
FGSM crafting and by the rest (from epochs with each switched on alone). Repetitions are
interleaved in one run and medians compared; epoch times include a final synchronize.

    python scripts/bench_epoch.py [--steps 20] [--reps 5]
    python scripts/bench_epoch.py --device cpu --tiny   # seconds-long end-to-end check

Without a CUDA device (and without ``--device cpu``) it says so and exits 0.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F

from absa.distributed import DistEnv
from absa.engine import loop as T
from absa.engine.accel import Precision, prepare_model, to_device_data, to_input
from absa.run import config as C
from absa.run.data import Data, DatasetInfo, TensorSplit, epoch_permutation, global_batches
from absa.run.models import build_model

COMBOS = {  # precision, channels_last, compile, train.compile_mode
    "fp32": ("fp32", False, False, "default"),
    "bf16+cl": ("bf16", True, False, "default"),
    "bf16+cl+compile": ("bf16", True, True, "default"),
    "bf16+cl+graphs": ("bf16", True, True, "reduce-overhead"),  # compile with CUDA graphs
}
CASES = [("resnet18", 128), ("resnet18", 512), ("small_cnn", 128)]
TINY_CASES = [("small_cnn", 16)]
TINY_COMBOS = {k: COMBOS[k] for k in ("fp32", "bf16+cl")}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _cfg(model: str, batch: int, combo: tuple[str, bool, bool, str], noise: bool, adv: float):
    precision, cl, compiled, mode = combo
    return C.load(
        None,
        [
            "data.augment=none",
            f"model.name={model}",
            f"batch.size={batch}",
            f"batch.max_micro_batch={batch}",
            f"train.precision={precision}",
            f"train.channels_last={str(cl).lower()}",
            f"train.compile={str(compiled).lower()}",
            f"train.compile_mode={mode}",
            f"signals.noise={str(noise).lower()}",
            f"adversarial.fraction={adv}",
            "train.deterministic=false",
        ],
    )


def absa_epoch(net, model, data, cfg, dev) -> float:
    opt = T.make_optimizer(model, cfg)
    policy = T.policy_for(cfg)
    noise = T.noise_meter(cfg, None)
    rt = T.Runtime.plain(cfg, dev)
    _sync(dev)
    t0 = time.perf_counter()
    T.train_epoch(net, opt, data, cfg, DistEnv(device=dev), policy, 0, None, noise, rt)
    _sync(dev)
    return time.perf_counter() - t0


def bare_epoch(net, model, data, cfg, dev) -> float:
    """train_epoch's math without absa: same order, loss scaling, statistics on the device."""
    opt = T.make_optimizer(model, cfg)
    policy = T.policy_for(cfg)
    prec = Precision.create(cfg.train.precision, dev)
    n = len(data.train)
    _sync(dev)
    t0 = time.perf_counter()
    perm = epoch_permutation(n, cfg.train.seed, 0)
    batches = global_batches(n, cfg.batch.size)
    stats = torch.zeros(2, dtype=torch.float64, device=dev)
    net.train()
    for step, pos in enumerate(batches):
        for group in opt.param_groups:
            group["lr"] = policy.lr_at(0, step / len(batches))
        opt.zero_grad(set_to_none=True)
        x, y = data.train.get(perm[pos])
        x = to_input(x, cfg.train.channels_last)
        with prec.autocast():
            out = net(x)
            loss = F.cross_entropy(out, y, reduction="sum")
        prec.backward(loss * (1 / len(pos)))
        prec.step(opt)
        stats[0] += loss.detach().double()
        stats[1] += (out.detach().argmax(1) == y).sum()
    _ = stats.tolist()
    _sync(dev)
    return time.perf_counter() - t0


def _data(n: int, dev: torch.device, size: int) -> Data:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (n,), generator=g)
    info = DatasetInfo("synthetic", 10, 3, size, (0.5,) * 3, (0.25,) * 3, True)
    train, _ = to_device_data(TensorSplit(x, y), dev, True)
    return Data(train, TensorSplit(x[:8], y[:8]), info)


def _timed(model_name: str, batch: int, combo: Any, data: Data, dev, runs: dict, reps: int):
    """Medians over ``reps`` interleaved rounds (after one warm-up round) of each run."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    nets = {}
    for name in runs:
        torch.manual_seed(0)
        model = build_model(model_name, data.info).to(dev)
        nets[name] = (prepare_model(model, combo[1], combo[2], print, combo[3]), model)
    for rep in range(reps + 1):
        for name, (fn, cfg) in runs.items():
            net, model = nets[name]
            secs = fn(net, model, data, cfg, dev)
            if rep:
                times[name].append(secs)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto (CUDA or nothing) | cuda | cpu")
    ap.add_argument("--steps", type=int, default=20, help="steps per epoch")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tiny", action="store_true", help="small_cnn, batch 16, 16 px, fp32/bf16")
    args = ap.parse_args()
    if args.device in ("auto", "cuda") and not torch.cuda.is_available():
        print("bench_epoch: no CUDA device on this machine; nothing to measure (exit 0)")
        return 0
    dev = torch.device("cuda" if args.device == "auto" else args.device)
    if dev.type == "cpu":
        torch.set_num_threads(1)  # a shared CPU: threads only add noise at these sizes
    cases, combos = (TINY_CASES, TINY_COMBOS) if args.tiny else (CASES, COMBOS)
    if args.tiny:
        args.steps, args.reps = min(args.steps, 3), min(args.reps, 1)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"bench_epoch: {args.steps} steps per epoch, median of {args.reps} rounds, on {name}")
    print(f"{'model':<10} {'B':>4} {'combo':<16} {'bare s':>8} {'absa s':>8} {'absa/bare':>9} "
          f"{'noise':>6} {'FGSM':>6} {'rest':>6}")  # fmt: skip
    for model_name, batch in cases:
        data = _data(batch * args.steps, dev, 16 if args.tiny else 32)
        for label, combo in combos.items():
            if combo[2] and not hasattr(torch, "compile"):
                continue

            def cfg(noise: bool, adv: float, combo=combo, model_name=model_name, batch=batch):
                return _cfg(model_name, batch, combo, noise, adv)

            runs = {
                "bare": (bare_epoch, cfg(False, 0.0)),
                "absa": (absa_epoch, cfg(False, 0.0)),
                "noise": (absa_epoch, cfg(True, 0.0)),
                "fgsm": (absa_epoch, cfg(False, 0.2)),
                "both": (absa_epoch, cfg(True, 0.2)),
            }
            t = _timed(model_name, batch, combo, data, dev, runs, args.reps)
            both = t["both"]
            noise = max(t["noise"] - t["absa"], 0.0) / both
            fgsm = max(t["fgsm"] - t["absa"], 0.0) / both
            print(
                f"{model_name:<10} {batch:>4} {label:<16} {t['bare']:>8.3f} {t['absa']:>8.3f} "
                f"{t['absa'] / t['bare']:>9.3f} {noise:>6.1%} {fgsm:>6.1%} "
                f"{max(1 - noise - fgsm, 0.0):>6.1%}"
            )
    print("noise/FGSM/rest: shares of an epoch with the noise meter on and FGSM on a fifth")
    return 0


if __name__ == "__main__":
    sys.exit(main())
