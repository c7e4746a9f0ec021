import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from absa.run import config as C


def write(tmp_path, text, name="x.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_are_valid():
    cfg = C.load()
    assert cfg.data.name == "digits" and cfg.schedule.method == "bl"


def test_scientific_notation_is_float(tmp_path):
    cfg = C.load(write(tmp_path, "optim:\n  lr: 1e-3\n  weight_decay: 5e-4\n"))
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.optim.weight_decay == pytest.approx(5e-4)


def test_unknown_key_names_file_field_and_suggestion(tmp_path):
    p = write(tmp_path, "optim:\n  lerning_rate: 0.1\n")
    with pytest.raises(C.ConfigError) as e:
        C.load(p)
    msg = str(e.value)
    assert "\n" not in msg
    assert str(p) in msg and "optim.lerning_rate" in msg and "unknown key" in msg


def test_typo_suggests_closest_key(tmp_path):
    with pytest.raises(
        C.ConfigError, match=r"batch\.max_micro_bach.*did you mean batch\.max_micro_batch"
    ):
        C.load(write(tmp_path, "batch:\n  max_micro_bach: 64\n"))
    with pytest.raises(C.ConfigError, match="did you mean optim"):
        C.load(write(tmp_path, "optm:\n  lr: 0.1\n"))


def test_wrong_type_names_field(tmp_path):
    with pytest.raises(C.ConfigError, match=r"x\.yaml: batch\.size: .*integer.*'big'"):
        C.load(write(tmp_path, "batch:\n  size: big\n"))


@pytest.mark.parametrize(
    "text, field",
    [
        ("optim:\n  lr: -0.1\n", "optim.lr"),
        ("optim:\n  momentum: 1.5\n", "optim.momentum"),
        ("batch:\n  size: 0\n", "batch.size"),
        ("optim:\n  decay_epochs: [20, 10]\n", "optim.decay_epochs"),
        ("schedule:\n  method: abs\n", "schedule.max_batch"),
        ("schedule:\n  method: abs\n  max_batch: 64\nbatch:\n  size: 128\n", "schedule.max_batch"),
        ("train:\n  epochs: 10\noptim:\n  decay_epochs: [12]\n", "optim.decay_epochs"),
        ("data:\n  name: imagenet\n", "data.name"),
        ("adversarial:\n  eps: 2\n", "adversarial.eps"),
    ],
)
def test_impossible_values(tmp_path, text, field):
    with pytest.raises(C.ConfigError) as e:
        C.load(write(tmp_path, text))
    assert field in str(e.value) and "\n" not in str(e.value)


def test_malformed_yaml_one_line(tmp_path):
    p = write(tmp_path, "optim: [lr: 0.1\n")
    with pytest.raises(C.ConfigError) as e:
        C.load(p)
    assert str(p) in str(e.value) and "malformed YAML" in str(e.value) and "\n" not in str(e.value)


def test_top_level_must_be_mapping(tmp_path):
    with pytest.raises(C.ConfigError, match="mapping"):
        C.load(write(tmp_path, "- 1\n- 2\n"))


def test_missing_file(tmp_path):
    with pytest.raises(C.ConfigError, match="cannot read"):
        C.load(tmp_path / "nope.yaml")


def test_overrides_apply_after_yaml(tmp_path):
    p = write(tmp_path, "optim:\n  lr: 0.1\nbatch:\n  size: 128\n")
    cfg = C.load(
        p, ["optim.lr=0.2", "batch.size=512", "optim.decay_epochs=[3, 5]", "data.name=synthetic"]
    )
    assert cfg.optim.lr == 0.2 and cfg.batch.size == 512
    assert cfg.optim.decay_epochs == (3, 5) and cfg.data.name == "synthetic"


def test_override_errors(tmp_path):
    with pytest.raises(C.ConfigError, match=r"optim\.lrr.*did you mean optim\.lr"):
        C.load(None, ["optim.lrr=0.2"])
    with pytest.raises(C.ConfigError, match="expected dotted key=value"):
        C.load(None, ["optim.lr"])
    with pytest.raises(C.ConfigError, match=r"optim\.lr"):
        C.load(None, ["optim.lr=abc"])


def test_file_errors_blamed_on_file_not_overrides(tmp_path):
    p = write(tmp_path, "optim:\n  lr: -1\n")
    with pytest.raises(C.ConfigError, match=rf"^{p}: optim\.lr"):
        C.load(p, ["optim.lr=0.1"])


def test_round_trip_through_dict():
    cfg = C.load(None, ["schedule.method=abs", "schedule.max_batch=1024"])
    again = C.from_dict(C.to_dict(cfg))
    assert again == cfg
    assert C.parse_yaml(C.dump_yaml(cfg)) == C.to_dict(cfg)


def test_config_is_frozen():
    cfg = C.load()
    with pytest.raises(ValidationError):
        cfg.optim.lr = 3.0  # type: ignore[misc]


def test_adv_fraction_default_per_method():
    assert C.load(None, ["schedule.method=absa", "schedule.max_batch=512"]).adv_fraction == 0.2
    assert C.load(None, ["schedule.method=abs", "schedule.max_batch=512"]).adv_fraction == 0.0
    assert C.load(None, ["adversarial.fraction=0.3"]).adv_fraction == 0.3


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:3", "mps"])
def test_device_forms_accepted(device):
    assert C.load(None, [f"train.device={device}"]).train.device == device


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "CPU", "cuda0", "tpu", "mps:0 "])
def test_device_typo_names_field_and_valid_forms(tmp_path, device):
    p = write(tmp_path, f"train:\n  device: '{device}'\n")
    with pytest.raises(C.ConfigError) as e:
        C.load(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: train.device: ") and "auto, cpu, cuda, cuda:N or mps" in msg
    assert repr(device) in msg and "\n" not in msg


@pytest.mark.parametrize(
    "text, field, kind",
    [
        ("batch:\n  size: true\n", "batch.size", "integer"),
        ("batch:\n  size: '64'\n", "batch.size", "integer"),
        ("batch:\n  size: 64.0\n", "batch.size", "integer"),
        ("optim:\n  lr: '0.1'\n", "optim.lr", "number"),
        ("optim:\n  lr: true\n", "optim.lr", "number"),
        ("optim:\n  nesterov: 1\n", "optim.nesterov", "boolean"),
        ("train:\n  deterministic: 'false'\n", "train.deterministic", "boolean"),
        ("train:\n  threads: false\n", "train.threads", "integer"),
        ("optim:\n  decay_epochs: [true]\n", "optim.decay_epochs.0", "integer"),
        ("adversarial:\n  eval_eps: ['0.01']\n", "adversarial.eval_eps.0", "number"),
    ],
)
def test_no_lax_coercion(tmp_path, text, field, kind):
    p = write(tmp_path, text)
    with pytest.raises(C.ConfigError, match=rf"^{p}: {re.escape(field)}: .*valid {kind}"):
        C.load(p)


def test_no_lax_coercion_in_overrides():
    for item in ["batch.size=true", "batch.size='64'", "optim.lr='0.1'", "optim.nesterov=1"]:
        with pytest.raises(C.ConfigError, match=rf"^overrides: {item.split('=')[0]}: "):
            C.load(None, [item])


def test_accepted_types_stay_usable(tmp_path):
    p = write(tmp_path, "optim:\n  lr: 1\n  weight_decay: 0\ndata:\n  root: some/where\n")
    cfg = C.load(p)
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert isinstance(cfg.optim.weight_decay, float)
    assert cfg.data.root == Path("some/where")
    cfg = C.load(
        p,
        [
            "optim.lr=0.2",
            "batch.size=512",
            "train.deterministic=false",
            "optim.decay_epochs=[]",
            "train.out_dir=/tmp/r",
            "adversarial.eval_eps=[0, 0.5]",
            "optim.weight_decay=1e-4",
        ],
    )
    assert cfg.optim.lr == 0.2 and cfg.batch.size == 512 and cfg.train.deterministic is False
    assert cfg.optim.decay_epochs == () and cfg.train.out_dir == Path("/tmp/r")
    assert cfg.adversarial.eval_eps == (0.0, 0.5) and cfg.optim.weight_decay == 1e-4


def test_unknown_model_suggests_closest(tmp_path):
    p = write(tmp_path, "model:\n  name: resnet19\n")
    with pytest.raises(C.ConfigError) as e:
        C.load(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: model.name: unknown model 'resnet19'; did you mean resnet18?")
    assert "(valid: mlp, small_cnn," in msg and "\n" not in msg
    with pytest.raises(C.ConfigError, match=r"^overrides: model\.name: unknown model 'zzz' \("):
        C.load(None, ["model.name=zzz"])


def test_every_registered_model_is_accepted():
    from absa.run.models import MODELS

    for name in MODELS:
        assert C.load(None, [f"model.name={name}"]).model.name == name


def test_config_base_inheritance_merges_sections(tmp_path):
    (tmp_path / "root.yaml").write_text(
        "data: {name: synthetic, train_size: 64}\noptim: {lr: 0.3, decay_epochs: [2, 4]}\n"
        "train: {epochs: 6}\n"
    )
    (tmp_path / "mid.yaml").write_text("base: root.yaml\noptim: {lr: 0.2}\n")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "leaf.yaml").write_text(
        "base: ../mid.yaml\noptim: {decay_epochs: [3]}\nschedule: {method: bl}\n"
    )
    cfg = C.load(sub / "leaf.yaml", ["train.seed=4"])
    assert cfg.data.name == "synthetic" and cfg.data.train_size == 64  # from root
    assert cfg.optim.lr == 0.2  # mid over root
    assert cfg.optim.decay_epochs == (3,)  # lists are replaced, not merged
    assert cfg.train.epochs == 6 and cfg.train.seed == 4


@pytest.mark.parametrize(
    "files, expect",
    [
        (
            {"a.yaml": "base: b.yaml\n", "b.yaml": "base: a.yaml\n"},
            "inheritance cycle (a.yaml -> b.yaml -> a.yaml)",
        ),
        ({"a.yaml": "base: a.yaml\n"}, "inheritance cycle (a.yaml -> a.yaml)"),
        ({"a.yaml": "base: gone.yaml\n"}, "base: no such config file"),
        ({"a.yaml": "base: [x]\n"}, "base: expected the path of a config file"),
    ],
)
def test_config_base_errors_are_one_line(tmp_path, files, expect):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(C.ConfigError) as e:
        C.load(tmp_path / "a.yaml")
    assert expect in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).startswith(str(tmp_path))


