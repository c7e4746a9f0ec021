"""Record the reference trajectories of the digits configs (run once, before a redesign).

    env MKL_CBWR=AVX2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 \
        PYTHONPATH=<checkout of the old code> python tests/record_reference.py tests/data/digits_reference.json

``PINNED_ENV`` fixes the instruction sets of torch's kernels, MKL and oneDNN to AVX2: float
results then do not depend on which x86-64 CPU runs them (with the default dispatch an
AVX-512 machine rounds differently from an AVX2 one, and the weights differ in the 8th
digit). ``python tests/record_reference.py --print`` prints the current code's trajectories
as JSON (the test runs it in a subprocess with ``PINNED_ENV``).

Each config trains 4 epochs (duration 1, so ABS/ABSA/GG grow inside the window) on one
thread; the file keeps per-epoch batch, lr, updates, lambda_max, losses and a weight checksum.
"""

import json
import sys
import tempfile
from pathlib import Path

import torch

from absa import checkpoint as ckpt_io
from absa import config as C
from absa import trainer as T

ROOT = Path(__file__).resolve().parent.parent
PINNED_ENV = {"MKL_CBWR": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
CASES = {
    "bl": ("configs/digits_bl_large.yaml", []),
    "fb": ("configs/digits_fb.yaml", []),
    "gg": ("configs/digits_gg.yaml", ["optim.decay_epochs=[1,3]"]),
    "abs": ("configs/digits_abs.yaml", ["schedule.duration=2"]),
    "absa": ("configs/digits_absa.yaml", ["schedule.duration=2"]),
}
COMMON = ["train.epochs=4", "train.threads=1", "hessian.probe_size=512", "train.device=cpu"]


def overrides(extra: list[str]) -> list[str]:
    return COMMON + extra + ["optim.decay_epochs=[2]"] * (not any("decay" in e for e in extra))


def run_case(name: str, out: Path) -> dict:
    path, extra = CASES[name]
    cfg = C.load(ROOT / path, overrides(extra))
    T.run(cfg, run_dir=out / name)
    metrics = [json.loads(x) for x in (out / name / "metrics.jsonl").read_text().splitlines()]
    weights = ckpt_io.load(out / name / "last.pt")["model"]
    checksum = sum(float(v.double().abs().sum()) for v in weights.values())
    keys = ("batch_size", "lr", "updates", "lambda_max", "train_loss", "test_loss", "adv_samples")
    return {"epochs": [{k: m[k] for k in keys} for m in metrics], "weight_checksum": checksum}


if __name__ == "__main__":
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        ref = {name: run_case(name, Path(tmp)) for name in CASES}
    if sys.argv[1] == "--print":
        print(json.dumps(ref))
    else:
        Path(sys.argv[1]).write_text(json.dumps(ref, indent=1) + "\n")
