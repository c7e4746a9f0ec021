"""ABS and ABSA on the embedded digits grow the batch because lambda_max dropped.

The default ``peak`` rule must fire on real data, where the eigenvalue first rises from its
value at initialisation (the authors' ``first`` rule then stalls); the growth record in
metrics.jsonl names the trigger. 12 epochs of the shipped CPU configs, a few seconds each.
"""

import json
from pathlib import Path

import pytest

from absa.distributed import DistEnv
from absa.engine import loop as T
from absa.run import config as C

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["digits_abs", "digits_absa"])
def test_default_rule_grows_on_eigenvalue_drop(name, tmp_path):
    cfg = C.load(
        CONFIGS / f"{name}.yaml",
        [
            "train.epochs=12",
            "optim.decay_epochs=[]",
            "train.device=cpu",
            f"train.out_dir={tmp_path}",
        ],
    )
    assert cfg.schedule.reference == "peak" and cfg.schedule.duration == 10
    run_dir = tmp_path / "run"
    T.run(cfg, DistEnv(), run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    growths = [r["growth"] for r in rows if r["growth"]]
    by_eigenvalue = [g for g in growths if g["trigger"] == "eigenvalue"]
    assert by_eigenvalue, f"no eigenvalue-triggered growth in {growths}"
    for g in by_eigenvalue:  # the rule that fired: lambda <= lambda_ref / alpha
        assert g["eigenvalue"] <= g["reference"] / cfg.schedule.alpha
        assert g["new_batch"] == 2 * g["old_batch"]
        assert g["new_lr"] == pytest.approx(2 * g["old_lr"])
    # the logged batch follows the growths: a growth after epoch e sets the batch of e + 1
    sizes = {r["epoch"]: r["batch_size"] for r in rows}
    for g in growths:
        assert sizes.get(g["epoch"]) == g["old_batch"]
        assert sizes.get(g["epoch"] + 1, g["new_batch"]) == g["new_batch"]
    lambdas = [r["lambda_max"] for r in rows if r["lambda_max"]]
    assert max(lambdas[:3]) > lambdas[0], "expected lambda_max to rise early in training"
