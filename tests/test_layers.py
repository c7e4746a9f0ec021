"""The package layout is the architecture (README "Architecture"): imports point down the
layers only, there is no import circle, the CLI sees only absa.api, and functions and modules
stay short enough to read at once. Every ``import`` in absa/ counts, also inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "absa"
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 800

# module prefix -> layer rank (a module may import its own rank and lower ones)
LAYERS = {
    "absa.util": 0,
    "absa.tv": 0,
    "absa.distributed": 0,
    "absa.core": 1,
    "absa.run": 2,
    "absa.engine": 3,
    "absa.fleet": 4,
    "absa.api": 5,
    "absa.progress": 6,
    "absa.cli": 6,
    "absa.__main__": 7,
}


def _name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in sorted(ROOT.rglob("*.py"))}
TREES = {name: ast.parse(p.read_text(), str(p)) for name, p in MODULES.items()}


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if MODULES[module].name != "__init__.py":
        base = base[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports(module: str) -> set[str]:
    """The absa modules ``module`` imports (``from absa.x import y`` names absa.x.y when that
    is a module, else absa.x)."""
    out: set[str] = set()
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = _resolve(module, node)
            targets = [
                f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod for a in node.names
            ]
        else:
            continue
        out |= {t for t in targets if t in MODULES and t != module}
    return out


def rank(module: str) -> int:
    if module == "absa":
        return 0  # the package: __version__ and lazy re-exports
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def test_every_module_has_a_layer():
    assert [m for m in MODULES if m != "absa" and not any(
        m == p or m.startswith(p + ".") for p in LAYERS)] == []  # fmt: skip


def test_imports_point_down_the_layers():
    upward = [
        f"{m} ({rank(m)}) imports {t} ({rank(t)})"
        for m in MODULES
        for t in sorted(imports(m))
        if t != "absa" and rank(t) > rank(m)
    ]
    assert upward == []


def test_no_import_circle():
    graph = {m: imports(m) - {"absa"} for m in MODULES}
    seen: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(m: str, stack: list[str]) -> list[str] | None:
        seen[m] = 1
        for t in sorted(graph[m]):
            if seen.get(t) == 1:
                return [*stack[stack.index(t) :], t] if t in stack else [m, t]
            if t not in seen and (cycle := visit(t, [*stack, t])):
                return cycle
        seen[m] = 2
        return None

    cycles = [c for m in sorted(graph) if m not in seen and (c := visit(m, [m]))]
    assert cycles == []


def test_the_cli_imports_only_the_api():
    for m in ("absa.cli", "absa.progress"):
        assert imports(m) - {"absa", "absa.api", "absa.progress"} == set(), m


def test_core_is_pure():
    """absa.core imports only absa.core and absa.util: no config objects, no collectives
    (absa.distributed), no run folder."""
    for m in (m for m in MODULES if m.startswith("absa.core")):
        assert {
            t for t in imports(m) if not t.startswith("absa.core") and t != "absa.util"
        } == set(), m


@pytest.mark.parametrize("module", sorted(MODULES))
def test_functions_and_modules_are_short(module):
    path = MODULES[module]
    long = [
        f"{path.name}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
        for n in ast.walk(TREES[module])
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []
    assert len(path.read_text().splitlines()) <= MAX_MODULE_LINES


@pytest.mark.parametrize("old", sorted(__import__("absa").MOVED))
def test_flat_names_of_0_1_import_as_the_moved_modules(old):
    """`import absa.trainer` (and `from absa.trainer import run`) keep working: the alias is
    the module that holds the code now, not a copy."""
    import importlib

    import absa

    alias = importlib.import_module(f"absa.{old}")
    assert alias is importlib.import_module(absa.MOVED[old])
    assert getattr(absa, old) is alias
