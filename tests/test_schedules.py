"""Batch / lr / adversarial-fraction policies driven by fake eigenvalue streams.

Every expected sequence below is a literal worked out by hand from the specification; the
tests never recompute a policy's rule. The driver follows the trainer's protocol: for each
epoch ``plan(e)``, the per-step lrs ``lr_at(e, step / steps)``, then
``observe(e, {"lambda_max": lam})`` with ``lam`` passed only when ``plan.probe`` is True.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from absa.core.policies import (
    ABS,
    BL,
    FB,
    GG,
    LAMBDA,
    NOISE,
    EpochPlan,
    Growth,
    Hybrid,
    Veto,
    build_policy,
    lr_scale,
    step_decay,
)

SQRT2 = 1.4142135623730951


@dataclass
class Trace:
    batches: list[int] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)  # plan.lr (epoch start)
    step_lrs: list[list[float]] = field(default_factory=list)
    advs: list[float] = field(default_factory=list)
    probes: list[bool] = field(default_factory=list)
    passed: list[float | None] = field(default_factory=list)  # what observe() was given
    growths: list[Growth | None] = field(default_factory=list)
    refs: list[float | None] = field(default_factory=list)  # state "reference" after observe

    def __add__(self, other: Trace) -> Trace:
        return Trace(
            *(getattr(self, f) + getattr(other, f) for f in self.__dataclass_fields__)  # type: ignore[arg-type]
        )


def drive(policy, epochs, lambdas=None, steps=4, start=0) -> Trace:
    """Run epochs ``start .. epochs - 1`` the way the trainer does."""
    t = Trace()
    for e in range(start, epochs):
        plan = policy.plan(e)
        assert isinstance(plan, EpochPlan)
        t.batches.append(plan.batch_size)
        t.lrs.append(plan.lr)
        t.advs.append(plan.adv_fraction)
        t.probes.append(plan.probe)
        t.step_lrs.append([policy.lr_at(e, s / steps) for s in range(steps)])
        lam = lambdas[e] if (plan.probe and lambdas is not None) else None
        t.passed.append(lam)
        t.growths.append(policy.observe(e, {"lambda_max": lam}))
        t.refs.append(policy.state_dict().get("reference"))
    return t


def _same(actual, expected) -> bool:
    if expected is None:
        return actual is None
    return actual == pytest.approx(expected)


def assert_growth(g, epoch, old_batch, new_batch, old_lr, new_lr, trigger, eigenvalue, reference):
    assert isinstance(g, Growth), g
    assert (g.epoch, g.old_batch, g.new_batch, g.trigger) == (epoch, old_batch, new_batch, trigger)
    assert g.old_lr == pytest.approx(old_lr)
    assert g.new_lr == pytest.approx(new_lr)
    assert _same(g.eigenvalue, eigenvalue), (g.eigenvalue, eigenvalue)
    assert _same(g.reference, reference), (g.reference, reference)


def assert_growths(growths, expected: dict[int, tuple]):
    """``expected`` maps epoch -> (old_batch, new_batch, old_lr, new_lr, trigger, lam, ref)."""
    assert [i for i, g in enumerate(growths) if g is not None] == sorted(expected)
    for e, args in expected.items():
        assert_growth(growths[e], e, *args)


def assert_plain(obj):
    """Only plain JSON-able Python types, all the way down."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert isinstance(k, str)
            assert_plain(v)
    elif isinstance(obj, list):
        for v in obj:
            assert_plain(v)
    else:
        assert obj is None or type(obj) in (str, int, float, bool), type(obj)


def json_roundtrip(state):
    assert_plain(state)
    text = json.dumps(state)
    back = json.loads(text)
    assert back == state
    return back


# ---------------------------------------------------------------------------------------------
# step decay and BL


def test_step_decay_counts_decay_epochs_up_to_and_including_epoch():
    assert [step_decay(e, [2, 4], 0.1) for e in range(6)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    )
    assert step_decay(7, [], 0.1) == 1.0


def test_bl_fixed_batch_and_step_decay():
    t = drive(BL(batch_size=128, lr=0.1, decay_epochs=[2, 4], decay_factor=0.1), 6)
    assert t.batches == [128, 128, 128, 128, 128, 128]
    assert t.lrs == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert t.step_lrs == [pytest.approx([lr] * 4) for lr in [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]]
    assert t.advs == [0.0] * 6
    assert t.probes == [False] * 6
    assert t.passed == [None] * 6
    assert t.growths == [None] * 6


# ---------------------------------------------------------------------------------------------
# FB (Goyal et al.)


def test_fb_warmup_per_step_then_decay():
    # peak = 0.1 * 1024 / 128 = 0.8; warm-up lr = 0.1 + 0.7 * t / 2 with t = epoch + step / 4
    p = FB(
        batch_size=1024, base_batch=128, lr=0.1, warmup_epochs=2, decay_epochs=[3], decay_factor=0.1
    )
    t = drive(p, 5, steps=4)
    assert t.step_lrs[0] == pytest.approx([0.1, 0.1875, 0.275, 0.3625])
    assert t.step_lrs[1] == pytest.approx([0.45, 0.5375, 0.625, 0.7125])
    assert t.step_lrs[2] == pytest.approx([0.8, 0.8, 0.8, 0.8])
    assert t.step_lrs[3] == pytest.approx([0.08, 0.08, 0.08, 0.08])
    assert t.step_lrs[4] == pytest.approx([0.08, 0.08, 0.08, 0.08])
    assert t.lrs == pytest.approx([0.1, 0.45, 0.8, 0.08, 0.08])
    assert t.batches == [1024] * 5
    assert t.advs == [0.0] * 5
    assert t.probes == [False] * 5
    assert t.growths == [None] * 5