# --- bounds: finite floats, ints that fit ------------------------------------------------


def _float_fields() -> list[str]:
    """Every float field of the config tree, dotted; a tuple of floats as its first item."""
    out = []
    for section, info in C.Config.model_fields.items():
        for name, field in info.annotation.model_fields.items():
            text = str(field.annotation)
            if "float" in text:
                out.append(f"{section}.{name}" + (".0" if "tuple" in text else ""))
    return out


def test_float_fields_found():
    assert {"optim.lr", "adversarial.eval_eps.0", "hessian.max_overhead"} <= set(_float_fields())
    assert len(_float_fields()) >= 13


@pytest.mark.parametrize("field", _float_fields())
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1e400", "-1e400"])
def test_every_float_field_rejects_non_finite(field, value):
    key = field.removesuffix(".0")
    raw = f"[{value}]" if field.endswith(".0") else value
    with pytest.raises(C.ConfigError) as e:
        C.load(None, [f"{key}={raw}"])
    msg = str(e.value)
    assert msg.startswith(f"overrides: {field}: ") and "\n" not in msg


def test_non_finite_float_in_file_names_file_and_field(tmp_path):
    p = write(tmp_path, "optim:\n  lr: .inf\n")
    with pytest.raises(C.ConfigError, match=rf"^{p}: optim\.lr: .*finite number \(got inf\)$"):
        C.load(p)


