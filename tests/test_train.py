import json
import math

import pytest
import torch
import torch.nn.functional as F

from absa.distributed import DistEnv
from absa.engine import epoch as E
from absa.engine import loop as T
from absa.engine.step import Attack
from absa.run import checkpoint as ckpt_io
from absa.run.data import load_data
from absa.run.folder import read_metrics
from absa.run.models import build_model


def _weights(run_dir):
    return ckpt_io.load(run_dir / "last.pt")["model"]


def _assert_same_weights(a, b, exact=True):
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-6, msg=k)


def test_accumulated_gradient_equals_full_batch(tiny_cfg):
    cfg = tiny_cfg("batch.max_micro_batch=7")
    data = load_data(cfg.data)
    torch.manual_seed(0)
    model = build_model("mlp", data.info, 8)
    x, y = data.train.get(torch.arange(64))
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    full = [p.grad.clone() for p in model.parameters()]

    model.zero_grad()
    micro = [
        (x[i : i + 7], y[i : i + 7], torch.zeros(len(y[i : i + 7]), dtype=torch.bool))
        for i in range(0, 64, 7)
    ]
    stats = T.accumulate_gradients(model, iter(micro), 64, DistEnv(), Attack.from_config(cfg))
    for g, p in zip(full, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=1e-6)
    assert stats[2].item() == 64
    assert stats[0].item() / 64 == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-5)


def test_micro_batch_size_does_not_change_training(tiny_cfg, tmp_path):
    """A logical batch of 512 accumulated from micro-batches of 16 or of 512: same weights."""
    common = ["data.augment=none", "batch.size=512", "train.epochs=2"]
    s1 = T.run(
        tiny_cfg(*common, "batch.max_micro_batch=16", "train.run_name=a"), run_dir=tmp_path / "a"
    )
    s2 = T.run(
        tiny_cfg(*common, "batch.max_micro_batch=512", "train.run_name=b"), run_dir=tmp_path / "b"
    )
    assert s1.updates == s2.updates == 2 * 3  # ceil(1347 / 512) = 3 steps per epoch
    _assert_same_weights(_weights(tmp_path / "a"), _weights(tmp_path / "b"), exact=False)


def test_run_writes_metrics_config_checkpoint(tiny_cfg, tmp_path):
    cfg = tiny_cfg("model.name=small_cnn", "data.image_size=16")
    summary = T.run(cfg, run_dir=tmp_path / "r")
    run = tmp_path / "r"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1]
    for key in (
        "updates",
        "batch_size",
        "lr",
        "train_loss",
        "train_acc",
        "test_loss",
        "test_acc",
        "seconds",
    ):
        assert key in lines[0]
    assert lines[1]["updates"] == 2 * 22  # ceil(1347 / 64) steps per epoch
    assert (run / "config.yaml").is_file() and (run / "env.json").is_file()
    ck = torch.load(run / "last.pt", weights_only=True)
    assert ck["format_version"] == ckpt_io.FORMAT_VERSION and ck["epoch"] == 2
    assert ck["updates"] == summary.updates == 44
    assert {"model", "optimizer", "policy", "config", "rng"} <= ck.keys()
    assert summary.test_acc > 30  # 2 epochs of a small CNN are far above 10% chance


class _Killed(Exception):
    pass


