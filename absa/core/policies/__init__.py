"""Batch-size / learning-rate / adversarial-fraction policies and their registry.

Pure and counter-driven: a policy is asked for the plan of an epoch (batch size B, lr eta,
adversarial fraction r, and the signals it ``wants`` measured at the end of the epoch), for
the lr at a point inside an epoch, and observes a mapping of the measured signals (names in
``SIGNALS``; absa.engine.probes measures them). It holds no tensors and does no I/O;
``state_dict`` / ``load_state_dict`` use plain Python types. It is built from resolved values
(``Settings``; absa.run.policy reads them from a config).

Modules: ``base`` (signals, records, lr rules, ``Registrable``), ``registry`` (``register``,
``spec_of``, ``METHODS``), ``fixed`` (bl, fb, gg, seesaw), ``adaptive`` (abs, absa, gns,
inner_product, hybrid), ``replay``. Adding a method: one ``Registrable`` class with
``@register("name")`` (README, "Adding a policy").
"""

from absa.core.policies.base import (
    IP_VARIANCE,
    LAMBDA,
    LAMBDA_STDERR,
    LR_SCALINGS,
    NOISE,
    NOISE_G2,
    NOISE_TRACE,
    REFERENCES,
    SIGNALS,
    STOP_RULES,
    EpochPlan,
    Growth,
    Policy,
    Registrable,
    Settings,
    Signals,
    Veto,
    lr_scale,
    step_decay,
)
from absa.core.policies.registry import (
    METHODS,
    READS,
    build_policy,
    growing,
    ignored_keys,
    ignored_note,
    methods,
    register,
    spec_of,
    unregister,
    varying,
)

# isort: split
# The import order is the registration order, and so the order of METHODS (config docs,
# report columns): fixed, then adaptive, then replay.
from absa.core.policies.fixed import BL, FB, GG, Seesaw, Stateless

# isort: split
from absa.core.policies.adaptive import (
    ABS,
    ABSA,
    CURVATURE_KEYS,
    GNS,
    GROWTH_KEYS,
    Hybrid,
    InnerProduct,
)

# isort: split
from absa.core.policies.replay import Replay

# the built-in growing methods; ask growing() for the live set (a registered one included)
GROWING = growing()

__all__ = [
    "ABS",
    "ABSA",
    "BL",
    "CURVATURE_KEYS",
    "FB",
    "GG",
    "GNS",
    "GROWING",
    "GROWTH_KEYS",
    "IP_VARIANCE",
    "LAMBDA",
    "LAMBDA_STDERR",
    "LR_SCALINGS",
    "METHODS",
    "NOISE",
    "NOISE_G2",
    "NOISE_TRACE",
    "READS",
    "REFERENCES",
    "SIGNALS",
    "STOP_RULES",
    "EpochPlan",
    "Growth",
    "Hybrid",
    "InnerProduct",
    "Policy",
    "Registrable",
    "Replay",
    "Seesaw",
    "Settings",
    "Signals",
    "Stateless",
    "Veto",
    "build_policy",
    "growing",
    "ignored_keys",
    "ignored_note",
    "lr_scale",
    "methods",
    "register",
    "spec_of",
    "step_decay",
    "unregister",
    "varying",
]