def test_lr_bounded():
    with pytest.raises(C.ConfigError, match=r"^overrides: optim\.lr: .*less than or equal to 1"):
        C.load(None, ["optim.lr=1e308"])
    assert C.load(None, ["optim.lr=1e6"]).optim.lr == 1e6


def test_non_finite_model_kwargs_rejected():
    with pytest.raises(C.ConfigError, match=r"^overrides: model\.kwargs: pool: .*\.nan"):
        C.load(None, ["model.kwargs={pool: .nan}"])


@pytest.mark.parametrize(
    "item",
    [
        "train.seed=99999999999999999999999",
        f"train.seed={2**62}",
        f"train.seed={2**32}",
        "train.seed=-1",
        f"data.split_seed={2**40}",
        "train.threads=100000000000",
        "train.threads=1025",
        "train.epochs=1000000",
        "train.eval_batch=100000000",
        "data.image_size=100000",
        "data.num_workers=100000",
        f"data.train_size={10**30}",
        f"data.test_size={10**30}",
        "model.width=1000000",
        f"batch.size={2**24 + 1}",
        f"batch.max_micro_batch={2**40}",
        f"schedule.max_batch={2**63}",
        f"schedule.ref_batch={2**63}",
        "schedule.duration=10000000",
        "schedule.growth_factor=100000000",
        "schedule.warmup_epochs=1e9",
        "schedule.alpha=1e300",
        "distributed.timeout_s=1000000000000",
        "hessian.max_iter=1000000000",
        f"hessian.probe_size={2**62}",
        "hessian.rtol=2",
        "adversarial.pgd_steps=1000000000",
        "adversarial.pgd_step_size=5",
        f"adversarial.eval_limit={2**62}",
        "adversarial.eval_eps=[0.01, 3]",
        "optim.weight_decay=1e9",
    ],
)
def test_huge_values_rejected_naming_field(item):
    key = item.split("=")[0]
    with pytest.raises(C.ConfigError) as e:
        C.load(None, [item])
    msg = str(e.value)
    assert msg.startswith(f"overrides: {key}") and "\n" not in msg and len(msg) < 200


