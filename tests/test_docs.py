"""docs/config.md is generated from absa/run/config.py by scripts/gen_config_doc.py."""

import importlib.util
import json
import re
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
        "docs/config.md is stale (absa/run/config.py changed): run python scripts/gen_config_doc.py"
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
    from absa.run.config import Config

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
    from absa.core.policies import METHODS

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


def test_readme_sweep_example_expands(tmp_path):
    """The README's small grid example is a valid sweep: 2 seeds x (3 growing + 2 BL)."""
    import re
    import shutil

    from absa.fleet import sweep as S

    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- sweep-example -->\n```yaml\n(.*?)```", text, re.S)
    assert m, "README.md lost its marked sweep example"
    (tmp_path / "sweeps").mkdir()
    shutil.copy(ROOT / "configs" / "digits_bl.yaml", tmp_path / "digits_bl.yaml")
    (tmp_path / "sweeps" / "small.yaml").write_text(m.group(1))
    points = S.expand(S.load_sweep(tmp_path / "sweeps" / "small.yaml"))
    assert len(points) == 10 and [p.config.train.seed for p in points[:5]] == [0] * 5
    assert {p.config.schedule.method for p in points} == {"abs", "absa", "gns", "bl"}
    assert all(p.config.train.epochs == 10 for p in points)


def _bash_blocks(section: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    body = text.split(section, 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", body, re.S)


def test_readme_commands_run_in_order(tmp_path):
    """The set-up's main job, then every line of README "Usage" as written, in order, in a
    fresh folder holding the configs (the first usage line once failed: its run folder
    already existed after the set-up)."""
    import os
    import shutil
    import subprocess
    import sys

    setup = _bash_blocks("## Set up")[0].strip().split(" && ")[-1]
    assert setup.startswith("absa train")
    usage = [ln.split("  #")[0].strip() for ln in _bash_blocks("## Usage")[0].splitlines()]
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for cmd in [setup, *[u for u in usage if u]]:
        res = subprocess.run(
            ["bash", "-o", "pipefail", "-c", cmd],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        # `| head` may end the writer early (SIGPIPE: 141): only that is accepted besides 0
        assert res.returncode == 0 or ("| head" in cmd and res.returncode == 141), (
            f"{cmd}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
        )
    assert (tmp_path / "runs" / "default-absa-b32-s0" / "summary.json").is_file()
    assert json.loads((tmp_path / "out.json").read_text())
