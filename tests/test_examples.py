"""The examples in docs/ run as written, and the darkknowledge one is the shorter."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"
SRC = str(Path(__file__).resolve().parents[1] / "src")


def code_lines(path: Path) -> int:
    """Lines of code: neither blank, nor comment, nor docstring."""
    source = path.read_text()
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(getattr(body[0], "value", None), ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            docstrings.update(range(body[0].lineno, body[0].end_lineno + 1))
    return sum(
        1
        for i, line in enumerate(source.splitlines(), 1)
        if line.strip() and not line.strip().startswith("#") and i not in docstrings
    )


def _run(name: str) -> dict[str, int]:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=True,
    ).stdout
    return {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"^(.+): (\d+) test errors / 2000$", out, re.MULTILINE)
    }


@pytest.mark.parametrize("name", ["own_model.py", "own_model_plain.py"])
def test_the_example_runs_and_shows_the_papers_effect(name):
    errors = _run(name)
    assert set(errors) == {"teacher", "distilled student", "hard-label student"}
    # soft targets regularize
    assert errors["distilled student"] < 0.85 * errors["hard-label student"]
    assert errors["teacher"] < errors["distilled student"]


def test_the_darkknowledge_example_is_clearly_shorter_than_plain_pytorch():
    ours, plain = code_lines(EXAMPLES / "own_model.py"), code_lines(EXAMPLES / "own_model_plain.py")
    assert ours <= 0.6 * plain, (ours, plain)
