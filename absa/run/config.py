"""One typed config tree for every absa command.

Precedence: defaults < YAML file < command-line overrides (``optim.lr=0.2``). Every section
forbids unknown keys; every error is one line naming the file (or "override") and the
dotted field, with the closest valid key suggested for typos.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    field_validator,
    model_validator,
)
from yaml.constructor import ConstructorError

from absa.core.policies import METHODS as REGISTRY
from absa.core.policies import spec_of
from absa.run.data import DATASETS, unknown_dataset
from absa.run.models import ModelError, check_model_args
from absa.util import did_you_mean

# the built-in methods (the documented choices of schedule.method); the registry in
# absa.core.policies, which validation asks, may hold more
METHODS = tuple(REGISTRY)
_DEVICE = re.compile(r"auto|cpu|mps|cuda(?::[0-9]+)?")  # what distributed.resolve_device takes

# Upper bounds of the integer fields: generous for any real run, small enough that every
# value fits a C long where torch needs one and no typo becomes a huge allocation.
# seeds: absa.run.data and absa.engine.loop derive generator seeds up to seed * 1_000_003 + 2**20,
# far below the 2**63 that torch.Generator.manual_seed takes
MAX_SEED = 2**32 - 1
MAX_BATCH = 2**24  # samples in one (logical or micro) batch
MAX_SAMPLES = 10**9  # samples in a split
MAX_EPOCHS = 100_000
MAX_SIDE = 4096  # pixels (image side) and channels (model width)


class ConfigError(ValueError):
    """A config problem, already phrased as one line for the user."""


def _no_nul(value: Any) -> Any:
    """A path or name must not hold NUL, which no file system call accepts."""
    if "\x00" in str(value):
        raise ValueError("must not contain a NUL character")
    return value


PathField = Annotated[Path, AfterValidator(_no_nul)]
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,127}")  # one safe path component


def _run_name(value: str) -> str:
    """A run name is one path component: it can never point outside ``train.out_dir``."""
    if not RUN_NAME.fullmatch(value) or value in (".", ".."):
        raise ValueError(
            "must be one folder name of letters, digits and . _ + = - (at most 128, starting "
            "with a letter or digit): no '/', '..' or absolute paths"
        )
    return value


RunNameField = Annotated[str, AfterValidator(_run_name)]


def _dataset(value: str) -> str:
    """A data set of the registry (absa.run.data.DATASETS)."""
    if value not in DATASETS:
        raise ValueError(unknown_dataset(value))
    return value


DatasetField = Annotated[str, AfterValidator(_dataset)]


class Section(BaseModel):
    """Strict types: no bools as numbers, numbers as bools or quoted numbers (ints may fill
    float fields); path and tuple fields are lax only in their container (str, list). Every
    float field, tuple items included, must be finite (no .inf, .nan or 1e400)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        validate_default=True,
        strict=True,
        allow_inf_nan=False,
        protected_namespaces=(),  # adversarial.model_mode is a field (pydantic < 2.10 warned)
    )


class DataConfig(Section):
    # dataset; every one but digits and synthetic reads files under root
    name: DatasetField = "digits"
    root: PathField = Field(Path("data"), strict=False)  # folder holding the on-disk datasets
    download: bool = False  # opt-in torchvision download (needs internet)
    augment: Literal["auto", "none", "crop", "crop_flip"] = "auto"  # auto: no flip for digit sets
    image_size: int | None = Field(None, ge=4, le=MAX_SIDE)  # resize/upsample to this side (px)
    # synthetic: size; others: first N (seeded subset); samples
    train_size: int | None = Field(None, ge=1, le=MAX_SAMPLES)
    test_size: int | None = Field(
        None, ge=1, le=MAX_SAMPLES
    )  # first N of the test split (subset seeded by split_seed + 1); null = all
    test_fraction: float = Field(0.25, gt=0, lt=1)  # digits: held-out fraction (fixed split)
    # digits/synthetic split and subset seed (independent of train.seed); see MAX_SEED
    split_seed: int = Field(0, ge=0, le=MAX_SEED)
    num_workers: int = Field(0, ge=0, le=256)  # imagefolder decoding processes
    # imagefolder: evaluation resize side before the center crop to image_size (ImageNet:
    # 256 for 224); null = image_size
    resize_size: int | None = Field(None, ge=4, le=MAX_SIDE)
    # imagefolder: training samples through RandomResizedCrop(image_size) + horizontal flip,
    # seeded per sample, in place of data.augment's crop/flip; false = resize + center crop
    folder_augment: bool = False
    # imagefolder: before the run folder is written, open every image's header (header:
    # catches non-images), decode every image once (full: also truncated or corrupt data,
    # about one epoch of decoding), or nothing (none: a bad file stops the run when read)
    check_images: Literal["header", "full", "none"] = "header"
    # keep tensor datasets (uint8) and their augmentation on the accelerator: auto = on CUDA
    # when the split fits in a quarter of the free memory; no effect on CPU
    on_device: bool | Literal["auto"] = "auto"


