"""dk report: a Markdown and a self-contained HTML report, with the plots a reader needs."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from darkknowledge.cli import main

pytest.importorskip("matplotlib")

TINY = [
    "model.hidden=[32]",
    "data.train_size=300",
    "data.test_size=100",
    "optim.epochs=3",
    "optim.batch_size=50",
    "progress=false",
]
EXP = Path(__file__).resolve().parents[1] / "experiments" / "hinton2015"


def _images(html: str) -> list[bytes]:
    import base64

    return [
        base64.b64decode(m)
        for m in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)
    ]


def test_a_run_report_has_curves_calibration_and_confusions_embedded(tmp_path, capsys):
    teacher, student = tmp_path / "t", tmp_path / "s"
    assert main(["train", "--run-dir", str(teacher), *TINY]) == 0
    assert (
        main(
            [
                "distill",
                "--run-dir",
                str(student),
                "--teacher",
                str(teacher),
                *TINY,
                "method.name=soft_targets",
                "data.validation_size=50",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["report", str(student)]) == 0
    out = student / "report"
    assert sorted(p.name for p in out.iterdir()) == [
        "confusion.png",
        "curves.png",
        "reliability.png",
        "report.html",
        "report.md",
    ]
    md = (out / "report.md").read_text()
    assert "errors" in md and "![Calibration](reliability.png)" in md
    pics = _images((out / "report.html").read_text())
    assert len(pics) == 3 and all(p.startswith(b"\x89PNG") for p in pics)  # self-contained


def test_an_experiment_report_carries_its_tables_and_pictures(tmp_path):
    exp = tmp_path / "hinton2015"
    shutil.copytree(EXP, exp, ignore=shutil.ignore_patterns("shipped"))
    assert main(["report", str(exp), "--runs-root", str(tmp_path / "no_runs")]) == 0
    md = (exp / "report" / "report.md").read_text()
    assert "### Paper vs ours" in md
    html = (exp / "report" / "report.html").read_text()
    assert "<table>" in html and len(_images(html)) == len(
        list(EXP.glob("temperature_sweep_*.png"))
    )


def test_report_refuses_what_it_cannot_report(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "is not a finished run directory" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nothing")]) == 2
