"""Fuzzing the config loader: any ``key=value`` override gives a Config or a one-line
ConfigError naming the key, never another exception or a traceback.

A fixed table of nasty values always runs; the hypothesis test adds generated ones where
hypothesis is installed.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest
from pydantic import BaseModel

from absa.run import config as C


def _leaf_keys(model: type[BaseModel] = C.Config, prefix: str = "") -> list[str]:
    """Every dotted field of the config tree, sections included."""
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += _leaf_keys(ann, f"{prefix}{name}.")
    return keys


# every field, plus unknown keys and keys below a scalar field
KEYS = _leaf_keys() + ["optim.lrr", "nosuch.section", "optim.lr.deeper", "model.kwargs.pool"]

NASTY = [
    "99999999999999999999999",
    str(2**63),
    str(-(2**64)),
    "1e400",
    "-.inf",
    ".nan",
    "1e308",
    "true",
    "~",
    "'0.1'",
    "[1, [2, {a: b}]]",
    "{a: {b: {c: 1}}}",
    "{x: 1, x: 2}",
    "&a [*a]",
    "2020-13-45",
    "!!binary AAAA",
    "!!python/object:os.system x",
    '"\\0"',
    "[" * 100,
    "é ñ 中文",
]


def _all_finite_and_small(tree: Any) -> bool:
    """No inf/nan float and no int beyond a C long anywhere in a dumped config."""
    if isinstance(tree, dict):
        return all(_all_finite_and_small(v) for v in tree.values())
    if isinstance(tree, list):
        return all(_all_finite_and_small(v) for v in tree)
    if isinstance(tree, float):
        return math.isfinite(tree)
    if isinstance(tree, int) and not isinstance(tree, bool):
        return -(2**63) <= tree < 2**63
    return True


def _names_key(msg: str, key: str) -> bool:
    """Whether ``msg`` names ``key`` or the part of it that is wrong (``nosuch`` of
    ``nosuch.x``, ``optim.lr`` of ``optim.lr.x``) as a field: followed by ``:``, ``.``, a
    space or the end."""
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        if re.search(rf"(^|[ (]){re.escape('.'.join(parts[:n]))}([:. ]|$)", msg):
            return True
    return False


def check_override(key: str, value: str) -> None:
    """``load(None, [key=value])`` returns a sane Config or raises a one-line ConfigError
    that names ``key`` (the key itself, the unknown part of it, or the field below it that
    is wrong)."""
    try:
        cfg = C.load(None, [f"{key}={value}"])
    except C.ConfigError as err:
        msg = str(err)
        assert "\n" not in msg, msg
        assert msg.startswith(("override ", "overrides: ")), msg
        assert _names_key(msg, key), msg
        return
    assert _all_finite_and_small(C.to_dict(cfg))


@pytest.mark.parametrize("key", KEYS)
def test_nasty_values_for_every_key(key):
    for value in NASTY:
        check_override(key, value)


try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # not a dependency of absa: the fixed table above still runs
    st = None

if st is not None:
    _scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=2**31).map(lambda n: n * 1_000_003),
        st.floats(),
        st.text(max_size=8),
    )
    _trees = st.recursive(
        _scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
        max_leaves=8,
    )
    VALUES = st.one_of(
        st.integers().map(str),
        st.integers(min_value=2**62, max_value=2**400).map(lambda n: str(n)),
        st.sampled_from([".inf", "-.inf", ".nan", "1e400", "-1e999", "1e308", "-0.0"]),
        st.floats().map(repr),
        st.text(max_size=30),
        _trees.map(json.dumps),  # JSON is YAML: nested lists and mappings of any scalar
    )

    @settings(
        max_examples=200,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(key=st.sampled_from(KEYS), value=VALUES)
    def test_fuzzed_overrides_give_config_or_one_line_error(key, value):
        check_override(key, value)

else:

    def test_fuzzed_overrides_give_config_or_one_line_error():
        pytest.skip("hypothesis is not installed")
