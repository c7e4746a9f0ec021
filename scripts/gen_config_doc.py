"""Generate docs/config.md, the config reference, from the typed config (absa.run.config).

Walks ``Config.model_fields`` (one section per field) and each section's ``model_fields``:
key, type (with its bounds), default, and the description. A field's description is its
pydantic ``Field(description=...)`` if set, else the comments written with it in
absa/run/config.py: the comment lines right above the field and the comments at the end of
its lines (``# type: ignore`` and ``# noqa`` markers dropped).

    python scripts/gen_config_doc.py            # rewrite docs/config.md
    python scripts/gen_config_doc.py --check    # exit 1 if docs/config.md is stale

tests/test_docs.py regenerates the text in memory and compares it with the file.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import io
import re
import sys
import tokenize
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "config.md"
sys.path.insert(0, str(ROOT))

from absa import config as C  # noqa: E402

_MARKERS = re.compile(r"\s*(type:\s*ignore(\[[^\]]*\])?|noqa(:\s*[\w, ]+)?|fmt:\s*\w+)\s*")
_BOUNDS = (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"))


# --- comments from the source -------------------------------------------------------------


def _comments(source: str) -> tuple[dict[int, str], dict[int, str]]:
    """Per line number: the comment ending a line of code, and the comment alone on a line."""
    trailing: dict[int, str] = {}
    alone: dict[int, str] = {}
    lines = source.splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type != tokenize.COMMENT:
            continue
        line, col = tok.start
        text = _MARKERS.sub(" ", tok.string.lstrip("#")).strip()
        before = lines[line - 1][:col]
        (alone if not before.strip() else trailing)[line] = text
    return trailing, alone


def field_comments(module: types.ModuleType = C) -> dict[tuple[str, str], str]:
    """``(class name, field name) -> description`` from the comments in ``module``'s source."""
    source = inspect.getsource(module)
    trailing, alone = _comments(source)
    out: dict[tuple[str, str], str] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for stmt in node.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            above = []
            line = stmt.lineno - 1
            while line in alone:  # the comment block right above the field
                above.insert(0, alone[line])
                line -= 1
            end = stmt.end_lineno or stmt.lineno
            own = [trailing[n] for n in range(stmt.lineno, end + 1) if trailing.get(n)]
            parts = [p for p in (" ".join(above), "; ".join(own)) if p]
            out[(node.name, stmt.target.id)] = "; ".join(parts)
    return out


# --- types and defaults --------------------------------------------------------------------


def _bounds(metadata: list[Any]) -> str:
    parts = []
    for item in metadata:
        if isinstance(item, FieldInfo):
            item_bounds = _bounds(item.metadata)
            if item_bounds:
                parts.append(item_bounds)
            continue
        for attr, sign in _BOUNDS:
            value = getattr(item, attr, None)
            if value is not None and type(item).__name__.lower() == attr:
                parts.append(f"{sign} {_num(value)}")
    return ", ".join(parts)


def _num(x: Any) -> str:
    if isinstance(x, int) and not isinstance(x, bool) and abs(x) >= 2**16:
        exp = x.bit_length() - 1
        if x == 2**exp:
            return f"2^{exp}"
        if x + 1 == 2 ** (exp + 1):
            return f"2^{exp + 1} - 1"
    if isinstance(x, int) and not isinstance(x, bool) and re.fullmatch(r"10{5,}", str(x)):
        return f"10^{len(str(x)) - 1}"
    if isinstance(x, float) and x.is_integer() and abs(x) >= 1e5:
        return f"{x:.0e}".replace("e+0", "e").replace("e+", "e")
    return f"{x:g}" if isinstance(x, float) else str(x)