def test_fb_decay_epoch_inside_warmup_scales_the_ramp():
    # peak = 0.4, ramp 0.1 + 0.3 * t / 2, times 0.5 from epoch 1 on
    p = FB(
        batch_size=512, base_batch=128, lr=0.1, warmup_epochs=2, decay_epochs=[1], decay_factor=0.5
    )
    t = drive(p, 3, steps=2)
    assert t.step_lrs == [
        pytest.approx([0.1, 0.175]),
        pytest.approx([0.125, 0.1625]),
        pytest.approx([0.2, 0.2]),
    ]


def test_fb_zero_warmup_starts_at_peak():
    p = FB(
        batch_size=1024, base_batch=128, lr=0.1, warmup_epochs=0, decay_epochs=[2], decay_factor=0.1
    )
    t = drive(p, 3, steps=2)
    assert t.step_lrs == [
        pytest.approx([0.8, 0.8]),
        pytest.approx([0.8, 0.8]),
        pytest.approx([0.08, 0.08]),
    ]
    assert t.lrs == pytest.approx([0.8, 0.8, 0.08])


def test_fb_fractional_warmup_ends_inside_first_epoch():
    # warm-up of half an epoch: t = 0, 0.25 ramp (0.1 + 0.7 * t / 0.5); t >= 0.5 at peak
    p = FB(batch_size=1024, base_batch=128, lr=0.1, warmup_epochs=0.5)
    t = drive(p, 2, steps=4)
    assert t.step_lrs == [pytest.approx([0.1, 0.45, 0.8, 0.8]), pytest.approx([0.8] * 4)]


# ---------------------------------------------------------------------------------------------
# GG (Smith et al.)


def test_gg_grows_batch_instead_of_decaying_lr():
    p = GG(base_batch=128, max_batch=100_000, lr=0.1, decay_epochs=[2, 4, 6], decay_factor=0.2)
    t = drive(p, 8, steps=2)
    assert t.batches == [128, 128, 640, 640, 3200, 3200, 16000, 16000]
    assert t.lrs == pytest.approx([0.1] * 8)
    assert t.step_lrs == [pytest.approx([0.1, 0.1])] * 8
    assert t.advs == [0.0] * 8
    assert t.probes == [False] * 8
    assert t.growths == [None] * 8


def test_gg_cap_moves_remaining_decay_into_lr():
    # ideal 128, 640, 3200, 16000; cap 1024 -> lr 0.1 * 1024 / 3200 = 0.032, 0.1 * 1024 / 16000
    p = GG(base_batch=128, max_batch=1024, lr=0.1, decay_epochs=[2, 4, 6], decay_factor=0.2)
    t = drive(p, 8, steps=2)
    assert t.batches == [128, 128, 640, 640, 1024, 1024, 1024, 1024]
    assert t.lrs == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.032, 0.032, 0.0064, 0.0064])
    assert t.step_lrs[5] == pytest.approx([0.032, 0.032])


def test_gg_ideal_batch_exactly_at_cap_keeps_lr():
    p = GG(base_batch=128, max_batch=640, lr=0.1, decay_epochs=[1, 2], decay_factor=0.2)
    t = drive(p, 3)
    assert t.batches == [128, 640, 640]
    assert t.lrs == pytest.approx([0.1, 0.1, 0.02])


# ---------------------------------------------------------------------------------------------
# ABS: eigenvalue rule

COMMON = dict(base_batch=128, max_batch=1024, lr=0.1, total_epochs=20)
RISE_FALL = [1.0, 4.0, 8.0, 3.9, 5.0, 3.0, 2.4, 2.0]


def test_abs_peak_rule_on_rising_then_falling_stream():
    p = build_policy("abs", **COMMON)  # reference "peak", duration 10, alpha 2, linear
    assert isinstance(p, ABS) and p.name == "abs"
    t = drive(p, 8, RISE_FALL)
    assert t.batches == [128, 128, 128, 128, 256, 256, 256, 512]
    assert t.lrs == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.2, 0.2, 0.2, 0.4])
    assert t.step_lrs[4] == pytest.approx([0.2] * 4)  # no intra-epoch change for ABS
    assert t.probes == [True] * 8
    assert t.passed == RISE_FALL
    assert t.advs == [0.0] * 8
    # running max since the last growth; reset to the growth's lambda
    assert t.refs == pytest.approx([1.0, 4.0, 8.0, 3.9, 5.0, 5.0, 2.4, 2.4])
    assert_growths(
        t.growths,
        {
            3: (128, 256, 0.1, 0.2, "eigenvalue", 3.9, 8.0),  # 3.9 <= 8 / 2
            6: (256, 512, 0.2, 0.4, "eigenvalue", 2.4, 5.0),  # 2.4 <= 5 / 2
        },
    )


def test_abs_first_rule_never_fires_on_rising_stream():
    p = build_policy("abs", reference="first", **COMMON)
    t = drive(p, 8, RISE_FALL)
    assert t.batches == [128] * 8
    assert t.lrs == pytest.approx([0.1] * 8)
    assert t.refs == pytest.approx([1.0] * 8)
    assert t.growths == [None] * 8


