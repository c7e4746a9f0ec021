"""The policy registry is closed: a new method is one class with ``@register("name")``, and
config, training and the method list pick it up with no other change (README, "Adding a
policy")."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import pytest

import absa
from absa import api
from absa.core.policies import (
    METHODS,
    EpochPlan,
    Registrable,
    Settings,
    Stateless,
    growing,
    register,
    spec_of,
    unregister,
    varying,
)
from absa.engine import loop as T
from absa.run import config as C
from absa.run.folder import read_metrics
from absa.run.policy import make_policy


@pytest.fixture
def toy():
    """A toy method "toy": B_e = min(B_0 * growth_factor**e, max_batch) at a constant lr,
    registered for one test."""

    @register("toy")
    @dataclass
    class Doubling(Stateless):
        """Multiplies the batch by growth_factor every epoch, up to max_batch; lr fixed."""

        base_batch: int
        max_batch: int
        factor: int
        lr: float
        summary = "toy: B x growth_factor every epoch"
        reads = frozenset({"max_batch", "growth_factor"})
        grows = True

        @classmethod
        def from_settings(cls, s: Settings) -> Doubling:
            m = s.schedule
            return cls(s.batch_size, m["max_batch"], m["growth_factor"], s.lr)

        def lr_at(self, epoch: int, progress: float) -> float:
            return self.lr

        def plan(self, epoch: int) -> EpochPlan:
            batch = min(self.base_batch * self.factor**epoch, self.max_batch)
            return EpochPlan(batch, self.lr, 0.0)

    yield Doubling
    unregister("toy")


def test_the_method_list_names_a_registered_policy(toy):
    assert "toy" in METHODS and "toy" in absa.METHODS and spec_of("toy") is toy
    assert toy.name == "toy" and "toy" in growing() and "toy" in varying()
    assert list(METHODS)[-1] == "toy"  # after the built-ins, in registration order


def test_the_config_accepts_a_registered_method(toy):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # serializing a method the Literal never named
        cfg = C.load(None, ["schedule.method=toy", "schedule.max_batch=256"])
        assert C.to_dict(cfg)["schedule"]["method"] == "toy"
        assert C.from_dict(C.to_dict(cfg)).schedule.method == "toy"
    assert cfg.adv_fraction == 0.0  # Registrable's default_adv_fraction
    p = make_policy(cfg)
    assert isinstance(p, toy) and (p.base_batch, p.max_batch, p.factor) == (128, 256, 2)


def test_the_config_checks_a_registered_method_by_its_declarations(toy):
    with pytest.raises(C.ConfigError) as e:  # grows: schedule.max_batch is required
        C.load(None, ["schedule.method=toy"])
    assert str(e.value) == "overrides: schedule.max_batch: required for schedule.method toy"
    # a key it does not declare is a one-line note naming the field, as for every method
    cfg = C.load(None, ["schedule.method=toy", "schedule.max_batch=256", "schedule.alpha=3"])
    assert api.ignored_notes(cfg) == ["schedule.alpha is ignored by schedule.method toy"]
    cfg = C.load(
        None, ["schedule.method=toy", "schedule.max_batch=256", "schedule.growth_factor=4"]
    )
    assert api.ignored_notes(cfg) == []


def test_an_unregistered_method_is_a_one_line_error(toy):
    unregister("toy")
    try:
        with pytest.raises(C.ConfigError) as e:
            C.load(None, ["schedule.method=toy"])
        msg = str(e.value)
        assert msg.startswith("overrides: schedule.method: Input should be 'bl', 'fb',")
        assert msg.endswith("'hybrid' or 'replay' (got 'toy')") and "\n" not in msg
    finally:
        register("toy")(toy)


def test_a_policy_reads_only_the_keys_it_declares(toy):
    cfg = C.load(None, ["schedule.method=toy", "schedule.max_batch=256"])
    from absa.run.policy import settings_of

    assert set(settings_of(cfg).schedule) == {"max_batch", "growth_factor"}


def test_training_follows_the_registered_policy(toy, tiny_cfg, tmp_path):
    """640 digits samples, B_0 32, max 128, x2 per epoch: batches 32, 64, 128, 128 and
    640 / B = 20, 10, 5, 5 updates per epoch (cumulative 20, 30, 35, 40), lr 0.05 throughout,
    no Hessian probe."""
    cfg = tiny_cfg(
        "schedule.method=toy",
        "schedule.max_batch=128",
        "batch.size=32",
        "data.train_size=640",
        "train.epochs=4",
    )
    s = T.run(cfg, run_dir=tmp_path / "r", log=None)
    recs = read_metrics(tmp_path / "r")
    assert [r["method"] for r in recs] == ["toy"] * 4
    assert [r["batch_size"] for r in recs] == [32, 64, 128, 128]
    assert [r["updates"] for r in recs] == [20, 30, 35, 40]
    assert [(r["lr"], r["lr_end"]) for r in recs] == [(0.05, 0.05)] * 4
    assert [r["lambda_max"] for r in recs] == [None] * 4
    assert s.final_batch == 128 and s.updates == 40


def test_register_refuses_an_incomplete_or_repeated_class(toy):
    with pytest.raises(ValueError, match="already"):
        register("toy")(toy)
    with pytest.raises(ValueError, match="already"):
        register("bl")(toy)

    class NoSummary(Stateless):
        @classmethod
        def from_settings(cls, s: Settings) -> NoSummary:
            return cls()

    with pytest.raises(TypeError, match="summary"):
        register("nosummary")(NoSummary)

    class NoBuild(Registrable):
        summary = "x"

    with pytest.raises(TypeError, match="plan.*from_settings"):
        register("nobuild")(NoBuild)
    with pytest.raises(ValueError, match="lowercase"):
        register("Toy2")(toy)
    assert not {"nosummary", "nobuild", "Toy2"} & set(METHODS)


def test_the_built_ins_declare_what_the_rest_of_absa_asks():
    """One answer per question, from the classes: the sets config, engine and report use."""
    assert growing() == ("gg", "seesaw", "abs", "absa", "gns", "inner_product", "hybrid")
    assert varying() == (*growing(), "replay")
    curvature = tuple(m for m in METHODS if spec_of(m).curvature)
    assert curvature == ("abs", "absa", "hybrid")
    assert all(("eigenvalue_trigger" in spec_of(m).reads) == (m in curvature) for m in METHODS)
    assert [m for m in METHODS if spec_of(m).replays] == ["replay"]
    assert {
        m: spec_of(m).default_adv_fraction for m in METHODS if spec_of(m).default_adv_fraction
    } == {"absa": 0.2}
    with pytest.raises(ValueError, match="unknown schedule method 'sgd'"):
        spec_of("sgd")
