"""One typed config tree for every absa command.

Precedence: defaults < YAML file < command-line overrides (``optim.lr=0.2``). Every section
forbids unknown keys; every error is one line naming the file (or "override") and the
dotted field, with the closest valid key suggested for typos.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DATASETS = (
    "digits",
    "synthetic",
    "cifar10",
    "cifar100",
    "svhn",
    "mnist",
    "fashion_mnist",
    "imagefolder",
)
METHODS = ("bl", "fb", "gg", "abs", "absa", "replay")
_DEVICE = re.compile(r"auto|cpu|mps|cuda(?::[0-9]+)?")  # what distributed.resolve_device takes


class ConfigError(ValueError):
    """A config problem, already phrased as one line for the user."""


class Section(BaseModel):
    """Strict types: no bools as numbers, numbers as bools or quoted numbers (ints may fill
    float fields); path and tuple fields are lax only in their container (str, list)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, strict=True)


class DataConfig(Section):
    name: Literal[DATASETS] = "digits"  # type: ignore[valid-type]
    root: Path = Field(Path("data"), strict=False)  # folder holding the on-disk datasets
    download: bool = False  # opt-in torchvision download (needs internet)
    augment: Literal["auto", "none", "crop", "crop_flip"] = "auto"  # auto: no flip for digit sets
    image_size: int | None = Field(None, ge=4)  # resize/upsample to this side length
    train_size: int | None = Field(None, ge=1)  # synthetic: size; others: first N (seeded subset)
    test_size: int | None = Field(None, ge=1)
    test_fraction: float = Field(0.25, gt=0, lt=1)  # digits: held-out fraction (fixed split)
    split_seed: int = 0  # digits/synthetic split and subset seed (independent of train.seed)
    num_workers: int = Field(0, ge=0)  # imagefolder decoding workers


class ModelConfig(Section):
    name: str = "small_cnn"
    width: int = Field(16, ge=1)  # base channel width of the small models
    # extra keyword arguments of the model's factory, e.g. {pool: 4} for small_cnn
    kwargs: dict[str, Any] = Field(default_factory=dict)