class ModelConfig(Section):
    name: str = "small_cnn"
    width: int = Field(16, ge=1, le=MAX_SIDE)  # base channel width of the small models
    # extra keyword arguments of the model's factory, e.g. {pool: 4} for small_cnn
    kwargs: dict[str, Any] = Field(default_factory=dict)
    # torchvision:/timm:/module:function models: dotted path of the final nn.Linear inside the
    # factory's module (fc, classifier.3, heads.head); null: found automatically (absa.run.models)
    classifier: str | None = None

    @field_validator("classifier")
    @classmethod
    def _classifier_path(cls, v: str | None, info: Any) -> str | None:
        if v is None:
            return v
        if ":" not in str(info.data.get("name", "")):
            raise ValueError("only for torchvision:, timm: or module:function models")
        if not re.fullmatch(r"\w+(\.\w+)*", v):
            raise ValueError("expected a dotted module path such as fc or classifier.3")
        return v

    @field_validator("kwargs")
    @classmethod
    def _finite_kwargs(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key, value in v.items():
            if not _plain_numbers(value):
                raise ValueError(f"{key}: must not hold .inf, .nan or an integer beyond 64 bits")
        return v


class OptimConfig(Section):
    # eta_0 at batch.size (see schedule.ref_batch for FB); above 1e6 SGD only overflows
    lr: float = Field(0.1, gt=0, le=1e6)
    momentum: float = Field(0.9, ge=0, lt=1)  # SGD momentum beta (also LARS)
    weight_decay: float = Field(5e-4, ge=0, le=10)  # L2 coefficient; > 10 zeroes the weights
    nesterov: bool = False  # Nesterov momentum (sgd/lars, when momentum > 0)
    # sgd (torch SGD) | adamw (torch AdamW) | lars (You et al. 2017) | lamb (You et al. 2019);
    # momentum/nesterov: sgd, lars; betas/eps: adamw, lamb (see absa.engine.optim)
    name: Literal["sgd", "adamw", "lars", "lamb"] = "sgd"
    # adamw/lamb: decay rates of the first and second moments
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = Field(
        (0.9, 0.999), strict=False
    )
    eps: float = Field(1e-8, gt=0, le=1)  # adamw/lamb denominator; lars: trust-ratio denominator
    trust_coefficient: float = Field(0.001, gt=0, le=1e3)  # lars: eta of the trust ratio
    # biases and norm weights (<= 1-D params, timm no_weight_decay()) get no weight decay and,
    # for lars/lamb, no trust ratio; null: true for adamw/lars/lamb, false for sgd
    exclude_from_decay: bool | None = None
    impl: Literal["absa", "timm"] = "absa"  # lars/lamb: absa's own code or timm's (needs timm)
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
    # logical (global) batch B in samples; B_0 for adaptive methods
    size: int = Field(128, ge=1, le=MAX_BATCH)
    # largest chunk run at once (gradient accumulation), samples; "auto": the largest that
    # fits in accelerator memory, found once per run (256 on CPU, where nothing is probed)
    max_micro_batch: Annotated[int, Field(ge=1, le=MAX_BATCH)] | Literal["auto"] = 256


class TrainConfig(Section):
    epochs: int = Field(
        30, ge=1, le=MAX_EPOCHS
    )  # epochs E of the run (may be raised on --resume, never lowered)
    seed: int = Field(0, ge=0, le=MAX_SEED)  # torch seed; epoch seeds derive from it
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps (availability checked at run time)
    out_dir: PathField = Field(Path("runs"), strict=False)  # run folders go to out_dir/run_name
    run_name: RunNameField | None = None  # default: <config stem>-<method>-b<batch>-s<seed>
    eval_batch: int = Field(512, ge=1, le=MAX_BATCH)  # samples per evaluation forward pass
    deterministic: bool = True  # torch.use_deterministic_algorithms (warn-only)
    threads: int | None = Field(None, ge=1, le=1024)  # torch.set_num_threads (CPU threads)
    # autocast of training/evaluation forward+backward (bf16 also on CPU; fp16 with a
    # checkpointed gradient scaler); Hessian probes stay fp32
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False  # model and 4-D inputs in channels_last memory format
    compile: bool = False  # torch.compile the training module (checkpoints use the bare one)
    # torch.compile's mode (needs train.compile: true); reduce-overhead and max-autotune
    # replay CUDA graphs on a GPU (one per step shape; gradients then accumulate into kept
    # .grad buffers); on a CPU they compile as default does
    compile_mode: Literal[
        "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"
    ] = "default"

    @model_validator(mode="after")
    def _compile_mode(self) -> TrainConfig:
        if self.compile_mode != "default" and not self.compile:
            raise ValueError(f"train.compile_mode: {self.compile_mode} needs train.compile: true")
        return self

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not _DEVICE.fullmatch(v):
            raise ValueError("must be auto, cpu, cuda, cuda:N or mps")
        return v


def _registered(value: Any) -> str:
    """A ``schedule.method`` is a name in the policy registry (absa.core.policies.METHODS),
    which may have grown since this module defined ``METHODS``."""
    if isinstance(value, str) and value in REGISTRY:
        return value
    names = [repr(m) for m in REGISTRY]
    choices = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
    raise ValueError(f"Input should be {choices}")


class ScheduleConfig(Section):
    method: Annotated[Literal[METHODS], PlainValidator(_registered)] = "bl"  # type: ignore[valid-type]
    max_batch: int | None = Field(None, ge=1, le=MAX_BATCH)  # B_max for gg/abs/absa (samples)
    # fb: lr = optim.lr * batch.size / ref_batch (samples)
    ref_batch: int | None = Field(None, ge=1, le=MAX_BATCH)
    warmup_epochs: float = Field(5.0, ge=0, le=MAX_EPOCHS)  # fb: linear lr warm-up (epochs)
    alpha: float = Field(2.0, gt=1, le=1e6)  # abs: grow when lambda <= lambda_ref / alpha
    growth_factor: int = Field(2, ge=2, le=MAX_BATCH)  # batch multiplier at each growth
    # lr at a new batch B': eta * B'/B (linear), * sqrt(B'/B), or unchanged
    lr_scaling: Literal["linear", "sqrt", "none"] = "linear"
    reference: Literal["peak", "first"] = "peak"  # first = the authors' rule
    # abs/absa/hybrid: grow anyway after this many epochs
    duration: int = Field(10, ge=1, le=MAX_EPOCHS)
    eigenvalue_trigger: bool = True  # abs/absa: false = duration-only growth, no Hessian
    # abs/absa/hybrid: the eigenvalue trigger needs lambda + 2 stderr <= lambda_ref / alpha
    confidence: bool = False
    # any growing method: after a growth cap lr at 2 (1 + momentum) / lambda_max (stability)
    lr_guard: bool = False
    # abs/absa/gns/inner_product/hybrid: after a growth cap lr at this fixed value (not below
    # optim.lr); null = no ceiling
    max_lr: float | None = Field(None, gt=0, le=1e6)
    # abs/absa/gns/inner_product/hybrid: after a growth ramp the lr linearly (per step) from
    # the old to the new value over this many epochs (fractions allowed); 0 = step change
    growth_warmup: float = Field(0.0, ge=0, le=MAX_EPOCHS)
    # abs/absa/gns/inner_product/hybrid: veto a growth (metrics vetoed/veto) when the new
    # batch would exceed stop_noise_ratio * B_simple (noise; needs signals.noise), or when
    # new lr * lambda_max >= 2 (1 + momentum) (stability; probes lambda_max every epoch)
    stop_rule: Literal["none", "noise", "stability"] = "none"
    # stop_rule noise: the largest batch allowed, in units of the noise scale B_simple
    stop_noise_ratio: float = Field(1.0, gt=0, le=1e6)
    # gns: grow while B < gns_ratio * B_simple (norm test with theta: gns_ratio = 1/theta^2);
    # hybrid: veto a growth while B >= gns_ratio * B_simple
    gns_ratio: float = Field(1.0, gt=0, le=1e6)
    ip_theta: float = Field(0.9, gt=0, le=1e3)  # inner_product: inner-product test's theta
    ip_nu: float = Field(5.84, gt=0, le=1e3)  # inner_product: orthogonality test's nu
    # replay: a finished run folder whose metrics.jsonl gives batch, lr and adv fraction
    replay_from: PathField | None = Field(None, strict=False)


class HessianConfig(Section):
    block: str = "last"  # last | full | comma-separated name patterns
    probe_size: int = Field(4096, ge=1, le=MAX_SAMPLES)  # fixed probe subset of the train split
    # top-eigenvalue solver of the training probe; lanczos (default) took 26-40% fewer HVPs
    # than power with warm start and was exact to 1e-6 (docs/benchmarks/bench_signals.txt)
    method: Literal["power", "lanczos"] = "lanczos"
    max_iter: int = Field(20, ge=1, le=10_000)  # Hessian-vector products per estimate
    rtol: float = Field(1e-3, gt=0, le=1)  # relative change that stops the iteration
    warm_start: bool = True  # start each probe from the previous epoch's eigenvector
    max_overhead: float | None = Field(None, gt=0, lt=1)  # cap on hessian/train time
    stderr: bool = True  # lambda_max_stderr over probe chunks (one extra HVP per probe)
    # HVP of a full/named block: reverse (double backprop), forward (forward-over-reverse,
    # torch.func), auto (time one of each on the first probe chunk, keep the faster); exact
    hvp: Literal["auto", "reverse", "forward"] = "reverse"
    # full/named block, reverse HVPs: keep each probe chunk's gradient graph for the probe's
    # HVPs (bit-identical; ~2.7x a gradient per HVP instead of ~4x; holds every chunk's
    # activations and backward intermediates in memory while the eigenvalue is computed)
    keep_graph: bool = False


class SignalsConfig(Section):
    """Gradient statistics measured during training for every method (absa.engine.probes)."""

    noise: bool = True  # gradient noise scale B_simple, logged as noise_scale
    noise_ema: float = Field(0.95, ge=0, lt=1)  # per-step EMA decay of |G|^2 and tr(Sigma)
    # steps per epoch measured by one extra half-batch backward when a step has a single
    # micro-batch on a single process (0: never; then such runs log no noise scale)
    noise_split_steps: int = Field(8, ge=0, le=1_000_000)


class AdversarialConfig(Section):
    fraction: float | None = Field(None, ge=0, le=1)  # r; None = 0.2 for absa, 0 otherwise
    method: Literal["fgsm", "pgd", "fast_fgsm"] = "fgsm"  # attack crafting the training examples
    eps: float = Field(0.005, ge=0, le=1)  # [0,1] pixels
    pgd_steps: int = Field(10, ge=1, le=10_000)  # gradient steps per PGD example
    pgd_step_size: float | None = Field(None, gt=0, le=1)  # [0,1] pixels; default 2.5*eps/steps
    model_mode: Literal["eval", "train"] = "eval"  # module mode while crafting examples
    # robust accuracy in `absa eval` and the final evaluation of a run
    eval_eps: tuple[Annotated[float, Field(ge=0, le=1)], ...] = Field(  # [0,1] pixels
        (0.005, 0.01, 0.02), strict=False
    )
    final_eval: bool = False  # clean/FGSM/PGD accuracy of the final model -> summary.json
    eval_limit: int | None = Field(None, ge=1, le=MAX_SAMPLES)  # final_eval: first N test samples


class DistributedConfig(Section):
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl on CUDA, gloo on CPU
    timeout_s: int = Field(1800, ge=10, le=7 * 86_400)  # collective timeout, seconds (<= 1 week)
    # BatchNorm statistics over the global batch (SyncBatchNorm) instead of each rank's share:
    # then N processes follow the 1-process trajectory also for BatchNorm models
    sync_batchnorm: bool = False


class LogConfig(Section):
    """Experiment loggers besides metrics.jsonl (absa.engine.loggers; rank 0 only, all off)."""

    tensorboard: bool = False  # every metrics field per epoch + step scalars (pip: tensorboard)
    jsonl: bool = False  # step scalars to steps.jsonl in the run folder
    every_steps: int = Field(10, ge=1, le=1_000_000)  # step scalars every N SGD updates
    wandb: bool = False  # Weights & Biases (pip: wandb)
    wandb_project: str | None = None  # W&B project; null = W&B's default
    mlflow: bool = False  # MLflow (pip: mlflow)
    mlflow_uri: str | None = None  # tracking URI; null = MLflow's default (./mlruns)
    mlflow_experiment: str | None = None  # experiment name; null = MLflow's default


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
    signals: SignalsConfig = SignalsConfig()
    log: LogConfig = LogConfig()

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        s, b = self.schedule, self.batch
        if self.hessian.keep_graph and self.hessian.hvp != "reverse":
            raise ValueError(
                f"hessian.keep_graph: needs hessian.hvp reverse (got {self.hessian.hvp})"
            )
        spec = spec_of(s.method)
        if spec.grows:
            if s.max_batch is None:
                raise ValueError(f"schedule.max_batch: required for schedule.method {s.method}")
            if s.max_batch < b.size:
                raise ValueError(
                    f"schedule.max_batch: {s.max_batch} is smaller than batch.size {b.size}"
                )
        if "max_lr" in spec.reads and s.max_lr is not None and s.max_lr < self.optim.lr:
            raise ValueError(
                f"schedule.max_lr: {s.max_lr:g} is below optim.lr {self.optim.lr:g} "
                "(the ceiling binds after a growth, never on the starting lr)"
            )
        if "stop_rule" in spec.reads and s.stop_rule == "noise" and not self.signals.noise:
            raise ValueError(
                "schedule.stop_rule: noise needs the noise scale (signals.noise: true)"
            )
        if spec.replays and s.replay_from is None:
            raise ValueError(
                f"schedule.replay_from: required for schedule.method {s.method} (a run folder)"
            )
        for e in self.optim.decay_epochs:
            if e >= self.train.epochs:
                raise ValueError(decay_error(self.optim.decay_epochs, self.train.epochs))
        return self

    @property
    def adv_fraction(self) -> float:
        """r at the start of training: explicit, else the method's default (0.2 for ABSA,
        0 otherwise)."""
        if self.adversarial.fraction is not None:
            return self.adversarial.fraction
        return spec_of(self.schedule.method).default_adv_fraction


# --- YAML -----------------------------------------------------------------------------------


def _plain_numbers(value: Any) -> bool:
    """Whether every number in a YAML value (nested lists and mappings too) is a finite
    float or an int that fits a C long (what torch and the model factories can take)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    if isinstance(value, dict):
        return all(_plain_numbers(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_plain_numbers(v) for v in value)
    return True


_SURROGATE = re.compile("[\ud800-\udfff]")


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads 1e-3 as a float (YAML 1.1 needs a dot, YAML 1.2 does not),
    refuses a key repeated in one mapping and reports a bad scalar (``!!int x``, a date
    2024-13-01, a string escaping a lone surrogate) as a YAML error at its line."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}  # key -> line of its first occurrence (0-based)
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` keys may be overridden
                continue
            key = self.construct_object(key_node)
            try:
                repeated = key in first
            except TypeError:  # an unhashable key: SafeLoader's own error names it
                continue
            if repeated:
                raise ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first on line {first[key] + 1})",
                    key_node.start_mark,
                )
            first[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            data = super().construct_object(node, deep=deep)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as err:
            what = f"{str(node.value)[:40]!r} " if isinstance(node, yaml.ScalarNode) else ""
            why = f" ({_first_line(err)})" if type(err) is ValueError else ""
            kind = node.tag.rsplit(":", 1)[-1]
            raise ConstructorError(
                None, None, f"{what}is not a valid {kind}{why}", node.start_mark
            ) from None
        if isinstance(data, str) and _SURROGATE.search(data):  # "\ud800": no file takes it
            raise ConstructorError(
                None,
                None,
                f"{data[:40]!r} is not valid Unicode text (a lone surrogate)",
                node.start_mark,
            )
        return data


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


MAX_VALUES = 100_000  # values in one YAML document, aliases expanded (no config nears it)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def parse_yaml(text: str, source: str = "<string>") -> Any:
    """The YAML value of ``text``; a ConfigError naming ``source`` (and the line) if it is
    malformed, repeats a key, nests too deeply or expands (aliases) past MAX_VALUES values."""
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or _first_line(err)
        raise ConfigError(f"{source}:{where}: malformed YAML: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{source}: malformed YAML: nested too deeply") from None
    if _count_values(data, MAX_VALUES) > MAX_VALUES:
        raise ConfigError(
            f"{source}: more than {MAX_VALUES} values once aliases are expanded "
            "(a recursive or exponential alias?)"
        )
    return data


def _count_values(data: Any, limit: int) -> int:
    """Values in a YAML tree, counting shared (aliased) parts each time; stops past
    ``limit``, so a cyclic tree terminates too."""
    count, stack = 0, [data]
    while stack and count <= limit:
        node = stack.pop()
        count += 1
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list | set):
            stack.extend(node)
    return count


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config (or sweep) file's top-level mapping; one-line ConfigError naming the file
    when it cannot be read, is not UTF-8 text, is malformed YAML or not a mapping."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: cannot read config: it is a directory, not a YAML file")
    if path.exists() and not path.is_file():
        raise ConfigError(f"{path}: cannot read config: not a regular file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: cannot read config: not UTF-8 text "
            f"(byte 0x{err.object[err.start]:02x} at offset {err.start})"
        ) from None
    except OSError as err:
        raise ConfigError(
            f"{path}: cannot read config: {err.strerror or _first_line(err)}"
        ) from None
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


_UNION_TAG = re.compile(r"constrained-\w+|int|float|str|bool|literal\[.*\]|function-\w+")


def _describe(err: Any, root: type[BaseModel]) -> str:
    # pydantic names the union member that failed ("constrained-int"): not a config key
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and _UNION_TAG.fullmatch(p)))
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
    shown = "" if isinstance(got, dict) or kind == "missing" else f" (got {_clip(repr(got))})"
    return f"{dotted}: {msg}{shown}" if dotted else f"{msg}{shown}"


def _clip(text: str, width: int = 80) -> str:
    """``text`` cut to ``width`` characters (a 400-digit number stays readable)."""
    return text if len(text) <= width else f"{text[: width - 3]}..."


def _check_model_name(name: str, kwargs: dict[str, Any], source: str) -> None:
    """``model.name`` must be in the model registry and take ``model.kwargs``."""
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


def decay_error(decays: Any, epochs: int, ref_epochs: int | None = None) -> str:
    """The error for decay epochs at or past ``epochs``, with the exact override to pass: the
    decays scaled from a ``ref_epochs``-epoch run (floored, e.g. [20, 26] of 30 -> [2, 3] of
    4), else the ones that fit; or none."""
    first = next(e for e in decays if e >= epochs)
    if ref_epochs and epochs > 1:
        fit = sorted({min(epochs - 1, e * epochs // ref_epochs) for e in decays})
        why = f" (scaled from {ref_epochs} epochs)"
    else:
        fit, why = [e for e in decays if e < epochs], ""
    alt = f"'optim.decay_epochs=[{','.join(map(str, fit))}]'{why} or " if fit else ""
    return (
        f"optim.decay_epochs: epoch {first} is not below train.epochs {epochs}; "
        f"pass {alt}'optim.decay_epochs=[]' (no decay)"
    )


def load(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load defaults < YAML ``path`` < dotted ``overrides`` into a validated, frozen Config."""
    tree = read_config_tree(path) if path is not None else {}
    source = str(path) if path is not None else "config"
    if overrides:
        file_cfg = validate(tree, source)  # blame the file for its own errors
        tree = apply_overrides(tree, overrides)
        source = f"{source} + overrides" if path is not None else "overrides"
        _shortened(file_cfg, tree, source)
    return validate(tree, source)


def _shortened(file_cfg: Config, tree: dict[str, Any], source: str) -> None:
    """A run shortened by a ``train.epochs`` override past its file's decay epochs: the
    error suggests those decays scaled to the new length."""
    train, optim = tree.get("train"), tree.get("optim")
    epochs = train.get("epochs") if isinstance(train, dict) else None
    decays = optim.get("decay_epochs") if isinstance(optim, dict) else None
    if not isinstance(epochs, int) or epochs == file_cfg.train.epochs or epochs < 1:
        return
    if decays is None or list(decays) == list(file_cfg.optim.decay_epochs):
        old = file_cfg.optim.decay_epochs
        if any(e >= epochs for e in old):
            raise ConfigError(f"{source}: {decay_error(old, epochs, file_cfg.train.epochs)}")


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain, YAML/JSON-safe dict of a config (paths as strings, tuples as lists)."""
    return cfg.model_dump(mode="json")


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def from_dict(tree: dict[str, Any], source: str = "checkpoint") -> Config:
    return validate(tree, source)
