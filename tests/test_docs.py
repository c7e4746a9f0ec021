"""docs/config.md is generated from absa/config.py by scripts/gen_config_doc.py."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location(
        "gen_config_doc", ROOT / "scripts/gen_config_doc.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def text(gen):
    return gen.render()


def test_config_md_is_up_to_date(text):
    doc = ROOT / "docs" / "config.md"
    assert doc.is_file(), "docs/config.md missing: run python scripts/gen_config_doc.py"
    assert doc.read_text(encoding="utf-8") == text, (
        "docs/config.md is stale (absa/config.py changed): run python scripts/gen_config_doc.py"
    )


def _rows(text):
    """{dotted key: (type, default, description)} of the reference's tables."""
    out = {}
    for line in text.splitlines():
        if line.startswith("| `") and "." in line.split("|")[1]:
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            out[cells[0].strip("`")] = tuple(cells[1:])
    return out


def test_every_config_key_is_documented(text):
    from absa.config import Config

    rows = _rows(text)
    want = {f"{s}.{k}" for s, f in Config.model_fields.items() for k in f.annotation.model_fields}
    assert set(rows) == want
    for key in (
        "train.deterministic",
        "data.num_workers",
        "schedule.growth_factor",
        "adversarial.pgd_steps",
        "adversarial.model_mode",
        "distributed.timeout_s",
    ):
        assert key in rows and rows[key][2], key  # with a description


def test_types_defaults_and_comments(text):
    rows = _rows(text)
    assert rows["train.deterministic"][:2] == ("bool", "`true`")
    assert "torch.use_deterministic_algorithms" in rows["train.deterministic"][2]
    assert rows["data.num_workers"][:2] == ("int (≥ 0, ≤ 256)", "`0`")
    assert rows["schedule.growth_factor"][0].startswith("int (≥ 2")
    assert rows["adversarial.model_mode"][0] == "one of `eval`, `train`"
    assert rows["adversarial.eval_eps"][1] == "`[0.005, 0.01, 0.02]`"
    assert rows["adversarial.fraction"][0] == "float (≥ 0, ≤ 1) or null"
    # a comment block above a field and a trailing one on a multi-line field
    assert rows["data.split_seed"][2].startswith("digits/synthetic split and subset seed")
    assert "grow anyway after this many epochs" in rows["schedule.duration"][2]
    assert "type: ignore" not in text and "``" not in text
    # the method list comes from the schedules registry, not a copy
    from absa.schedules import METHODS

    for name in METHODS:
        assert (
            f"`{name}`" in rows["schedule.method"][0] and f"{name}:" in rows["schedule.method"][2]
        )


def test_comment_extraction_on_a_small_module(gen, tmp_path):
    import sys

    src = tmp_path / "cfgmod.py"
    src.write_text(
        "from pydantic import BaseModel, Field\n"
        "class S(BaseModel):\n"
        "    a: int = 1  # trailing\n"
        "    # above, line 1\n"
        "    # above, line 2\n"
        "    b: int = Field(\n"
        "        2, ge=0\n"
        "    )  # closing\n"
        "\n"
        "    c: str = 'x'  # type: ignore[misc]\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        import cfgmod

        got = gen.field_comments(cfgmod)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("cfgmod", None)
    assert got == {
        ("S", "a"): "trailing",
        ("S", "b"): "above, line 1 above, line 2; closing",
        ("S", "c"): "",
    }


def test_check_flag(gen, tmp_path, text):
    out = tmp_path / "config.md"
    assert gen.main(["--check", "--out", str(out)]) == 1
    assert gen.main(["--out", str(out)]) == 0 and out.read_text(encoding="utf-8") == text
    assert gen.main(["--check", "--out", str(out)]) == 0