class OptimConfig(Section):
    lr: float = Field(0.1, gt=0)  # eta_0 at batch.size (see schedule.ref_batch for FB)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    nesterov: bool = False
    # 0-based epochs from which lr *= decay_factor
    decay_epochs: tuple[int, ...] = Field((), strict=False)
    decay_factor: float = Field(0.2, gt=0, le=1)  # rho

    @field_validator("decay_epochs")
    @classmethod
    def _sorted(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(e < 0 for e in v) or list(v) != sorted(set(v)):
            raise ValueError("must be increasing, non-negative epochs")
        return v


class BatchConfig(Section):
    size: int = Field(128, ge=1)  # logical (global) batch B; B_0 for adaptive methods
    max_micro_batch: int = Field(256, ge=1)  # largest chunk run at once (gradient accumulation)


class TrainConfig(Section):
    epochs: int = Field(30, ge=1)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps (availability checked at run time)
    out_dir: Path = Field(Path("runs"), strict=False)
    run_name: str | None = None  # default: <config stem>-<method>-b<batch>-s<seed>
    eval_batch: int = Field(512, ge=1)
    deterministic: bool = True  # torch.use_deterministic_algorithms (warn-only)
    threads: int | None = Field(None, ge=1)  # torch.set_num_threads

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not _DEVICE.fullmatch(v):
            raise ValueError("must be auto, cpu, cuda, cuda:N or mps")
        return v


class ScheduleConfig(Section):
    method: Literal[METHODS] = "bl"  # type: ignore[valid-type]
    max_batch: int | None = Field(None, ge=1)  # B_max for gg/abs/absa
    ref_batch: int | None = Field(None, ge=1)  # fb: lr = optim.lr * batch.size / ref_batch
    warmup_epochs: float = Field(5.0, ge=0)  # fb: linear lr warm-up
    alpha: float = Field(2.0, gt=1)  # abs: grow when lambda <= lambda_ref / alpha
    growth_factor: int = Field(2, ge=2)
    lr_scaling: Literal["linear", "sqrt", "none"] = "linear"
    reference: Literal["peak", "first"] = "peak"  # first = the authors' rule
    duration: int = Field(10, ge=1)  # abs: grow anyway after this many epochs
    eigenvalue_trigger: bool = True  # abs/absa: false = duration-only growth, no Hessian
    # replay: a finished run folder whose metrics.jsonl gives batch, lr and adv fraction
    replay_from: Path | None = Field(None, strict=False)


class HessianConfig(Section):
    block: str = "last"  # last | full | comma-separated name patterns
    probe_size: int = Field(4096, ge=1)  # fixed probe subset of the train split
    method: Literal["power", "lanczos"] = "power"
    max_iter: int = Field(20, ge=1)
    rtol: float = Field(1e-3, gt=0)
    warm_start: bool = True
    max_overhead: float | None = Field(None, gt=0, lt=1)  # cap on hessian/train time


class AdversarialConfig(Section):
    fraction: float | None = Field(None, ge=0, le=1)  # r; None = 0.2 for absa, 0 otherwise
    method: Literal["fgsm", "pgd", "fast_fgsm"] = "fgsm"
    eps: float = Field(0.005, ge=0, le=1)  # [0,1] pixels
    pgd_steps: int = Field(10, ge=1)
    pgd_step_size: float | None = Field(None, gt=0)  # [0,1] pixels; default 2.5 * eps / steps
    model_mode: Literal["eval", "train"] = "eval"  # module mode while crafting examples
    # robust accuracy in `absa eval` and the final evaluation of a run
    eval_eps: tuple[float, ...] = Field((0.005, 0.01, 0.02), strict=False)
    final_eval: bool = False  # clean/FGSM/PGD accuracy of the final model -> summary.json
    eval_limit: int | None = Field(None, ge=1)  # final_eval: first N test samples


class DistributedConfig(Section):
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl on CUDA, gloo on CPU
    timeout_s: int = Field(1800, ge=10)


class Config(Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    batch: BatchConfig = BatchConfig()
    train: TrainConfig = TrainConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    hessian: HessianConfig = HessianConfig()
    adversarial: AdversarialConfig = AdversarialConfig()
    distributed: DistributedConfig = DistributedConfig()

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        s, b = self.schedule, self.batch
        if s.method in ("gg", "abs", "absa"):
            if s.max_batch is None:
                raise ValueError(f"schedule.max_batch: required for method {s.method}")
            if s.max_batch < b.size:
                raise ValueError(
                    f"schedule.max_batch: {s.max_batch} is smaller than batch.size {b.size}"
                )
        if s.method == "replay" and s.replay_from is None:
            raise ValueError("schedule.replay_from: required for method replay (a run folder)")
        for e in self.optim.decay_epochs:
            if e >= self.train.epochs:
                raise ValueError(
                    f"optim.decay_epochs: epoch {e} is not below train.epochs {self.train.epochs}"
                )
        return self

    @property
    def adv_fraction(self) -> float:
        """r at the start of training: explicit, else 0.2 for ABSA and 0 otherwise."""
        if self.adversarial.fraction is not None:
            return self.adversarial.fraction
        return 0.2 if self.schedule.method == "absa" else 0.0


# --- YAML -----------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads 1e-3 as a float (YAML 1.1 needs a dot, YAML 1.2 does not)."""


_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:float"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def parse_yaml(text: str, source: str = "<string>") -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{source}:{where}: malformed YAML: {problem}") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config: {err.strerror}") from None
    data = parse_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


BASE_KEY = "base"  # top-level key of a config file: the file it extends


def read_config_tree(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's tree with inheritance resolved: a top-level ``base: other.yaml``
    (relative to the file) is read first and the file's own keys are merged over it,
    mapping by mapping (lists and scalars are replaced). Chains are allowed; a cycle or a
    missing base is a one-line error naming the file."""
    path = Path(path)
    tree = read_yaml(path)
    base = tree.pop(BASE_KEY, None)
    if base is None:
        return tree
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: {BASE_KEY}: expected the path of a config file to extend")
    parent = (path.parent / base).resolve()
    chain = (*_seen, path.resolve())
    if parent in chain:
        cycle = " -> ".join(str(p.name) for p in (*chain, parent))
        raise ConfigError(f"{path}: {BASE_KEY}: inheritance cycle ({cycle})")
    if not parent.is_file():
        raise ConfigError(f"{path}: {BASE_KEY}: no such config file {parent}")
    return merge_trees(read_config_tree(parent, chain), tree)


def merge_trees(under: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged onto a copy of ``under``: nested mappings merge, other values replace."""
    out = deep_copy(under)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_trees(out[key], value)
        else:
            out[key] = deep_copy(value)
    return out


# --- overrides ------------------------------------------------------------------------------


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted ``key=value`` pairs into a nested dict; values are parsed as YAML."""
    out = deep_copy(tree)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r}: expected dotted key=value, e.g. optim.lr=0.2")
        value = parse_yaml(raw, f"override {key}") if raw.strip() else None
        set_dotted(out, key, value)
    return out


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """``tree[a][b][c] = copy of value`` for ``key = "a.b.c"``, creating sections as needed."""
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = deep_copy(value)


def deep_copy(tree: Any) -> Any:
    """Copy of a YAML tree (nested dicts and lists; leaves shared)."""
    if isinstance(tree, dict):
        return {k: deep_copy(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [deep_copy(v) for v in tree]
    return tree


def did_you_mean(word: str, valid: list[str], prefix: str = "") -> str:
    """``; did you mean <prefix><closest>?`` for a misspelt key or name, or ""."""
    close = difflib.get_close_matches(word, valid, n=1, cutoff=0.6)
    return f"; did you mean {prefix}{close[0]}?" if close else ""


# --- validation -----------------------------------------------------------------------------


def _fields_at(path: tuple[Any, ...], root: type[BaseModel]) -> list[str]:
    model = root
    for part in path:
        field = model.model_fields.get(str(part))
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def describe_error(exc: ValidationError, root: type[BaseModel]) -> str:
    """One line for a pydantic error on a tree validated as ``root``: the first error, with
    the dotted field, the closest key for an unknown one, and how many more there are."""
    errors = exc.errors()
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return _describe(errors[0], root) + more


def _describe(err: Any, root: type[BaseModel]) -> str:
    loc = tuple(err["loc"])
    dotted = ".".join(str(p) for p in loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        valid = _fields_at(loc[:-1], root)
        hint = did_you_mean(str(loc[-1]), valid, "".join(f"{p}." for p in loc[:-1]))
        return f"{dotted}: unknown key{hint} (valid: {', '.join(valid)})"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
        if not dotted:  # model-level check: the message already starts with the field
            return msg
    got = err.get("input")
    shown = "" if isinstance(got, dict) or kind == "missing" else f" (got {got!r})"
    return f"{dotted}: {msg}{shown}" if dotted else f"{msg}{shown}"


def _check_model_name(name: str, kwargs: dict[str, Any], source: str) -> None:
    """``model.name`` must be in the model registry and take ``model.kwargs`` (imported here:
    models imports config)."""
    from absa.models import ModelError, check_model_args

    try:
        check_model_args(name, kwargs)
    except ModelError as err:
        raise ConfigError(f"{source}: {err}") from None


def validate(tree: dict[str, Any], source: str = "config") -> Config:
    try:
        cfg = Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_error(exc, Config)}") from None
    _check_model_name(cfg.model.name, cfg.model.kwargs, source)
    return cfg


def load(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load defaults < YAML ``path`` < dotted ``overrides`` into a validated, frozen Config."""
    tree = read_config_tree(path) if path is not None else {}
    source = str(path) if path is not None else "config"
    if overrides:
        validate(tree, source)  # blame the file for its own errors
        tree = apply_overrides(tree, overrides)
        source = f"{source} + overrides" if path is not None else "overrides"
    return validate(tree, source)


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain, YAML/JSON-safe dict of a config (paths as strings, tuples as lists)."""
    return cfg.model_dump(mode="json")


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def from_dict(tree: dict[str, Any], source: str = "checkpoint") -> Config:
    return validate(tree, source)