def test_first_vs_peak_with_short_duration():
    # "first": lambda_ref stays 1.0, nothing is ever <= 0.5, so only the fallback fires
    first = drive(build_policy("abs", reference="first", duration=3, **COMMON), 8, RISE_FALL)
    assert first.batches == [128, 128, 128, 256, 256, 256, 512, 512]
    assert first.lrs == pytest.approx([0.1, 0.1, 0.1, 0.2, 0.2, 0.2, 0.4, 0.4])
    assert first.refs == pytest.approx([1.0] * 8)
    assert_growths(
        first.growths,
        {
            2: (128, 256, 0.1, 0.2, "duration", 8.0, 1.0),
            5: (256, 512, 0.2, 0.4, "duration", 3.0, 1.0),
        },
    )

    # "peak": fallback at epoch 2 (ref 8), then 3.9 <= 8 / 2, then 2.4 <= 5 / 2 up to the cap
    peak = drive(build_policy("abs", reference="peak", duration=3, **COMMON), 8, RISE_FALL)
    assert peak.batches == [128, 128, 128, 256, 512, 512, 512, 1024]
    assert peak.lrs == pytest.approx([0.1, 0.1, 0.1, 0.2, 0.4, 0.4, 0.4, 0.8])
    assert peak.probes == [True] * 7 + [False]
    assert peak.passed == RISE_FALL[:7] + [None]
    assert peak.refs == pytest.approx([1.0, 4.0, 8.0, 3.9, 5.0, 5.0, 2.4, 2.4])
    assert_growths(
        peak.growths,
        {
            2: (128, 256, 0.1, 0.2, "duration", 8.0, 8.0),
            3: (256, 512, 0.2, 0.4, "eigenvalue", 3.9, 8.0),
            6: (512, 1024, 0.4, 0.8, "eigenvalue", 2.4, 5.0),
        },
    )


def test_first_rule_resets_reference_on_eigenvalue_growth():
    lams = [8.0, 6.0, 3.9, 3.0, 1.9, 1.0]
    t = drive(build_policy("abs", reference="first", **COMMON), 6, lams)
    assert t.batches == [128, 128, 128, 256, 256, 512]
    assert t.refs == pytest.approx([8.0, 8.0, 3.9, 3.9, 1.9, 1.9])
    assert_growths(
        t.growths,
        {
            2: (128, 256, 0.1, 0.2, "eigenvalue", 3.9, 8.0),
            4: (256, 512, 0.2, 0.4, "eigenvalue", 1.9, 3.9),  # 1.9 <= 3.9 / 2
        },
    )


def test_first_rule_does_not_follow_a_rise_but_peak_does():
    lams = [8.0, 10.0, 4.5]
    first = drive(build_policy("abs", reference="first", **COMMON), 3, lams)
    assert first.growths == [None, None, None]  # 4.5 > 8 / 2
    assert first.refs == pytest.approx([8.0, 8.0, 8.0])
    peak = drive(build_policy("abs", reference="peak", **COMMON), 3, lams)
    assert peak.refs == pytest.approx([8.0, 10.0, 4.5])
    assert_growths(peak.growths, {2: (128, 256, 0.1, 0.2, "eigenvalue", 4.5, 10.0)})


def test_fallback_growth_resets_peak_reference_but_keeps_first():
    lams = [8.0, 6.0, 5.0, 3.0, 2.4]
    # peak: fallback at epoch 2 resets lambda_ref to 5, so 3 is not <= 2.5 but 2.4 is
    peak = drive(build_policy("abs", duration=3, **COMMON), 5, lams)
    assert peak.batches == [128, 128, 128, 256, 256]
    assert peak.refs == pytest.approx([8.0, 8.0, 5.0, 5.0, 2.4])
    assert_growths(
        peak.growths,
        {
            2: (128, 256, 0.1, 0.2, "duration", 5.0, 8.0),
            4: (256, 512, 0.2, 0.4, "eigenvalue", 2.4, 5.0),
        },
    )
    # first: lambda_ref stays 8 through the fallback, so 3 <= 8 / 2 fires at once
    first = drive(build_policy("abs", reference="first", duration=3, **COMMON), 5, lams)
    assert first.batches == [128, 128, 128, 256, 512]
    assert first.refs == pytest.approx([8.0, 8.0, 8.0, 3.0, 3.0])
    assert_growths(
        first.growths,
        {
            2: (128, 256, 0.1, 0.2, "duration", 5.0, 8.0),
            3: (256, 512, 0.2, 0.4, "eigenvalue", 3.0, 8.0),
        },
    )


@pytest.mark.parametrize("reference", ["peak", "first"])
def test_eigenvalue_rule_is_inclusive_and_uses_alpha(reference):
    # alpha 2: 4.01 > 8 / 2 does not fire, exactly 4 = 8 / 2 does
    t = drive(build_policy("abs", reference=reference, **COMMON), 3, [8.0, 4.01, 4.0])
    assert_growths(t.growths, {2: (128, 256, 0.1, 0.2, "eigenvalue", 4.0, 8.0)})
    # alpha 4: 2.5 > 8 / 4 does not fire, 2 = 8 / 4 does
    t = drive(build_policy("abs", reference=reference, alpha=4, **COMMON), 3, [8.0, 2.5, 2.0])
    assert_growths(t.growths, {2: (128, 256, 0.1, 0.2, "eigenvalue", 2.0, 8.0)})


def test_growth_reference_is_the_compared_value_including_current_lambda():
    # Growth.reference holds lambda_ref as compared at this epoch: the running max already
    # includes the epoch's own lambda (3, not the previous 2), taken before the reset.
    t = drive(build_policy("abs", duration=3, **COMMON), 3, [1.0, 2.0, 3.0])
    assert_growths(t.growths, {2: (128, 256, 0.1, 0.2, "duration", 3.0, 3.0)})
    assert t.refs == pytest.approx([1.0, 2.0, 3.0])


# ---------------------------------------------------------------------------------------------
# ABS: duration fallback and cap


def test_duration_fallback_on_flat_stream_up_to_cap():
    p = ABS(base_batch=64, max_batch=512, lr=0.1, total_epochs=20, duration=2)
    t = drive(p, 8, [1.0] * 8)
    assert t.batches == [64, 64, 128, 128, 256, 256, 512, 512]
    assert t.lrs == pytest.approx([0.1, 0.1, 0.2, 0.2, 0.4, 0.4, 0.8, 0.8])
    assert t.probes == [True] * 6 + [False, False]
    assert t.passed == [1.0] * 6 + [None, None]
    assert_growths(
        t.growths,
        {
            1: (64, 128, 0.1, 0.2, "duration", 1.0, 1.0),
            3: (128, 256, 0.2, 0.4, "duration", 1.0, 1.0),
            5: (256, 512, 0.4, 0.8, "duration", 1.0, 1.0),
        },
    )