def test_bounds_admit_their_limits():
    cfg = C.load(
        None,
        [
            f"train.seed={C.MAX_SEED}",
            f"data.split_seed={C.MAX_SEED}",
            "train.threads=1024",
            f"train.epochs={C.MAX_EPOCHS}",
            f"batch.size={C.MAX_BATCH}",
            f"batch.max_micro_batch={C.MAX_BATCH}",
            f"data.image_size={C.MAX_SIDE}",
            f"model.width={C.MAX_SIDE}",
        ],
    )
    assert cfg.train.seed == 2**32 - 1 and cfg.batch.size == 2**24


def test_cross_field_errors_name_both_fields():
    with pytest.raises(C.ConfigError, match=r"schedule\.max_batch: .*schedule\.method gg"):
        C.load(None, ["schedule.method=gg"])
    with pytest.raises(C.ConfigError, match=r"schedule\.replay_from: .*schedule\.method replay"):
        C.load(None, ["schedule.method=replay"])


# --- reading YAML: encodings, duplicates, bad scalars ----------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "optim:\n  lr: 0.1  # café\n".encode("latin-1"),
        bytes(range(255, -1, -1)) * 4,  # random-looking binary
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    ],
)
def test_non_utf8_config_names_file(tmp_path, raw):
    p = tmp_path / "x.yaml"
    p.write_bytes(raw)
    with pytest.raises(C.ConfigError) as e:
        C.load(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: cannot read config: not UTF-8 text (byte 0x") and "\n" not in msg


def test_config_path_is_directory(tmp_path):
    with pytest.raises(C.ConfigError, match=rf"^{tmp_path}: cannot read config: .*directory"):
        C.load(tmp_path)


@pytest.mark.parametrize(
    "text, line, key",
    [
        ("optim:\n  lr: 0.1\n  lr: 0.2\n", 3, "lr"),
        ("optim:\n  lr: 0.1\nbatch:\n  size: 64\noptim:\n  momentum: 0.5\n", 5, "optim"),
        ("model:\n  kwargs:\n    pool: 2\n    pool: 4\n", 4, "pool"),
        ("optim: {lr: 0.1, momentum: 0.5, lr: 0.2}\n", 1, "lr"),
        ("data:\n  name: digits\n  'name': synthetic\n", 3, "name"),
    ],
)
def test_duplicate_keys_rejected_with_line(tmp_path, text, line, key):
    p = write(tmp_path, text)
    with pytest.raises(C.ConfigError) as e:
        C.load(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: line {line}, ") and f"duplicate key {key!r}" in msg
    assert "\n" not in msg


def test_duplicate_keys_in_override_value():
    with pytest.raises(C.ConfigError, match=r"^override optim: line 1, .*duplicate key 'lr'"):
        C.load(None, ["optim={lr: 0.1, lr: 0.2}"])


def test_merge_keys_may_be_overridden():
    tree = C.parse_yaml("a: &x {p: 1, q: 2}\nb:\n  <<: *x\n  p: 3\n")
    assert tree == {"a": {"p": 1, "q": 2}, "b": {"p": 3, "q": 2}}


@pytest.mark.parametrize(
    "value, expect",
    [
        ("2020-13-45", "'2020-13-45' is not a valid timestamp (month must be in 1..12)"),
        ("!!int abc", "'abc' is not a valid int"),
        ("!!float abc", "'abc' is not a valid float"),
        ("!!bool maybe", "'maybe' is not a valid bool"),
        ("!!timestamp x", "'x' is not a valid timestamp"),
        ("1" * 5000, "is not a valid int"),
        ("[" * 5000 + "]" * 5000, "nested too deeply"),
        ("&a [*a]", "once aliases are expanded"),
        (
            "[&a [1,1,1,1,1,1,1,1,1,1], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], &c [*b,*b,*b,*b,*b,"
            "*b,*b,*b,*b,*b], &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c], [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d],"
            " [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]]",
            "once aliases are expanded",
        ),
    ],
)
def test_bad_yaml_scalars_are_one_line_errors(value, expect):
    with pytest.raises(C.ConfigError) as e:
        C.load(None, [f"optim.decay_epochs={value}"])
    msg = str(e.value)
    assert msg.startswith("override optim.decay_epochs:") and expect in msg and "\n" not in msg


def test_long_rejected_values_are_clipped():
    with pytest.raises(C.ConfigError) as e:
        C.load(None, [f"optim.lr={10**400}"])
    assert "(got 1000" in str(e.value) and str(e.value).endswith("...)")
    assert len(str(e.value)) < 200


# --- issue 27: lr rules at a growth and the stop rule ----------------------------------------

GROW27 = ["schedule.method=abs", "schedule.max_batch=1024"]


def test_growth_lr_switches_default_off():
    s = C.load().schedule
    assert (s.growth_warmup, s.max_lr, s.stop_rule, s.stop_noise_ratio) == (0.0, None, "none", 1.0)


@pytest.mark.parametrize(
    "overrides, field",
    [
        (["schedule.growth_warmup=-1"], "schedule.growth_warmup"),
        (["schedule.max_lr=0"], "schedule.max_lr"),
        (["schedule.max_lr=0.05"], "schedule.max_lr"),  # below optim.lr 0.1
        (["schedule.stop_rule=always"], "schedule.stop_rule"),
        (["schedule.stop_noise_ratio=0"], "schedule.stop_noise_ratio"),
        (["schedule.stop_rule=noise", "signals.noise=false"], "schedule.stop_rule"),
    ],
)
def test_growth_lr_switches_errors_name_the_field(overrides, field):
    with pytest.raises(C.ConfigError) as e:
        C.load(None, [*GROW27, *overrides])
    msg = str(e.value)
    assert field in msg and "\n" not in msg


def test_max_lr_below_lr_is_fine_where_it_is_not_read():
    cfg = C.load(None, ["schedule.method=gg", "schedule.max_batch=1024", "schedule.max_lr=0.05"])
    assert cfg.schedule.max_lr == 0.05  # gg ignores it (the CLI says so), nothing to check


@pytest.mark.parametrize("method", ["abs", "absa", "gns", "inner_product", "hybrid"])
def test_growing_policies_get_the_resolved_switches(method):
    from absa.core.policies import ignored_keys
    from absa.run.policy import make_policy

    keys = ["growth_warmup=0.5", "max_lr=0.8", "stop_rule=stability", "stop_noise_ratio=2"]
    cfg = C.load(None, [f"schedule.method={method}", "schedule.max_batch=1024"] + [
        f"schedule.{k}" for k in keys
    ])  # fmt: skip
    p = make_policy(cfg)
    assert (p.growth_warmup, p.max_lr, p.stop_rule, p.stop_noise_ratio) == (
        0.5, 0.8, "stability", 2.0,
    )  # fmt: skip
    assert ignored_keys(method, [f"schedule.{k.split('=')[0]}" for k in keys]) == []


@pytest.mark.parametrize("method", ["gg", "seesaw", "bl", "fb"])
def test_fixed_schedules_do_not_read_the_growth_lr_switches(method):
    from absa.core.policies import ignored_keys

    keys = ["schedule.growth_warmup", "schedule.max_lr", "schedule.stop_rule"]
    assert ignored_keys(method, keys) == sorted(keys)


def _suggested(msg: str) -> list[str]:
    return re.findall(r"'(optim\.decay_epochs=\[[0-9,]*\])'", msg)


def test_shortened_config_error_gives_the_exact_override():
    """`-c configs/default.yaml train.epochs=4` (decays [20, 26]) names the decays scaled to 4
    epochs, and each suggested override, passed as given, loads."""
    path = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"
    with pytest.raises(C.ConfigError) as e:
        C.load(path, ["train.epochs=4"])
    msg = str(e.value)
    assert "\n" not in msg and "optim.decay_epochs: epoch 20 is not below train.epochs 4" in msg
    assert _suggested(msg) == ["optim.decay_epochs=[2,3]", "optim.decay_epochs=[]"]
    for fix in _suggested(msg):
        assert C.load(path, ["train.epochs=4", fix]).train.epochs == 4
    with pytest.raises(C.ConfigError) as e:  # one epoch: only "no decay" fits
        C.load(path, ["train.epochs=1"])
    assert _suggested(str(e.value)) == ["optim.decay_epochs=[]"]
    with pytest.raises(C.ConfigError) as e:  # a decay past the end: keep the ones that fit
        C.load(None, ["optim.decay_epochs=[3,40]", "train.epochs=30"])
    assert _suggested(str(e.value)) == ["optim.decay_epochs=[3]", "optim.decay_epochs=[]"]


SHIPPED = sorted(
    p for p in (Path(__file__).parent.parent / "configs").rglob("*.yaml") if "sweeps" not in p.parts
)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_every_shipped_config_loads(path):
    C.load(path, [])


def test_fmnist_gns_config_is_the_measured_large_batch_point():
    """configs/fmnist/gns.yaml (README: the rule to use) resolves to the settings of the
    issue-27 sweep's gns/linear runs whose result the README quotes."""
    root = Path(__file__).parent.parent
    shipped = C.to_dict(C.load(root / "configs/fmnist/gns.yaml", []))
    point = root / "docs/reproduce_fmnist/large_batch/sweep/runs/gns-bmax16384-linear-s0"
    measured = C.to_dict(C.load(point / "config.yaml", []))
    for section in ("data", "model", "optim", "batch", "schedule", "hessian", "signals"):
        assert shipped[section] == measured[section], section
    assert shipped["train"]["epochs"] == measured["train"]["epochs"]