def type_text(annotation: Any, metadata: list[Any] | None = None) -> str:
    """A readable type: ``int (≥ 1, ≤ 1024) or null``, ``one of `a`, `b```, ``list of float``."""
    bounds = _bounds(metadata or [])
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        inner_meta = [*(metadata or []), *args[1:]]
        return type_text(args[0], inner_meta)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        literals = [
            v for a in members if typing.get_origin(a) is typing.Literal for v in typing.get_args(a)
        ]
        others = [a for a in members if typing.get_origin(a) is not typing.Literal]
        texts = [type_text(a, metadata) for a in others]
        if literals:
            texts.append(" or ".join(f"`{_yaml(v)}`" for v in literals))
        if len(members) < len(args):
            texts.append("null")
        return " or ".join(texts)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{_yaml(v)}`" for v in args)
    if origin in (tuple, list):
        items = [a for a in args if a is not Ellipsis]
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {type_text(items[0])}"
        if items and all(a == items[0] for a in items):
            return f"list of {len(items)} {type_text(items[0])}"
        return "list (" + ", ".join(type_text(a) for a in items) + ")"
    if origin is dict:
        return "mapping"
    name = {Path: "path", str: "string", bool: "bool", int: "int", float: "float"}.get(
        annotation, getattr(annotation, "__name__", str(annotation))
    )
    return f"{name} ({bounds})" if bounds else name


def _yaml(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def default_text(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    return f"`{_yaml(value)}`"


# --- the document --------------------------------------------------------------------------


def _md(text: str) -> str:
    """RST-style ``code`` of the docstrings as Markdown `code`."""
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def _cell(text: str) -> str:
    return _md(text).replace("|", "\\|").replace("\n", " ")


def derived(section: str, key: str) -> str:
    """What the registries tell about a key (appended to its comment): the methods of
    absa.core.policies with their one-line summaries, the model names of absa.run.models,
    the data set names of absa.run.data."""
    if (section, key) == ("schedule", "method"):
        from absa.core.policies import METHODS

        return "; ".join(f"{name}: {spec.summary}" for name, spec in METHODS.items())
    if (section, key) == ("model", "name"):
        from absa.run.models import MODELS

        return "one of absa.run.models.MODELS: " + ", ".join(MODELS)
    if (section, key) == ("model", "width"):
        from absa.run.models import FIXED_WIDTH

        return "ignored by " + ", ".join(FIXED_WIDTH) + " (fixed widths)"
    if (section, key) == ("data", "name"):
        from absa.run.data import DATASETS

        return "one of absa.run.data.DATASETS: " + ", ".join(DATASETS)
    return ""


def _docstring(cls: type) -> str:
    doc = cls.__doc__ or ""
    if not doc or doc == C.Section.__doc__ or doc == BaseModel.__doc__:
        return ""
    return " ".join(inspect.cleandoc(doc).split())


def render(root: type[BaseModel] = C.Config) -> str:
    """The whole of docs/config.md."""
    comments = field_comments(inspect.getmodule(root) or C)
    intro = inspect.cleandoc(C.__doc__ or "").split("\n\n")
    out = [
        "# Config reference",
        "",
        "<!-- generated by scripts/gen_config_doc.py from absa/run/config.py; do not edit: run",
        "     `python scripts/gen_config_doc.py` (tests/test_docs.py fails when it is stale) -->",
        "",
        _md(" ".join(intro[-1].split())) if len(intro) > 1 else "",
        "",
        "Every key below can be set in a YAML file (`absa train -c FILE`) or on the command "
        "line as a dotted override (`absa train -c FILE optim.lr=0.2 train.epochs=5`); "
        "`absa train --print-config` prints the fully resolved config. A file may extend "
        f"another one with a top-level `{C.BASE_KEY}: other.yaml`.",
        "",
        "Sections: " + ", ".join(f"[`{name}`](#{name})" for name in root.model_fields) + ".",
    ]
    for section, sfield in root.model_fields.items():
        model = sfield.annotation
        out += ["", f"## {section}", ""]
        doc = _docstring(model)
        if doc:
            out += [_md(doc), ""]
        out += ["| key | type | default | description |", "|---|---|---|---|"]
        for key, field in model.model_fields.items():
            desc = field.description or comments.get((model.__name__, key), "")
            extra = derived(section, key)
            desc = f"{desc}; {extra}" if desc and extra else desc or extra
            row = [
                f"`{section}.{key}`",
                type_text(field.annotation, field.metadata),
                default_text(field),
                desc,
            ]
            out.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    ap.add_argument("--out", type=Path, default=DOC)
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.is_file() else ""
        if current != text:
            print(f"{args.out} is stale: run python scripts/gen_config_doc.py", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