def test_duration_fallback_without_eigenvalue():
    p = ABS(base_batch=64, max_batch=512, lr=0.1, total_epochs=10, duration=1)
    assert_growth(p.observe(0, {}), 0, 64, 128, 0.1, 0.2, "duration", None, None)
    assert p.state_dict()["reference"] is None
    assert_growth(p.observe(1, {"lambda_max": 4.0}), 1, 128, 256, 0.2, 0.4, "duration", 4.0, 4.0)


def test_cap_at_max_batch_with_non_power_of_two_cap():
    # growth factor 4: 128 -> 512 -> min(2048, 768) = 768 (lr x4 then x1.5); adv 0.4 -> 0.2 -> 0
    p = build_policy(
        "absa", growth_factor=4, duration=1, adv_fraction=0.4, **{**COMMON, "max_batch": 768}
    )
    t = drive(p, 4, [1.0] * 4)
    assert t.batches == [128, 512, 768, 768]
    assert t.lrs == pytest.approx([0.1, 0.4, 0.6, 0.6])
    assert t.advs == pytest.approx([0.4, 0.2, 0.0, 0.0])
    assert t.probes == [True, True, False, False]
    assert t.passed == [1.0, 1.0, None, None]
    assert_growths(
        t.growths,
        {
            0: (128, 512, 0.1, 0.4, "duration", 1.0, 1.0),
            1: (512, 768, 0.4, 0.6, "duration", 1.0, 1.0),
        },
    )
    # at the cap nothing grows, whatever the trainer passes
    assert p.observe(4, {"lambda_max": 0.001}) is None
    assert p.observe(30, {}) is None
    assert p.plan(4) == EpochPlan(768, pytest.approx(0.6), 0.0)


def test_base_batch_at_or_above_cap_starts_capped():
    p = build_policy(
        "absa", base_batch=1024, max_batch=512, lr=0.1, total_epochs=10, adv_fraction=0.4
    )
    assert p.plan(0) == EpochPlan(512, 0.1, 0.0)
    assert p.observe(0, {"lambda_max": 1.0}) is None


# ---------------------------------------------------------------------------------------------
# ABS: lr scaling rules

SCALINGS = {
    "linear": [0.1, 0.2, 0.4, 0.6, 0.6],
    "sqrt": [0.1, 0.1 * SQRT2, 0.2, 0.2449489742783178, 0.2449489742783178],  # 0.2 * sqrt(1.5)
    "none": [0.1, 0.1, 0.1, 0.1, 0.1],
}


@pytest.mark.parametrize("rule", list(SCALINGS))
def test_lr_scaling_rules(rule):
    # 128 -> 256 -> 512 -> 768 (capped, ratio 1.5), one growth per epoch
    p = ABS(base_batch=128, max_batch=768, lr=0.1, total_epochs=20, duration=1, lr_scaling=rule)
    t = drive(p, 5, [1.0] * 5)
    assert t.batches == [128, 256, 512, 768, 768]
    expected = SCALINGS[rule]
    assert t.lrs == pytest.approx(expected)
    new_lrs = [g.new_lr for g in t.growths if g is not None]
    old_lrs = [g.old_lr for g in t.growths if g is not None]
    assert new_lrs == pytest.approx(expected[1:4])
    assert old_lrs == pytest.approx(expected[0:3])


def test_lr_scale_function_and_invalid_names():
    assert lr_scale(512, 128, "linear") == pytest.approx(4.0)
    assert lr_scale(512, 128, "sqrt") == pytest.approx(2.0)
    assert lr_scale(512, 128, "none") == 1.0
    with pytest.raises(ValueError):
        lr_scale(2, 1, "cubic")
    with pytest.raises(ValueError):
        ABS(lr_scaling="cubic", **COMMON)
    with pytest.raises(ValueError):
        ABS(reference="median", **COMMON)


# ---------------------------------------------------------------------------------------------
# ABSA: adversarial fraction


def test_absa_fraction_halves_per_growth_and_is_zero_at_cap():
    p = build_policy(
        "absa", base_batch=64, max_batch=512, lr=0.1, total_epochs=16, duration=2, adv_fraction=0.4
    )
    assert p.name == "absa"
    t = drive(p, 8, [1.0] * 8)
    assert t.batches == [64, 64, 128, 128, 256, 256, 512, 512]
    assert t.advs == pytest.approx([0.4, 0.4, 0.2, 0.2, 0.1, 0.1, 0.0, 0.0])
    assert t.probes == [True] * 6 + [False, False]


@pytest.mark.parametrize(
    "total, advs",
    [
        (6, [0.4, 0.4, 0.2, 0.0, 0.0, 0.0, 0.0]),  # half = 3.0
        (7, [0.4, 0.4, 0.2, 0.2, 0.0, 0.0, 0.0]),  # half = 3.5
        (9, [0.4, 0.4, 0.2, 0.2, 0.1, 0.0, 0.0]),  # half = 4.5
    ],
)
def test_absa_fraction_zero_from_half_the_epochs(total, advs):
    p = build_policy(
        "absa",
        base_batch=64,
        max_batch=4096,
        lr=0.1,
        total_epochs=total,
        duration=2,
        adv_fraction=0.4,
    )
    t = drive(p, 7, [1.0] * 7)
    assert t.batches == [64, 64, 128, 128, 256, 256, 512]
    assert t.advs == pytest.approx(advs)
    assert t.probes == [True] * 7  # probing continues below the cap


