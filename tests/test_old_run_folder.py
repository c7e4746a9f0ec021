"""A run folder written before the redesign (absa 70f944e; see tests/data/old_run_folder/
README.md), stopped in epoch 1 of 3, resumes with today's code (``absa train --resume``) and
ends exactly as an uninterrupted run of today's code."""

import json
import shutil
from pathlib import Path

import torch
from typer.testing import CliRunner

from absa.cli import app
from absa.engine import loop as T
from absa.run import checkpoint as ckpt_io
from absa.run import config as C
from absa.run import folder as F

OLD = Path(__file__).parent / "data" / "old_run_folder"


def _untimed(record):
    """A metrics record or summary without its wall-clock fields (``*seconds``)."""
    return {k: v for k, v in record.items() if not k.endswith("seconds") and k != "run_dir"}


def test_the_fixture_is_an_old_partial_run():
    assert F.state(OLD) == "partial" and F.holder(OLD) is None  # run.lock: a dead process's
    assert ckpt_io.load(OLD / F.LAST)["epoch"] == 1
    assert [r["epoch"] for r in F.read_metrics(OLD, strict=True)] == [0]
    env = json.loads((OLD / F.ENV).read_text())
    assert env["git_revision"].startswith("70f944e")


def test_old_run_folder_resumes_to_the_uninterrupted_result(tmp_path):
    run = tmp_path / "old"
    shutil.copytree(OLD, run, ignore=shutil.ignore_patterns("README.md"))
    res = CliRunner().invoke(app, ["train", "--resume", str(run)])
    assert res.exit_code == 0, res.output
    assert F.state(run) == "finished" and F.holder(run) is None
    assert f"resumed {run} at epoch 1" in res.output
    assert F.read_metrics(run)[0] == F.read_metrics(OLD)[0]  # epoch 0: the old run's, kept

    full = tmp_path / "full"
    summary = T.run(C.load(OLD / F.CONFIG, []), run_dir=full)
    got, want = ckpt_io.load(run / F.LAST), ckpt_io.load(full / F.LAST)
    assert got["epoch"] == want["epoch"] == 3
    assert got["model"].keys() == want["model"].keys()
    for k in want["model"]:
        assert torch.equal(got["model"][k], want["model"][k]), k
    assert got["policy"] == want["policy"] and got["updates"] == want["updates"]
    assert list(map(_untimed, F.read_metrics(run, strict=True))) == list(
        map(_untimed, F.read_metrics(full, strict=True))
    )
    resumed = json.loads((run / F.SUMMARY).read_text())
    assert _untimed(resumed) == _untimed(json.loads((full / F.SUMMARY).read_text()))
    assert resumed["updates"] == summary.updates
    starts = json.loads((run / F.ENV).read_text())["starts"]
    assert starts[0]["git_revision"].startswith("70f944e") and len(starts) == 2
    assert (run / F.STEPS).read_text() == (full / F.STEPS).read_text()
