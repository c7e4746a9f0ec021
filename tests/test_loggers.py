import json
import sys

import pytest

from absa.engine import loggers as LG

RECORDS = [
    {
        "epoch": e,
        "updates": 10 * (e + 1),
        "batch_size": 32 * 2**e,
        "lr": 0.1,
        "lambda_max": 5.0 - e,
        "test_acc": 80.0 + e,
        "probe_skipped": False,  # bools are not scalars
        "growth": {"new_batch": 64 * 2**e, "trigger": "eigenvalue"} if e else None,
    }
    for e in range(3)
]


def test_scalars_keeps_finite_numbers_and_flattens():
    got = LG.scalars({"a": 1, "b": 2.5, "c": None, "d": True, "e": float("nan"), "g": {"x": 3}})
    assert got == {"a": 1.0, "b": 2.5, "g/x": 3.0}


def test_make_loggers_off_by_default(tmp_path):
    for section in (None, {}, {"tensorboard": False}):
        lg = LG.make_loggers(section, tmp_path)
        assert len(lg) == 0
        lg.log_epoch(RECORDS[0])
        lg.log_step(1, {"lr": 0.1})
        lg.close()
    assert list(tmp_path.iterdir()) == []
    assert isinstance(LG.MultiLogger([]), LG.Logger) and isinstance(lg, LG.Logger)


def test_jsonl_logger_writes_steps(tmp_path):
    lg = LG.make_loggers({"jsonl": True}, tmp_path)
    lg.log_step(5, {"lr": 0.1, "batch_size": 64, "phase": "train"})
    lg.log_epoch(RECORDS[0])  # epochs are in metrics.jsonl already
    lg.close()
    lines = [json.loads(x) for x in (tmp_path / LG.STEPS).read_text().splitlines()]
    assert lines == [{"step": 5, "lr": 0.1, "batch_size": 64.0}]


def _event_scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_logger_writes_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    lg = LG.make_loggers({"tensorboard": True}, tmp_path)
    for r in RECORDS:
        lg.log_epoch(r)
    lg.log_step(7, {"lr": 0.05, "batch_size": 32, "loss": 1.5})
    lg.close()
    folder = tmp_path / LG.TENSORBOARD
    assert any(p.name.startswith("events.out.tfevents") for p in folder.iterdir())
    got = _event_scalars(folder)
    assert got["epoch/batch_size"] == [(10, 32.0), (20, 64.0), (30, 128.0)]
    assert [v for _, v in got["epoch/lambda_max"]] == pytest.approx([5.0, 4.0, 3.0])
    assert got["epoch/growth/new_batch"] == [(20, 128.0), (30, 256.0)]
    assert got["step/batch_size"] == [(7, 32.0)] and "epoch/probe_skipped" not in got


def test_missing_backend_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ImportError
    with pytest.raises(LG.LoggerError) as e:
        LG.make_loggers({"tensorboard": True}, tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("log.tensorboard: needs the tensorboard package")
    assert "pip install tensorboard" in msg
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(LG.LoggerError, match=r"^log\.wandb: needs the wandb package"):
        LG.make_loggers({"wandb": True}, tmp_path)


def test_a_failing_backend_closes_the_started_ones(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    closed = []
    monkeypatch.setattr(LG.JsonlLogger, "close", lambda self: closed.append(self.path))
    with pytest.raises(LG.LoggerError, match="log.mlflow"):
        LG.make_loggers({"jsonl": True, "mlflow": True}, tmp_path)
    assert closed == [tmp_path / LG.STEPS]


def test_config_section_object_works_too(tmp_path):
    class Section:  # a pydantic section reads the same way (attributes)
        tensorboard = False
        jsonl = True

    lg = LG.make_loggers(Section(), tmp_path)
    assert [type(x).__name__ for x in lg.loggers] == ["JsonlLogger"]
    lg.close()


def test_training_logs_steps_and_epochs_and_resume_drops_what_came_after(tiny_cfg, tmp_path):
    """log.jsonl/log.tensorboard through a real run: a step line every log.every_steps
    updates, every metrics field per epoch in TensorBoard; a resumed run drops step lines
    past its checkpoint (as a kill between checkpoint and end would leave them)."""
    pytest.importorskip("tensorboard")
    from absa.engine import loop as T
    from absa.run.folder import read_metrics

    on = ("log.jsonl=true", "log.tensorboard=true", "log.every_steps=3")
    run = tmp_path / "r"
    T.run(tiny_cfg(*on), run_dir=run)
    recs = read_metrics(run)
    updates = recs[-1]["updates"]
    steps = [json.loads(line) for line in (run / LG.STEPS).read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(3, updates + 1, 3))
    assert {"lr", "batch_size", "step_loss", "loss", "acc"} <= set(steps[0])
    got = _event_scalars(run / LG.TENSORBOARD)
    assert [v for _, v in got["epoch/test_acc"]] == pytest.approx([r["test_acc"] for r in recs])
    assert [s for s, _ in got["epoch/batch_size"]] == [r["updates"] for r in recs]

    with (run / LG.STEPS).open("a") as fh:  # logged after the checkpoint, then killed
        fh.write(json.dumps({"step": updates + 1, "lr": 9.0}) + "\n" + '{"step": 7')
    T.run(tiny_cfg(*on, "train.epochs=3", "log.every_steps=1"), run_dir=run, resume=True)
    after = [json.loads(line) for line in (run / LG.STEPS).read_text().splitlines()]
    assert [s["step"] for s in after[: len(steps)]] == [s["step"] for s in steps]
    assert [s["step"] for s in after[len(steps) :]] == list(
        range(updates + 1, read_metrics(run)[-1]["updates"] + 1)
    )
    assert all(s.get("lr") != 9.0 for s in after)