@pytest.mark.parametrize("extra", [{}, {"adv_fraction": None}, {"adv_fraction": 0.0}])
def test_abs_has_no_adversarial_fraction(extra):
    p = build_policy("abs", duration=2, **COMMON, **extra)
    assert p.name == "abs"
    t = drive(p, 6, [1.0] * 6)
    assert t.batches == [128, 128, 256, 256, 512, 512]
    assert t.advs == [0.0] * 6


# ---------------------------------------------------------------------------------------------
# step decay on top of growth


def test_step_decay_interacts_with_growth():
    # decay x0.1 at epochs 2 and 5; growths at the ends of epochs 1 (4 <= 10/2) and 3 (1.9 <= 4/2)
    p = build_policy("abs", decay_epochs=[2, 5], decay_factor=0.1, **COMMON)
    t = drive(p, 7, [10.0, 4.0, 3.0, 1.9, 1.5, 1.2, 1.0])
    assert t.batches == [128, 128, 256, 256, 512, 512, 512]
    assert t.lrs == pytest.approx([0.1, 0.1, 0.02, 0.02, 0.04, 0.004, 0.004])
    assert t.step_lrs[5] == pytest.approx([0.004] * 4)
    # old_lr / new_lr are both the lr of epoch + 1 (decay included), without / with the growth
    assert_growths(
        t.growths,
        {
            1: (128, 256, 0.01, 0.02, "eigenvalue", 4.0, 10.0),
            3: (256, 512, 0.02, 0.04, "eigenvalue", 1.9, 4.0),
        },
    )


# ---------------------------------------------------------------------------------------------
# state_dict / load_state_dict


def _abs_peak():
    return build_policy("abs", **COMMON)


def _abs_first_d3():
    return build_policy("abs", reference="first", duration=3, **COMMON)


def _absa_sqrt_decay():
    return build_policy(
        "absa",
        base_batch=64,
        max_batch=512,
        lr=0.1,
        total_epochs=10,
        decay_epochs=[3],
        decay_factor=0.5,
        lr_scaling="sqrt",
        duration=2,
        adv_fraction=0.4,
    )


RESUME_CASES = {
    "abs-peak": (
        _abs_peak,
        RISE_FALL,
        [128, 128, 128, 128, 256, 256, 256, 512],
        [0.1, 0.1, 0.1, 0.1, 0.2, 0.2, 0.2, 0.4],
        [0.0] * 8,
    ),
    "abs-first-duration": (
        _abs_first_d3,
        RISE_FALL,
        [128, 128, 128, 256, 256, 256, 512, 512],
        [0.1, 0.1, 0.1, 0.2, 0.2, 0.2, 0.4, 0.4],
        [0.0] * 8,
    ),
    "absa-sqrt-decay": (
        _absa_sqrt_decay,
        [1.0] * 8,
        [64, 64, 128, 128, 256, 256, 512, 512],
        # sqrt scaling, x0.5 from epoch 3
        [0.1, 0.1, 0.1 * SQRT2, 0.05 * SQRT2, 0.1, 0.1, 0.1 * SQRT2, 0.1 * SQRT2],
        [0.4, 0.4, 0.2, 0.2, 0.1, 0.0, 0.0, 0.0],
    ),
}


@pytest.mark.parametrize("split", range(1, 8))
@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_abs_resume_mid_schedule_matches_uninterrupted(case, split):
    make, lams, batches, lrs, advs = RESUME_CASES[case]
    full = drive(make(), 8, lams)
    assert full.batches == batches
    assert full.lrs == pytest.approx(lrs)
    assert full.advs == pytest.approx(advs)

    first = make()
    head = drive(first, split, lams)
    state = json_roundtrip(first.state_dict())
    resumed = make()
    resumed.load_state_dict(state)
    tail = drive(resumed, 8, lams, start=split)
    assert head + tail == full  # exact: same growths, refs, lrs, fractions, probes


def test_resume_is_not_a_fresh_start():
    p = _abs_peak()
    drive(p, 5, RISE_FALL)  # one growth at the end of epoch 3
    fresh = _abs_peak()
    assert fresh.plan(5).batch_size == 128
    fresh.load_state_dict(json_roundtrip(p.state_dict()))
    assert fresh.plan(5) == EpochPlan(256, 0.2, 0.0, frozenset({"lambda_max"}))
    assert fresh.state_dict() == p.state_dict()
    assert fresh.state_dict()["reference"] == 5.0


def test_abs_state_is_plain_after_growths():
    p = _absa_sqrt_decay()
    drive(p, 8, [1.0] * 8)
    state = p.state_dict()
    json_roundtrip(state)
    assert state["kind"] == "absa"
    assert state["reference"] == 1.0


STATELESS = {
    "bl": lambda: BL(batch_size=128, lr=0.1, decay_epochs=[2, 4], decay_factor=0.1),
    "fb": lambda: FB(
        batch_size=1024, base_batch=128, lr=0.1, warmup_epochs=2, decay_epochs=[3], decay_factor=0.1
    ),
    "gg": lambda: GG(base_batch=128, max_batch=1024, lr=0.1, decay_epochs=[2, 4], decay_factor=0.2),
}


@pytest.mark.parametrize("split", [1, 2, 3, 4])
@pytest.mark.parametrize("kind", list(STATELESS))
def test_stateless_resume_matches_uninterrupted(kind, split):
    make = STATELESS[kind]
    full = drive(make(), 6)
    p = make()
    head = drive(p, split)
    state = json_roundtrip(p.state_dict())
    assert state == {"kind": kind}
    resumed = make()
    resumed.load_state_dict(state)
    assert head + drive(resumed, 6, start=split) == full