@pytest.mark.parametrize(
    "extra", [(), ("schedule.method=absa", "schedule.max_batch=256", "schedule.duration=1")]
)
def test_killed_mid_epoch_and_resumed_equals_uninterrupted(tiny_cfg, tmp_path, monkeypatch, extra):
    over = ("model.name=small_cnn", "data.image_size=12", "train.epochs=3", *extra)
    T.run(tiny_cfg(*over), run_dir=tmp_path / "full")

    real = E.accumulate_gradients
    calls = {"n": 0}

    def dying(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 30:  # in the middle of the second epoch
            raise _Killed
        return real(*a, **kw)

    monkeypatch.setattr(E, "accumulate_gradients", dying)
    with pytest.raises(_Killed):
        T.run(tiny_cfg(*over), run_dir=tmp_path / "killed")
    assert ckpt_io.load(tmp_path / "killed" / "last.pt")["epoch"] == 1
    monkeypatch.setattr(E, "accumulate_gradients", real)
    summary = T.run(tiny_cfg(*over), run_dir=tmp_path / "killed", resume=True)
    _assert_same_weights(_weights(tmp_path / "full"), _weights(tmp_path / "killed"))
    full_ck = ckpt_io.load(tmp_path / "full" / "last.pt")
    assert summary.updates == full_ck["updates"]
    assert full_ck["policy"] == ckpt_io.load(tmp_path / "killed" / "last.pt")["policy"]
    epochs = [
        json.loads(x)["epoch"]
        for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    ]
    assert epochs == [0, 1, 2]


def test_resume_rejects_changed_config(tiny_cfg, tmp_path):
    T.run(tiny_cfg(), run_dir=tmp_path / "r")
    with pytest.raises(T.ConfigError, match="optim.lr"):
        T.run(tiny_cfg("optim.lr=0.3"), run_dir=tmp_path / "r", resume=True)
    # extending the number of epochs is allowed
    s = T.run(tiny_cfg("train.epochs=3"), run_dir=tmp_path / "r", resume=True)
    assert s.epochs == 3


def test_existing_run_folder_is_not_overwritten(tiny_cfg, tmp_path):
    cfg = tiny_cfg()
    run_dir = T.prepare_run_dir(cfg, "x", None)
    T.run(cfg, run_dir=run_dir)
    with pytest.raises(T.RunFolderError, match="--resume"):
        T.prepare_run_dir(cfg, "x", None)


def test_nan_loss_stops_with_epoch_and_step_keeping_last_good_checkpoint(
    tiny_cfg, tmp_path, monkeypatch
):
    real = E.accumulate_gradients
    calls = {"n": 0}

    def poisoned(*a, **kw):
        calls["n"] += 1
        out = real(*a, **kw)
        if calls["n"] == 22 + 3:  # epoch 1 (0-based), step 2
            out[0] = float("nan")
        return out

    monkeypatch.setattr(E, "accumulate_gradients", poisoned)
    with pytest.raises(T.TrainingDiverged, match=r"epoch 1, step 2 \(0-based\)"):
        T.run(tiny_cfg("train.epochs=3"), run_dir=tmp_path / "r")
    ck = ckpt_io.load(tmp_path / "r" / "last.pt")
    assert ck["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_real_divergence_is_caught(tiny_cfg, tmp_path):
    """lr 1e5 (within the config's bound of 1e6) blows up in the first epoch, before any
    checkpoint exists: the message must not promise one."""
    with pytest.raises(
        T.TrainingDiverged, match="non-finite loss at epoch 0, step [0-9]+ \\(0-based\\)"
    ) as e:
        T.run(tiny_cfg("optim.lr=1e5", "optim.momentum=0"), run_dir=tmp_path / "r")
    assert "no epoch was completed, so there is no checkpoint" in str(e.value)


def test_seeded_runs_are_deterministic(tiny_cfg, tmp_path):
    T.run(tiny_cfg("model.name=small_cnn"), run_dir=tmp_path / "a")
    T.run(tiny_cfg("model.name=small_cnn"), run_dir=tmp_path / "b")
    _assert_same_weights(_weights(tmp_path / "a"), _weights(tmp_path / "b"))


def test_replay_of_a_run_reproduces_its_schedule_without_a_hessian(tiny_cfg, tmp_path):
    """Replaying an ABSA run: same batch/lr/r per epoch, no probe; equal weights when the
    source's growth did not depend on anything but the schedule (here: duration only)."""
    src = tmp_path / "src"
    common = ["schedule.max_batch=256", "schedule.duration=1", "train.epochs=3"]
    T.run(
        tiny_cfg("schedule.method=absa", "schedule.eigenvalue_trigger=false", *common), run_dir=src
    )
    rep = tmp_path / "rep"
    T.run(
        tiny_cfg("schedule.method=replay", f"schedule.replay_from={src}", "train.epochs=3"),
        run_dir=rep,
    )
    a, b = (
        [(r["batch_size"], r["lr"], r["adv_fraction"], r["hessian_hvps"]) for r in read_metrics(d)]
        for d in (src, rep)
    )
    assert a == b and [x[0] for x in a] == [64, 128, 256]
    _assert_same_weights(_weights(src), _weights(rep))


def test_replay_needs_a_finished_run_with_enough_epochs(tiny_cfg, tmp_path):
    from absa.run.config import ConfigError

    src = tmp_path / "src"
    T.run(tiny_cfg("train.epochs=2"), run_dir=src)
    with pytest.raises(ConfigError, match="records 2 epochs, train.epochs asks for 3"):
        T.policy_for(
            tiny_cfg("schedule.method=replay", f"schedule.replay_from={src}", "train.epochs=3")
        )
    with pytest.raises(ConfigError, match="not a finished run folder"):
        T.policy_for(tiny_cfg("schedule.method=replay", f"schedule.replay_from={tmp_path}"))


def test_final_eval_writes_robust_accuracy_to_the_summary(tiny_cfg, tmp_path):
    from absa.engine.evaluation import robust_accuracy

    s = T.run(
        tiny_cfg("train.epochs=1", "adversarial.final_eval=true", "adversarial.eval_eps=[0.05]",
                 "adversarial.eval_limit=100", "adversarial.pgd_steps=3"),
        run_dir=tmp_path / "r",
    )  # fmt: skip
    rows = json.loads((tmp_path / "r" / "summary.json").read_text())["robust"]
    assert [(r["attack"], r["eps"], r["n"]) for r in rows] == [
        ("clean", 0.0, 100), ("fgsm", 0.05, 100), ("pgd", 0.05, 100),
    ]  # fmt: skip
    assert s.robust == rows and rows[2]["acc"] <= rows[1]["acc"] + 1e-9 <= rows[0]["acc"] + 1e-9
    # the same number as absa eval's code path on the saved weights
    data = load_data(tiny_cfg().data)
    model = build_model("mlp", data.info, 8)
    model.load_state_dict(_weights(tmp_path / "r"))
    fgsm = robust_accuracy(model, data.test, DistEnv(), [0.05], "fgsm", limit=100)[0.05]
    assert fgsm.acc == rows[1]["acc"]


def test_a_growth_at_the_last_epoch_is_marked_not_applied(tiny_cfg, tmp_path):
    """Growth decided after the final epoch: logged with effective false, left out of the
    summary (no epoch ran at that batch), and applied once the run is extended."""
    lines = []
    grow = ("schedule.method=abs", "schedule.max_batch=256", "schedule.duration=1")
    s = T.run(tiny_cfg(*grow), run_dir=tmp_path / "r", log=lines.append)
    recs = read_metrics(tmp_path / "r")
    assert [r["growth"]["effective"] for r in recs] == [True, False]
    assert [g["new_batch"] for g in s.growths] == [128] and s.final_batch == 128
    assert "last epoch: not applied" in lines[-1] and lines[-1].startswith("epoch 1/1 ")
    s = T.run(tiny_cfg(*grow, "train.epochs=3"), run_dir=tmp_path / "r", resume=True)
    assert [g["new_batch"] for g in s.growths] == [128, 256] and s.final_batch == 256


def test_growth_warmup_ramps_the_lr_through_the_trainer(tiny_cfg, tmp_path):
    """Issue 27: the growth at the end of epoch 0 (64 -> 128, lr 0.05 -> 0.1) ramps over
    epoch 1: step k of its n steps runs at 0.05 (1 + k / n), so it starts at 0.05 and its
    last step is at 0.05 (1 + (n - 1) / n)."""
    grow = ("schedule.method=abs", "schedule.max_batch=256", "schedule.duration=1")
    T.run(tiny_cfg(*grow, "schedule.growth_warmup=1"), run_dir=tmp_path / "r", log=None)
    recs = read_metrics(tmp_path / "r")
    g = recs[0]["growth"]
    assert (g["new_batch"], g["old_lr"], g["new_lr"]) == (128, 0.05, 0.1)
    n = math.ceil(recs[1]["samples"] / 128)
    assert recs[1]["batch_size"] == 128 and recs[1]["lr"] == 0.05
    assert recs[1]["lr_end"] == pytest.approx(0.05 * (1 + (n - 1) / n))
    assert not any(r["vetoed"] or r["veto"] for r in recs)


def test_a_vetoed_growth_is_named_in_the_metrics(tiny_cfg, tmp_path):
    """stop_rule noise with ratio 1e-6: the duration growth to 128 exceeds 1e-6 B_simple
    (any B_simple below 1.28e8), so it is vetoed and the record names trigger and rule."""
    lines = []
    grow = ("schedule.method=abs", "schedule.max_batch=256", "schedule.duration=1")
    stop = ("schedule.stop_rule=noise", "schedule.stop_noise_ratio=1e-6")
    T.run(tiny_cfg(*grow, *stop), run_dir=tmp_path / "r", log=lines.append)
    recs = read_metrics(tmp_path / "r")
    assert [r["batch_size"] for r in recs] == [64, 64] and [r["vetoed"] for r in recs] == [True] * 2
    v = recs[0]["veto"]
    assert (v["epoch"], v["batch"], v["new_batch"], v["trigger"], v["rule"]) == (
        0,
        64,
        128,
        "duration",
        "stop_noise",
    )
    assert v["noise_scale"] == recs[0]["noise_scale"] and v["limit"] == pytest.approx(
        1e-6 * v["noise_scale"]
    )
    assert any("(growth to 128 on duration vetoed: stop_noise)" in x for x in lines)


def test_truncated_last_checkpoint_resumes_from_the_previous_one(tiny_cfg, tmp_path):
    """Each save keeps the replaced checkpoint as prev.pt; a truncated last.pt (a disk error,
    a bad copy) resumes from prev.pt with a warning and ends with an uninterrupted run's
    weights and each epoch once."""
    over = ("train.epochs=4",)
    T.run(tiny_cfg(*over), run_dir=tmp_path / "full")
    run = tmp_path / "cut"
    T.run(tiny_cfg("train.epochs=3"), run_dir=run)
    assert (
        ckpt_io.load(run / "prev.pt")["epoch"] == 2 and ckpt_io.load(run / "last.pt")["epoch"] == 3
    )
    data = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(data[: len(data) // 2])
    said = []
    T.run(tiny_cfg(*over), run_dir=run, resume=True, log=said.append)
    assert any(
        m.startswith(f"warning: {run / 'last.pt'}: not a readable absa checkpoint")
        and m.endswith(f"resuming from {run / 'prev.pt'} (epoch 2) instead")
        for m in said
    ), said
    assert f"resumed {run} at epoch 2 (" in " ".join(said)
    _assert_same_weights(_weights(tmp_path / "full"), _weights(run))
    epochs = [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2, 3]
    assert (run / "last.pt.unreadable").read_bytes() == data[: len(data) // 2]
    assert ckpt_io.load(run / "prev.pt")["epoch"] == 3  # a readable file was rotated, not the cut
