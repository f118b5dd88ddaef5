"""What every config key, method, model and dataset is, read from the code itself.

``dk ls`` prints the registries with each entry's parameters and defaults; ``dk ls --config``
prints the run-config reference (every key, its type, default and meaning), which is also
``docs/config-reference.md`` (a test keeps the two equal). The meanings come from the code: a
config field's comment (on its line, or the lines just above it), a method's or model's
``Attributes:`` docstring section, a dataset loader's docstring.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import json
import re
import tokenize
import typing
from pathlib import Path
from typing import Any

from darkknowledge import config as config_module


def _comments(source: str) -> dict[int, str]:
    """Line number → the text of the comment on that line."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


def _field_comments(cls: type) -> dict[str, str]:
    """Each dataclass field's comment: the one on its line, else the comment lines right above."""
    source = Path(inspect.getsourcefile(cls) or "").read_text()
    comments, lines = _comments(source), source.splitlines()
    tree = ast.parse(source)
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    out = {}
    for stmt in node.body:
        if not isinstance(stmt, ast.AnnAssign) or not isinstance(stmt.target, ast.Name):
            continue
        text = comments.get(stmt.lineno, "")
        if not text:
            above, line = [], stmt.lineno - 1
            while line >= 1 and lines[line - 1].strip().startswith("#"):
                above.insert(0, comments.get(line, ""))
                line -= 1
            text = " ".join(above)
        out[stmt.target.id] = text
    return out


def _attributes(cls: type) -> dict[str, str]:
    """The ``Attributes:`` section of a class docstring, as name → description."""
    doc = inspect.getdoc(cls) or ""
    m = re.search(r"^Attributes:\n((?:[ \t]+.*\n?|\n)*)", doc, re.MULTILINE)
    if not m:
        return {}
    out: dict[str, str] = {}
    name = None
    for line in m.group(1).splitlines():
        entry = re.match(r"^\s{2,4}(\w+):\s*(.*)$", line)
        if entry:
            name = entry.group(1)
            out[name] = entry.group(2).strip()
        elif name and line.strip():
            out[name] += " " + line.strip()
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _show(value: Any) -> str:
    return "null" if value is None else json.dumps(value) if not isinstance(value, str) else value


def _type(tp: Any) -> str:
    text = str(tp).replace("typing.", "")
    return re.sub(r"<class '(\w+)'>", r"\1", text)


def first_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.split("\n\n")[0].replace("\n", " ").strip()


def parameters(cls: type) -> list[tuple[str, str, str]]:
    """(name, default, meaning) of a registered method's or model spec's fields."""
    if not dataclasses.is_dataclass(cls):
        return []
    docs = _attributes(cls)
    return [(f.name, _show(_default(f)), docs.get(f.name, "")) for f in dataclasses.fields(cls)]


def config_sections() -> list[tuple[str, type]]:
    return [
        ("", config_module.RunConfig),
        ("data.", config_module.DataConfig),
        ("optim.", config_module.OptimConfig),
        ("teacher.", config_module.TeacherConfig),
        ("replicas.", config_module.ReplicasConfig),
        ("ensemble.", config_module.EnsembleConfig),
    ]


HASH_WORDS = {"always": "yes", "never": "no", "if_not_default": "when not the default"}


def config_reference() -> str:
    """The run-config reference as Markdown: every key, its type, default and meaning."""
    nested = {"data", "optim", "teacher", "replicas", "ensemble"}
    parts = [
        "# Run-config reference",
        "",
        "Every key of a run config (`dk train -c FILE`, `dk distill`, `key=value` overrides, the "
        "`run:`",
        "section of an experiment cell), with its type, default and meaning. Generated from the "
        "code by",
        "`dk ls --config` (`tests/test_reference.py` keeps this file equal to it). `model.*` and",
        "`method.*` take the fields of the chosen model and method: see `dk ls`. \"In the run's "
        'hash"',
        "says whether a key changes the config hash, which decides which finished runs are reused "
        "and",
        "which checkpoints a run may resume from (declared on each field in `config.py`).",
        "",
    ]
    for prefix, cls in config_sections():
        hints = typing.get_type_hints(cls)
        comments = _field_comments(cls)
        title = f"`{prefix[:-1]}`" if prefix else "top level"
        parts += [
            f"## {title}",
            "",
            first_line(cls),
            "",
            "| key | type | default | in the run's hash | meaning |",
            "|---|---|---|---|---|",
        ]
        for f in dataclasses.fields(cls):
            if not prefix and f.name in nested:
                continue
            if not prefix and f.name in ("model", "method"):
                meaning = (
                    comments.get(f.name)
                    or f"the {f.name}: `{f.name}.name` (see `dk ls`) and its parameters"
                )
                parts.append(
                    f"| `{f.name}` | mapping | `{_show(_default(f))}` | "
                    f"{HASH_WORDS[config_module.hash_policy(f)]} | {meaning} |"
                )
                continue
            meaning, tp = (
                comments.get(f.name, "").replace("|", "\\|"),
                _type(hints[f.name]).replace("|", "\\|"),
            )
            parts.append(
                f"| `{prefix}{f.name}` | {tp} | `{_show(_default(f))}` | "
                f"{HASH_WORDS[config_module.hash_policy(f)]} | {meaning} |"
            )
        parts.append("")
    return "\n".join(parts)


def registry_listing() -> str:
    """``dk ls``: each method, model and dataset, what it is, and its parameters with defaults."""
    from darkknowledge.data import datasets
    from darkknowledge.methods import methods
    from darkknowledge.models import models

    lines = []
    for kind, registry in (("methods", methods), ("models", models), ("datasets", datasets)):
        lines.append(f"{kind}:")
        for name in registry.names():
            item = registry.get(name)
            lines.append(f"  {name}: {first_line(item)}")
            for pname, default, meaning in parameters(item):
                lines.append(f"      {pname} = {default}" + (f"  ({meaning})" if meaning else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    print(config_reference())