def test_stateless_literal_sequences_for_resume_cases():
    assert drive(STATELESS["fb"](), 6, steps=1).lrs == pytest.approx(
        [0.1, 0.45, 0.8, 0.08, 0.08, 0.08]
    )
    gg = drive(STATELESS["gg"](), 6)
    assert gg.batches == [128, 128, 640, 640, 1024, 1024]
    assert gg.lrs == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.032, 0.032])


@pytest.mark.parametrize(
    "target, source",
    [
        ("bl", "fb"),
        ("fb", "gg"),
        ("gg", "bl"),
        ("bl", "abs"),
        ("abs", "absa"),
        ("absa", "abs"),
        ("abs", "gg"),
        ("bl", None),
    ],
)
def test_loading_state_of_another_kind_raises(target, source):
    policies = {
        **{k: f for k, f in STATELESS.items()},
        "abs": _abs_peak,
        "absa": _absa_sqrt_decay,
    }
    state = {} if source is None else policies[source]().state_dict()
    with pytest.raises(ValueError):
        policies[target]().load_state_dict(state)


# ---------------------------------------------------------------------------------------------
# build_policy


def test_build_policy_methods():
    assert isinstance(build_policy("bl", batch_size=128, lr=0.1), BL)
    assert isinstance(build_policy("fb", batch_size=1024, base_batch=128, lr=0.1), FB)
    assert isinstance(build_policy("gg", base_batch=128, max_batch=1024, lr=0.1), GG)
    assert build_policy("abs", **COMMON).name == "abs"
    assert build_policy("absa", adv_fraction=0.2, **COMMON).name == "absa"


@pytest.mark.parametrize("method", ["sgd", "", "adaptive"])
def test_build_policy_unknown_method_raises(method):
    with pytest.raises(ValueError):
        build_policy(method, batch_size=128, lr=0.1)


@pytest.mark.parametrize("reference", ["peak", "first"])
def test_non_positive_eigenvalue_never_counts_as_dropped(reference):
    # A negative top eigenvalue (possible far from a minimum) must not trigger growth: with
    # lambda_ref = -1, "lambda <= lambda_ref / 2" would hold at once for -1.
    p = build_policy("abs", **{**COMMON, "reference": reference, "duration": 4})
    t = drive(p, 5, [-1.0, -2.0, 0.0, -0.5, 1.0])
    assert t.batches == [128, 128, 128, 128, 256]
    assert [g.trigger for g in t.growths if g] == ["duration"]


def test_fixed_batch_methods_keep_a_constant_adversarial_fraction():
    # adversarial training at a fixed batch (the robust models of the Hessian analysis)
    bl = build_policy("bl", batch_size=32, lr=0.1, decay_epochs=[2], adv_fraction=0.3)
    fb = build_policy("fb", batch_size=64, base_batch=32, lr=0.1, adv_fraction=0.3)
    gg = build_policy("gg", base_batch=32, max_batch=64, lr=0.1, decay_epochs=[1], adv_fraction=0.3)
    for p in (bl, fb, gg):
        assert drive(p, 4).advs == [0.3, 0.3, 0.3, 0.3]
    assert drive(build_policy("bl", batch_size=32, lr=0.1), 2).advs == [0.0, 0.0]


# --- replay and duration-only ABS -------------------------------------------------------------


def test_replay_plays_back_a_recorded_trajectory():
    """Batch, lr and r per epoch exactly as recorded; no probing; nothing past the record."""
    from absa.core.policies import Replay

    p = build_policy(
        "replay", batches=[32, 64, 64], lrs=[0.1, 0.2, 0.04], adv_fractions=[0.2, 0.1, 0]
    )
    assert isinstance(p, Replay)
    plans = [p.plan(e) for e in range(3)]
    assert [(q.batch_size, q.lr, q.adv_fraction, q.probe) for q in plans] == [
        (32, 0.1, 0.2, False), (64, 0.2, 0.1, False), (64, 0.04, 0, False),
    ]  # fmt: skip
    assert p.lr_at(1, 0.7) == 0.2 and p.observe(1, {"lambda_max": 5.0}) is None
    with pytest.raises(ValueError, match="past the 3 recorded"):
        p.plan(3)
    with pytest.raises(ValueError, match="one entry per epoch"):
        build_policy("replay", batches=[32], lrs=[], adv_fractions=[0])
    state = p.state_dict()
    q = build_policy(
        "replay", batches=[32, 64, 64], lrs=[0.1, 0.2, 0.04], adv_fractions=[0.2, 0.1, 0]
    )
    q.load_state_dict(state)


def test_abs_without_eigenvalue_trigger_grows_every_duration_and_never_probes():
    p = build_policy(
        "abs", base_batch=8, max_batch=64, lr=0.1, total_epochs=12, duration=2,
        eigenvalue_trigger=False,
    )  # fmt: skip
    batches = []
    for e in range(8):
        plan = p.plan(e)
        assert plan.probe is False
        batches.append(plan.batch_size)
        g = p.observe(e, {"lambda_max": 0.0001})  # a collapsed eigenvalue must not count
        assert g is None or g.trigger == "duration"
    assert batches == [8, 8, 16, 16, 32, 32, 64, 64]


# ---------------------------------------------------------------------------------------------
# lr rules at a growth (growth_warmup, max_lr) and the stop rule (issue 27)

# duration-only growth every epoch, no probing, no decay: 64 -> 128 -> 256 -> 512
RAMP = dict(base_batch=64, max_batch=512, total_epochs=20, duration=1, eigenvalue_trigger=False)
EDGE = dict(base_batch=64, max_batch=512, total_epochs=20)


