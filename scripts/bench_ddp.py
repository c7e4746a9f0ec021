"""Data-parallel overhead on CPU: epoch time of 1 vs 2 gloo ranks, split into compute,
communication and Hessian, measured in one run (no targets asserted).

Each world size runs in freshly spawned processes (one torch thread each, so 2 ranks use 2
cores and 1 rank uses one). Every epoch is absa's own code path: ``train.train_epoch`` on
the DDP-wrapped model (global batch split over ranks, micro-batches with no_sync but the
last), then ``probes.hessian_probe`` (top Hessian eigenvalue on the probe set, each rank
holding a shard, HVPs all-reduced), as ``train.run`` does when the policy asks for a probe.
Evaluation and checkpoints are left out.

How the time is split (per epoch, rank 0, mean over the epochs after the first, which warms
up allocators and DDP's buckets):

* Hessian: wall time of the probe, including its HVP all-reduces (shown separately).
* communication: wall time inside all-reduces during training. DDP's gradient all-reduce is
  replaced by a comm hook that runs the same all-reduce synchronously between two timers
  (the small CNN's gradients fit in one DDP bucket, which is only ready at the end of the
  backward pass, so nothing overlapped with it anyway); the trainer's other collectives
  (loss finiteness check per step, epoch statistics) are timed through ``DistEnv``. The
  time includes waiting for the slower rank.
* compute: the rest of the training epoch (data, forward, backward, optimizer).

    python scripts/bench_ddp.py [--model small_cnn] [--samples 4096] [--batch 256]
                                [--epochs 4] [--probe 1024] [--block last] [--worlds 1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from absa import distributed as D
from absa.engine import loop as T
from absa.engine.probes import ProbeSettings, hessian_probe, probe_indices
from absa.run import config as C
from absa.run.data import load_data
from absa.run.models import build_model


class TimedEnv(D.DistEnv):
    """A DistEnv whose all-reduces add their wall time to ``seconds[phase]``."""

    phase = "train"

    def __init__(self, base: D.DistEnv) -> None:
        super().__init__(base.rank, base.world_size, base.local_rank, base.device, base.backend)
        self.seconds = {"train": 0.0, "hessian": 0.0}

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        out = super().all_reduce_sum(t)
        self.seconds[self.phase] += time.perf_counter() - t0
        return out


def _cfg(a: argparse.Namespace) -> C.Config:
    return C.load(
        None,
        [
            "data.name=synthetic",
            f"data.train_size={a.samples}",
            "data.test_size=256",
            "data.augment=none",
            f"model.name={a.model}",
            f"batch.size={a.batch}",
            f"batch.max_micro_batch={a.micro}",
            f"train.epochs={a.epochs}",
            "train.deterministic=false",
            f"hessian.probe_size={a.probe}",
            f"hessian.block={a.block}",
            "hessian.max_iter=20",
        ],
    )


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    D.set_local_env(rank, world, port)
    torch.set_num_threads(1)
    base = D.setup("cpu", "gloo", timeout_s=600)
    env = TimedEnv(base)
    ok = False
    try:
        cfg = _cfg(args)
        torch.manual_seed(cfg.train.seed)
        data = load_data(cfg.data)
        model = build_model(cfg.model.name, data.info, cfg.model.width)
        optimizer = T.make_optimizer(model, cfg)
        policy = T.policy_for(cfg)
        ddp = D.wrap_model(model, env)
        grad_comm = [0.0]
        if env.distributed:

            def timed_allreduce(state, bucket):  # no annotations: DDP checks them
                t0 = time.perf_counter()
                buf = bucket.buffer()
                dist.all_reduce(buf)
                buf.div_(world)
                grad_comm[0] += time.perf_counter() - t0
                fut: torch.futures.Future = torch.futures.Future()
                fut.set_result(buf)
                return fut

            ddp.register_comm_hook(None, timed_allreduce)
        idx = probe_indices(len(data.train), cfg.hessian.probe_size, cfg.train.seed)
        settings, micro = ProbeSettings.from_config(cfg), cfg.batch.max_micro_batch
        rows, vec = [], None
        for epoch in range(cfg.train.epochs):
            env.seconds = {"train": 0.0, "hessian": 0.0}
            grad_comm[0] = 0.0
            env.barrier()
            env.phase = "train"
            t0 = time.perf_counter()
            T.train_epoch(ddp, optimizer, data, cfg, env, policy, epoch)
            t_train = time.perf_counter() - t0
            env.phase = "hessian"
            probe = hessian_probe(model, data, settings, env, idx, epoch, vec, micro=micro)
            vec = probe.vector
            comm = grad_comm[0] + env.seconds["train"]
            rows.append(
                {
                    "epoch": t_train + probe.seconds,
                    "compute": t_train - comm,
                    "comm": comm,
                    "grad_comm": grad_comm[0],
                    "hessian": probe.seconds,
                    "hessian_comm": env.seconds["hessian"],
                    "hvps": probe.n_hvp,
                }
            )
        if env.is_main:
            Path(out).write_text(json.dumps(rows))
        ok = True
    finally:
        D.teardown(base, ok)
    D.exit_process(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(world: int, args: argparse.Namespace) -> list[dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "rows.json")
        mp.start_processes(
            _worker, args=(world, _free_port(), args, out), nprocs=world, start_method="spawn"
        )
        return json.loads(Path(out).read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="small_cnn")
    ap.add_argument("--samples", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=256, help="global batch")
    ap.add_argument("--micro", type=int, default=64, help="largest micro-batch per rank")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--probe", type=int, default=1024, help="Hessian probe samples")
    ap.add_argument("--block", default="last", help="Hessian block: last | full | patterns")
    ap.add_argument("--worlds", default="1,2", help="comma-separated world sizes")
    args = ap.parse_args()
    if args.epochs < 2:
        ap.error("--epochs must be >= 2 (the first epoch is a warm-up)")
    worlds = [int(w) for w in args.worlds.split(",")]

    results = {}
    for w in worlds:
        rows = measure(w, args)[1:]
        results[w] = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}

    print(
        f"{args.model}, synthetic {args.samples} samples, global batch {args.batch} "
        f"(micro {args.micro}/rank), Hessian block '{args.block}' on {args.probe} samples, "
        f"gloo, 1 thread/rank, mean of epochs 2..{args.epochs}"
    )
    head = (
        f"{'world':>5} | {'epoch s':>8} | {'compute s':>9} | {'comm s':>7} | "
        f"{'Hessian s':>9} | {'Hessian %':>9} | {'speed-up':>8}"
    )
    print(head)
    print("-" * len(head))
    ref = results[worlds[0]]["epoch"]
    for w, r in results.items():
        print(
            f"{w:>5} | {r['epoch']:8.3f} | {r['compute']:9.3f} | {r['comm']:7.3f} | "
            f"{r['hessian']:9.3f} | {100 * r['hessian'] / r['epoch']:8.1f}% | "
            f"{ref / r['epoch']:7.2f}x"
        )
    for w, r in results.items():
        if w > 1:
            print(
                f"world {w}: gradient all-reduce {r['grad_comm']:.3f} s of the {r['comm']:.3f} s "
                f"communication; {r['hessian_comm']:.3f} s of the Hessian time is its "
                f"all-reduces ({r['hvps']:.0f} HVPs)"
            )
    print(f"speed-up: epoch time of world {worlds[0]} / epoch time; load average {_load()}")


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


if __name__ == "__main__":
    main()
