"""The closed method registry: ``schedule.method`` name -> policy class.

A method is one class registered in one place, ``@register("name")`` on the class. What
config, engine and report ask about a method are the class attributes of ``Registrable``
(``reads``, ``grows``, ``curvature``, ``replays``, ``default_adv_fraction``, ``summary``),
read through ``spec_of`` or the named sets below; no code outside the policies tests a
method's name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from absa.core.policies.base import Policy, Registrable

# name -> class, in registration order (the order of the config docs and report columns)
METHODS: dict[str, type[Registrable]] = {}
_HOOKS = ("plan", "lr_at", "observe", "state_dict", "load_state_dict")
_NAME = re.compile(r"[a-z][a-z0-9_]*")
P = TypeVar("P", bound=type[Registrable])


def register(name: str) -> Callable[[P], P]:
    """Class decorator: make ``cls`` the policy of ``schedule.method: name``."""

    def add(cls: P) -> P:
        _check(name, cls)
        cls.name = name
        METHODS[name] = cls
        return cls

    return add


def _check(name: str, cls: type) -> None:
    """A registered class: a new lowercase name, a Registrable with its own summary and
    ``from_settings``, the policy hooks, and ``reads`` a frozenset of key names."""
    where = f"register({name!r}): {getattr(cls, '__name__', cls)}"
    if not _NAME.fullmatch(name):
        raise ValueError(f"{where}: the name must be lowercase letters, digits and _")
    if name in METHODS:
        raise ValueError(f"{where}: {name!r} is already {METHODS[name].__name__}")
    if not (isinstance(cls, type) and issubclass(cls, Registrable)):
        raise TypeError(f"{where}: a policy class must subclass Registrable")
    missing = [h for h in _HOOKS if not callable(getattr(cls, h, None))]
    if cls.from_settings.__func__ is Registrable.from_settings.__func__:  # type: ignore[attr-defined]
        missing.append("from_settings")
    if not vars(cls).get("summary"):
        missing.append("summary")
    if missing:
        raise TypeError(f"{where}: defines no {', '.join(missing)}")
    if not isinstance(cls.reads, frozenset) or not all(isinstance(k, str) for k in cls.reads):
        raise TypeError(f"{where}: reads must be a frozenset of schedule key names")


def unregister(name: str) -> None:
    """Forget ``name`` (a test's toy policy)."""
    del METHODS[name]


def spec_of(method: str) -> type[Registrable]:
    """The class registered as ``method``; its class attributes answer every question."""
    cls = METHODS.get(method)
    if cls is None:
        raise ValueError(f"unknown schedule method {method!r} (valid: {', '.join(METHODS)})")
    return cls


def methods(**attrs: Any) -> tuple[str, ...]:
    """Registered names whose class attributes equal ``attrs``, e.g. ``methods(replays=True)``."""
    return tuple(
        m for m, cls in METHODS.items() if all(getattr(cls, k) == v for k, v in attrs.items())
    )


def growing() -> tuple[str, ...]:
    """Methods that grow the batch themselves (need schedule.max_batch)."""
    return methods(grows=True)


def varying() -> tuple[str, ...]:
    """Methods whose batch may change during a run: the growing ones and the replays (of a
    usually growing run)."""
    return tuple(m for m, cls in METHODS.items() if cls.grows or cls.replays)


class _Reads(Mapping[str, frozenset[str]]):
    """method -> the schedule.* keys its policy reads (a live view of the registry)."""

    def __getitem__(self, method: str) -> frozenset[str]:
        return METHODS[method].reads

    def __iter__(self) -> Iterator[str]:
        return iter(METHODS)

    def __len__(self) -> int:
        return len(METHODS)


READS: Mapping[str, frozenset[str]] = _Reads()


def ignored_keys(method: str, keys: Iterable[str]) -> list[str]:
    """The dotted ``schedule.*`` keys among ``keys`` that ``method`` does not read (a BL run
    with ``schedule.max_batch`` set, say): worth a warning, not an error."""
    reads = spec_of(method).reads | {"method"}
    out = []
    for key in keys:
        section, _, name = key.partition(".")
        if section == "schedule" and name and name not in reads:
            out.append(key)
    return sorted(set(out))


def ignored_note(method: str, keys: Iterable[str]) -> str:
    """``"schedule.a, schedule.b are ignored by schedule.method bl"`` for the keys of
    ``keys`` that ``method`` does not read; "" when there are none."""
    extra = ignored_keys(method, keys)
    if not extra:
        return ""
    verb = "is" if len(extra) == 1 else "are"
    return f"{', '.join(extra)} {verb} ignored by schedule.method {method}"


def build_policy(method: str, **kw: Any) -> Policy:
    """Policy by method name with the class's keyword arguments (see ``METHODS``)."""
    return spec_of(method)(**kw)  # type: ignore[return-value]