def test_growth_warmup_ramps_each_doubling_over_one_epoch():
    # lr 0.1, linear: target multipliers 2, 4, 8 after the growths at the ends of epochs
    # 0, 1, 2. Each growth epoch ramps per step from the old lr to the new one:
    # epoch 1: 0.1 * (1 + 1 * p) at p = 0, 1/4, 1/2, 3/4; epoch 2: 0.1 * (2 + 2 p); ...
    t = drive(build_policy("abs", **RAMP, lr=0.1, growth_warmup=1.0), 5)
    assert t.batches == [64, 128, 256, 512, 512]
    assert t.lrs == pytest.approx([0.1, 0.1, 0.2, 0.4, 0.8])  # epoch start: the old lr
    assert t.step_lrs == [
        pytest.approx([0.1, 0.1, 0.1, 0.1]),
        pytest.approx([0.1, 0.125, 0.15, 0.175]),
        pytest.approx([0.2, 0.25, 0.3, 0.35]),
        pytest.approx([0.4, 0.5, 0.6, 0.7]),
        pytest.approx([0.8, 0.8, 0.8, 0.8]),
    ]
    # the records name where the lr lands: old 0.1 -> new 0.2, and so on
    assert_growths(
        t.growths,
        {
            0: (64, 128, 0.1, 0.2, "duration", None, None),
            1: (128, 256, 0.2, 0.4, "duration", None, None),
            2: (256, 512, 0.4, 0.8, "duration", None, None),
        },
    )


def test_fractional_growth_warmup_with_a_decay_epoch_in_the_ramp():
    # warm-up 0.5 epochs, x0.5 decay at epoch 1: the growth at the end of epoch 0 takes the
    # multiplier 1 -> 2 over the first half of epoch 1, all of it times the decay 0.5:
    # p = 0, 1/4, 1/2, 3/4 -> multiplier 1, 1.5, 2, 2 -> lr 0.05, 0.075, 0.1, 0.1
    p = build_policy("abs", **RAMP, lr=0.1, growth_warmup=0.5, decay_epochs=[1], decay_factor=0.5)
    t = drive(p, 2)
    assert t.step_lrs[1] == pytest.approx([0.05, 0.075, 0.1, 0.1])
    assert_growth(t.growths[0], 0, 64, 128, 0.05, 0.1, "duration", None, None)
    assert p.lr_at(1, 0.9) == pytest.approx(0.1)


def test_a_growth_inside_a_ramp_starts_the_next_ramp_where_the_lr_is():
    # warm-up 2 epochs but a growth every epoch. Epoch 1: multiplier 1 + (2 - 1) p / 2:
    # 1, 1.125, 1.25, 1.375. The growth at its end starts from 1.5 (halfway, at t = 2)
    # towards 4: epoch 2: 1.5 + 2.5 p / 2 = 1.5, 1.8125, 2.125, 2.4375
    t = drive(build_policy("abs", **RAMP, lr=0.1, growth_warmup=2.0), 3)
    assert t.step_lrs[1] == pytest.approx([0.1, 0.1125, 0.125, 0.1375])
    assert t.step_lrs[2] == pytest.approx([0.15, 0.18125, 0.2125, 0.24375])
    assert_growth(t.growths[1], 1, 128, 256, 0.15, 0.4, "duration", None, None)


def test_growth_warmup_state_round_trip_resumes_mid_ramp():
    a = build_policy("abs", **RAMP, lr=0.1, growth_warmup=2.0)
    drive(a, 2)
    state = json_roundtrip(a.state_dict())
    assert state["segments"][1] == [1, 128, 2.0, 0.0, 1.0]  # warm_from: the 5th entry
    b = build_policy("abs", **RAMP, lr=0.1, growth_warmup=2.0)
    b.load_state_dict(state)
    assert [b.lr_at(2, s / 4) for s in range(4)] == pytest.approx([0.15, 0.18125, 0.2125, 0.24375])


def test_max_lr_caps_the_lr_after_a_growth():
    # lr 0.25, linear, ceiling 0.75, x0.5 decay at epoch 3: growth 1 takes 0.25 -> 0.5;
    # growth 2 would give 1.0: capped at 0.75 (multiplier 3); growth 3 at the end of epoch 2
    # gives 0.25 * 6 * 0.5 = 0.75 at epoch 3: exactly the ceiling, not capped
    p = build_policy("abs", **RAMP, lr=0.25, max_lr=0.75, decay_epochs=[3], decay_factor=0.5)
    t = drive(p, 5)
    assert t.batches == [64, 128, 256, 512, 512]
    assert t.lrs == [0.25, 0.5, 0.75, 0.75, 0.75]
    assert [g.lr_cap for g in t.growths[:3]] == [None, 0.75, None]
    assert_growth(t.growths[1], 1, 128, 256, 0.5, 0.75, "duration", None, None)


def test_max_lr_and_lr_guard_the_lower_ceiling_binds():
    # lambda 5, momentum 0.5: guard limit 2 (1 + 0.5) / 5 = 0.6 < max_lr 0.75
    kw = dict(base_batch=64, max_batch=512, total_epochs=20, duration=1, momentum=0.5)
    p = build_policy("abs", **kw, lr=0.4, max_lr=0.75, lr_guard=True)
    g = p.observe(0, {LAMBDA: 5.0})  # 0.8 -> max_lr 0.75 -> guard 0.6
    assert g.new_lr == pytest.approx(0.6) and g.lr_cap == pytest.approx(0.6)
    q = build_policy("abs", **kw, lr=0.4, max_lr=0.75, lr_guard=True)
    g = q.observe(0, {LAMBDA: 1.0})  # guard limit 3: max_lr binds
    assert g.new_lr == 0.75 and g.lr_cap == 0.75


