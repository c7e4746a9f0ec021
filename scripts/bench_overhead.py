"""Per-step overhead of absa's training loop: a CPU proxy that CI can hold.

A model and batch so small that a step is nearly all overhead (the ``mlp`` on the embedded
digits, batch 16, one thread): the time per step of ``absa.engine.loop.train_epoch`` over that of
a bare PyTorch loop doing the same math on the same data (same model and initial weights,
same epoch permutation, same crop augmentation, same optimizer, same micro-batching, the
running loss and accuracy kept on the device as a careful loop would). Times are this
process's CPU time (one thread: its wall time when it is not descheduled), so that other
processes on a shared machine disturb the ratio less. absa runs with the gradient-noise
meter off (a bare loop does not measure it); the line ``with noise meter`` shows the default
(``signals.noise: true``) for information. Repetitions are interleaved (bare, absa, absa+noise,
bare, ...) in one process and the medians compared. Target: overhead ratio <= 1.15.

    python scripts/bench_overhead.py [--batch 16] [--micro 16] [--reps 15] [--epochs 3]

The last line is ``overhead ratio: X.XX``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from absa.distributed import DistEnv
from absa.engine import loop as T
from absa.run import config as C
from absa.run.data import (
    apply_augment,
    augment_params,
    epoch_permutation,
    global_batches,
    load_data,
    micro_batches,
    resolve_augment,
)
from absa.run.models import build_model


def _cfg(batch: int, micro: int, noise: bool) -> C.Config:
    return C.load(
        None,
        [
            "data.name=digits",
            "model.name=mlp",
            "model.width=16",
            f"batch.size={batch}",
            f"batch.max_micro_batch={micro}",
            "optim.lr=0.05",
            f"signals.noise={str(noise).lower()}",
        ],
    )


def absa_epoch(cfg: C.Config, data, model, epoch: int) -> tuple[float, int]:
    opt = T.make_optimizer(model, cfg)
    policy = T.policy_for(cfg)
    noise = T.noise_meter(cfg, None)
    t0 = time.process_time()
    st = T.train_epoch(model, opt, data, cfg, DistEnv(), policy, epoch, noise=noise)
    return time.process_time() - t0, st.steps


def bare_epoch(cfg: C.Config, data, model, epoch: int) -> tuple[float, int]:
    """The same epoch as train_epoch computes, written as a plain loop."""
    opt = T.make_optimizer(model, cfg)
    policy = T.policy_for(cfg)
    n, seed = len(data.train), cfg.train.seed
    t0 = time.process_time()
    perm = epoch_permutation(n, seed, epoch)
    mode = resolve_augment(cfg.data.augment, data.info)
    aug = augment_params(n, seed, epoch, mode, data.info.image_size)
    batches = global_batches(n, cfg.batch.size)
    model.train()
    running = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.int64)
    for step, pos in enumerate(batches):
        lr = policy.lr_at(epoch, step / len(batches))
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        for mb in micro_batches(pos, cfg.batch.max_micro_batch):
            x, y = data.train.get(perm[mb])
            x = apply_augment(x, aug.take(mb) if aug is not None else None)
            out = model(x)
            loss = F.cross_entropy(out, y, reduction="sum")
            (loss * (1 / len(pos))).backward()
            running += loss.detach().double()
            correct += (out.detach().argmax(1) == y).sum()
        opt.step()
    _ = running.item(), correct.item()
    return time.process_time() - t0, len(batches)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--micro", type=int, default=16)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--epochs", type=int, default=3, help="epochs per repetition")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = _cfg(args.batch, args.micro, noise=False)
    cfg_noise = _cfg(args.batch, args.micro, noise=True)
    data = load_data(cfg.data)
    runs = {"bare": (bare_epoch, cfg), "absa": (absa_epoch, cfg), "noise": (absa_epoch, cfg_noise)}
    per_step: dict[str, list[float]] = {k: [] for k in runs}
    for rep in range(args.reps + 1):  # the first round warms up and is dropped
        order = list(runs) if rep % 2 else list(reversed(runs))  # no side always goes first
        for name in order:
            fn, c = runs[name]
            torch.manual_seed(0)
            model = build_model(c.model.name, data.info, c.model.width)
            secs = steps = 0
            for epoch in range(args.epochs):
                s, n = fn(c, data, model, epoch)
                secs, steps = secs + s, steps + n
            if rep:
                per_step[name].append(secs / steps)
    med = {k: statistics.median(v) for k, v in per_step.items()}
    steps = len(global_batches(len(data.train), args.batch))
    print(
        f"mlp (width 16) on digits, {len(data.train)} samples, batch {args.batch}, micro "
        f"{args.micro}, {steps} steps per epoch, 1 thread; median over {args.reps} interleaved "
        f"repetitions of {args.epochs} epochs (CPU time per step)"
    )
    print(f"  bare PyTorch loop        : {1e6 * med['bare']:8.1f} us/step")
    print(f"  absa train_epoch         : {1e6 * med['absa']:8.1f} us/step")
    print(f"  with noise meter (default): {1e6 * med['noise']:7.1f} us/step "
          f"({med['noise'] / med['bare']:.2f}x bare)")  # fmt: skip
    print(f"overhead ratio: {med['absa'] / med['bare']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
