"""The reference a user reads is the code's own: every key documented, the doc file current."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from darkknowledge.cli import main
from darkknowledge.data import datasets
from darkknowledge.methods import methods
from darkknowledge.models import models
from darkknowledge.reference import config_reference, config_sections, parameters

DOC = Path(__file__).resolve().parents[1] / "docs" / "config-reference.md"


def test_the_config_reference_in_docs_is_the_generated_one():
    assert DOC.read_text() == config_reference() + "\n", (
        "regenerate it: dk ls --config > docs/config-reference.md"
    )


def test_every_config_key_has_a_meaning_and_a_default():
    text = config_reference()
    for prefix, cls in config_sections():
        for f in dataclasses.fields(cls):
            if prefix or f.name not in ("data", "optim", "teacher", "replicas", "ensemble"):
                row = next(
                    line for line in text.splitlines() if line.startswith(f"| `{prefix}{f.name}` |")
                )
                assert row.split("|")[5].strip(), (
                    f"{prefix}{f.name} has no meaning: comment its field in config.py"
                )


def test_every_method_and_model_parameter_is_described():
    for registry in (methods, models):
        for name in registry.names():
            for pname, _, meaning in parameters(registry.get(name)):
                assert meaning, (
                    f"{name}.{pname}: describe it in the class docstring's Attributes section"
                )


def test_dk_ls_lists_each_entry_with_its_parameters_and_defaults(capsys):
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    assert (
        "  soft_targets: Soft-target distillation" in out
        and "      temperature = 20.0  (T, used for student" in out
    )
    assert "      hidden = [800, 800]  (units per hidden layer" in out
    for name in (*methods.names(), *models.names(), *datasets.names()):
        assert f"  {name}: " in out
    assert main(["ls", "--config"]) == 0
    assert "| `optim.lr` | float | `0.1` |" in capsys.readouterr().out
