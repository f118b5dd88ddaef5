"""The lineage experiment: its cells resolve at both scales into one student architecture and one
budget, its table is generated from results.csv rows, and a reduced run goes end to end."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from darkknowledge.data import fetch_dataset
from darkknowledge.methods import build_method
from darkknowledge.reproduce import load_cells, reproduce
from darkknowledge.reproduce.report import comparison_table, read_table_spec, write_report
from darkknowledge.reproduce.results import COLUMNS, read_claims
from darkknowledge.reproduce.runner import Context, _order

EXP = Path(__file__).resolve().parents[2] / "experiments" / "lineage"
CELLS = load_cells(EXP)
STUDENTS = [c for c in CELLS if c != "teacher"]  # one architecture, one budget


def test_the_cells_are_hard_labels_soft_targets_and_each_descendant():
    students = {"hard_labels", "label_smoothing", "soft_targets", "hints", "decoupled"}
    assert set(CELLS) == {"teacher", "born_again", "born_again_distilled", *students}
    assert read_claims(EXP / "claims.yaml") == []  # no paper number on Fashion-MNIST
    spec = read_table_spec(EXP / "table.yaml")
    assert {r["cell"] for r in spec["rows"]} == set(CELLS)
    order = _order(CELLS, None, "cpu")
    assert (
        order.index("hard_labels") < order.index("born_again") < order.index("born_again_distilled")
    )


@pytest.mark.parametrize("scale", ["smoke", "cpu"])
def test_one_student_one_budget_at_each_scale(scale, tmp_path):
    ctx = Context(EXP, CELLS, scale, seed=0, overrides=[], device="cpu", runs_root=tmp_path)
    configs = {}
    for cid in _order(CELLS, None, scale):
        cell = CELLS[cid]
        if cell.teacher:
            ctx.done[cell.teacher] = {"run_dir": str(tmp_path / cell.teacher)}
        configs[cid] = cfg = ctx.config(cell)
        method = build_method(
            cfg.method["name"], {k: v for k, v in cfg.method.items() if k != "name"}
        )
        assert method.needs_teacher == bool(cell.teacher)
        assert cfg.data.dataset == "fashion_mnist"
        assert (
            cfg.data.train_size == (10000 if scale == "smoke" else None)
            and cfg.data.test_size is None
        )
    students = [configs[c] for c in STUDENTS]
    assert {str(c.model) for c in students} == {"{'name': 'mlp', 'hidden': [300, 300, 300]}"}
    assert {str(c.optim) for c in students} == {str(configs["hard_labels"].optim)}
    assert configs["born_again"].generations == 3
    assert configs["born_again"].teacher.checkpoints == [str(tmp_path / "hard_labels")]
    assert configs["label_smoothing"].label_smoothing == 0.1
    assert configs["hints"].teacher.outputs == "live"


def _rows(values: dict[tuple[str, str], list[int]], scale: str = "cpu") -> list[dict[str, str]]:
    rows = []
    for (cell, variant), errors in values.items():
        for seed, e in enumerate(errors):
            rows.append(
                {
                    "cell": cell,
                    "variant": variant,
                    "scale": scale,
                    "seed": str(seed),
                    "metric": "test_errors",
                    "value": str(e),
                    "device": "cpu",
                    "wall_seconds": "1",
                    "git_sha": "x",
                    "date": "d",
                    "config_hash": "h",
                }
            )
    return rows


def test_the_table_gives_mean_std_and_the_difference_to_the_baseline():
    spec = read_table_spec(EXP / "table.yaml")
    rows = _rows(
        {
            ("hard_labels", ""): [1100, 1120, 1090],
            ("soft_targets", ""): [1000, 1010, 1020],
            ("born_again", "ensemble"): [1050],
        }
    )
    table = comparison_table(spec, rows, "cpu").splitlines()
    line = {r.split(" | ")[0].strip("| "): r for r in table[2:]}
    assert "| 11.03 ± 0.15 (3 seeds) | — |" in line["hard labels"]
    # 10.10 − 11.03 = −0.93 points; s.e. √(0.10²/3 + 0.153²/3) = 0.105
    assert "| 10.10 ± 0.10 (3 seeds) | -0.93 ± 0.11 |" in line["soft targets"]
    assert "| 10.50 (1 seed) | -0.53 |" in line["born-again ensemble"]
    assert "| — | — |" in line["hints (FitNets)"]
    assert comparison_table(spec, rows, "smoke") == ""


def test_the_readme_table_comes_from_results_csv(tmp_path):
    exp = tmp_path / "lineage"
    shutil.copytree(EXP, exp)
    with open(exp / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(_rows({("hard_labels", ""): [1500, 1490]}, "smoke"))
    write_report(exp)
    text = (exp / "README.md").read_text()
    generated = text.split("<!-- results:start")[1].split("<!-- results:end -->")[0]
    assert "(smoke scale)" in generated and "| 14.95 ± 0.07 (2 seeds) |" in generated
    assert "Paper vs ours" not in generated
    assert (
        text.split("<!-- results:start")[0]
        == (EXP / "README.md").read_text().split("<!-- results:start")[0]
    )


@pytest.fixture(scope="session")
def fashion_dir():
    return fetch_dataset("fashion_mnist")  # the user's cache, before a test isolates it


@pytest.mark.slow
def test_a_reduced_lineage_runs_end_to_end(tmp_path, fashion_dir, isolated_cache):
    (isolated_cache / "fashion_mnist").symlink_to(fashion_dir, target_is_directory=True)
    shutil.copytree(EXP, tmp_path / "exp" / "lineage")
    tiny = [
        "data.train_size=300",
        "data.test_size=200",
        "optim.epochs=2",
        "model.hidden=[16,16,16]",
        "progress=false",
    ]
    reproduce(
        "lineage",
        scale="smoke",
        root=str(tmp_path / "exp"),
        device="cpu",
        overrides=tiny,
        runs_root=str(tmp_path / "runs"),
    )
    with open(tmp_path / "exp" / "lineage" / "results.csv") as f:
        got = {(r["cell"], r["variant"]) for r in csv.DictReader(f) if r["metric"] == "test_errors"}
    assert {(c, "") for c in CELLS} | {
        ("born_again", v) for v in ("gen1", "gen2", "gen3", "ensemble")
    } <= got