def test_stop_rule_noise_vetoes_growth_past_the_critical_batch():
    # stop_noise_ratio 2: a growth to B' is vetoed when B' > 2 * B_simple
    p = build_policy("abs", **RAMP, lr=0.1, stop_rule="noise", stop_noise_ratio=2.0)
    assert p.plan(0).wants == {NOISE}
    g = p.observe(0, {NOISE: 100.0})  # 128 <= 200: grows
    assert (g.new_batch, g.trigger, g.noise_scale) == (128, "duration", 100.0)
    assert p.observe(1, {NOISE: 100.0}) is None  # 256 > 200: vetoed
    assert p.last_veto == Veto(
        epoch=1,
        batch=128,
        new_batch=256,
        new_lr=pytest.approx(0.4),
        trigger="duration",
        rule="stop_noise",
        limit=200.0,
        eigenvalue=None,
        noise_scale=100.0,
    )
    assert p.observe(2, {NOISE: None}).new_batch == 256  # no estimate: no veto
    assert p.observe(3, {NOISE: 128.0}) is None  # 512 > 256
    assert p.vetoes == [1, 3] and p.plan(4).batch_size == 256
    state = json_roundtrip(p.state_dict())
    assert state["vetoes"] == [1, 3]
    q = build_policy("abs", **RAMP, lr=0.1, stop_rule="noise", stop_noise_ratio=2.0)
    q.load_state_dict(state)
    assert q.vetoes == [1, 3] and q.plan(4).batch_size == 256


def test_stop_rule_noise_on_gns_caps_its_own_ratio():
    # gns_ratio 4 asks for growth while B < 4 B_simple; the stop rule (ratio 1) refuses B'
    # above B_simple: 64 < 400 fires, 128 <= 100 fails -> vetoed
    p = build_policy(
        "gns", base_batch=64, max_batch=512, lr=0.1, total_epochs=20, gns_ratio=4.0,
        stop_rule="noise",
    )  # fmt: skip
    assert p.plan(0).wants == {NOISE}
    assert p.observe(0, {NOISE: 100.0}) is None
    assert (p.last_veto.trigger, p.last_veto.rule, p.last_veto.limit) == (
        "noise",
        "stop_noise",
        100.0,
    )
    assert p.observe(1, {NOISE: 200.0}).new_batch == 128  # 128 <= 200


def test_stop_rule_stability_vetoes_at_the_edge():
    # momentum 0.9: the edge is new_lr * lambda >= 3.8
    p = build_policy("abs", **EDGE, lr=0.1, duration=1, stop_rule="stability")
    assert p.plan(0).wants == {LAMBDA}
    g = p.observe(0, {LAMBDA: 10.0})  # duration: 0.2 * 10 = 2 < 3.8, grows
    assert (g.new_batch, g.new_lr) == (128, pytest.approx(0.2))
    assert p.observe(1, {LAMBDA: 10.0}) is None  # 0.4 * 10 = 4 >= 3.8
    v = p.last_veto
    assert (v.epoch, v.batch, v.new_batch, v.trigger, v.rule) == (
        1,
        128,
        256,
        "duration",
        "stop_stability",
    )
    assert (
        v.new_lr == pytest.approx(0.4) and v.limit == pytest.approx(0.38) and v.eigenvalue == 10.0
    )
    g = p.observe(2, {LAMBDA: 5.0})  # 5 <= peak 10 / 2, and 0.4 * 5 = 2 < 3.8: grows
    assert (g.trigger, g.new_batch, g.reference) == ("eigenvalue", 256, 10.0)
    assert p.observe(3, {LAMBDA: None}) is not None  # not measured: no veto (duration)
    assert p.vetoes == [1]


def test_stop_rule_stability_probes_without_the_eigenvalue_trigger():
    p = build_policy("abs", **RAMP, lr=0.1, stop_rule="stability")
    assert p.plan(0).wants == {LAMBDA} and p.plan(0).probe
    assert p.observe(0, {LAMBDA: 19.0}) is None  # 0.2 * 19 = 3.8: at the edge, vetoed
    assert p.observe(1, {LAMBDA: 18.0}).new_batch == 128  # 3.6 < 3.8


def test_stop_rule_stability_judges_the_lr_before_lr_guard():
    # lr_guard alone would grow with the lr capped at 3.8 / 19 = 0.2; the stop rule sees
    # the scaled 0.4 * 19 >= 3.8 and keeps the batch instead
    p = build_policy("abs", **RAMP, lr=0.2, stop_rule="stability", lr_guard=True)
    assert p.observe(0, {LAMBDA: 19.0}) is None and p.vetoes == [0]


def test_hybrid_veto_is_described_like_a_stop_rule_veto():
    p = Hybrid(**EDGE, lr=0.1, duration=100)
    p.observe(0, {LAMBDA: 4.0, NOISE: 1000.0})
    assert p.observe(1, {LAMBDA: 1.0, NOISE: 32.0}) is None  # 64 >= 32
    assert p.last_veto == Veto(
        1, 64, 128, pytest.approx(0.2), "eigenvalue", "noise", 32.0, 1.0, 32.0
    )


@pytest.mark.parametrize("method", ["abs", "absa", "gns", "inner_product", "hybrid"])
def test_new_switches_off_keep_state_and_lrs_as_before(method):
    """Defaults: no vetoes key, 4-entry segments, lrs and records as without the switches."""
    kw = dict(base_batch=64, max_batch=512, lr=0.1, total_epochs=20, duration=1)
    if method in ("abs", "absa", "hybrid"):
        kw["eigenvalue_trigger"] = False
    p = build_policy(method, **kw)
    t = drive(p, 4)
    assert t.batches == [64, 128, 256, 512] and t.lrs == [0.1, 0.2, 0.4, 0.8]
    assert t.step_lrs[1] == [0.2] * 4
    state = p.state_dict()
    assert all(len(s) == 4 for s in state["segments"])
    assert "vetoes" not in state or method == "hybrid"
    assert t.growths[0].lr_cap is None and p.last_veto is None


def test_unknown_stop_rule_raises():
    with pytest.raises(ValueError, match="stop_rule"):
        build_policy("abs", **RAMP, lr=0.1, stop_rule="maybe")
