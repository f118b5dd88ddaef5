"""`dk train -c <experiment cell>`: the cell's run section, optionally at one of its scales."""

from __future__ import annotations

from pathlib import Path

from darkknowledge.cli import main
from darkknowledge.config import load_config

CELLS = Path(__file__).resolve().parents[2] / "experiments" / "hinton2015" / "configs"


def test_a_cell_config_gives_its_run_section_and_scale_overrides():
    full = load_config(CELLS / "teacher_1200.yaml")
    assert (
        full.optim.epochs == 3000
        and full.model["hidden"] == [1200, 1200]
        and full.data.train_size is None
    )
    smoke = load_config(CELLS / "teacher_1200.yaml", ["optim.epochs=2"], scale="smoke")
    assert smoke.data.train_size == 20000 and smoke.optim.epochs == 2  # user overrides come last


def test_dk_train_and_distill_take_cell_configs(tmp_path, capsys):
    tiny = [
        "data.train_size=300",
        "data.test_size=100",
        "optim.epochs=1",
        "model.hidden=[16,16]",
        "progress=false",
    ]
    teacher = tmp_path / "teacher"
    assert (
        main(
            [
                "train",
                "-c",
                str(CELLS / "teacher_1200.yaml"),
                "--scale",
                "smoke",
                "--run-dir",
                str(teacher),
                *tiny,
            ]
        )
        == 0
    )
    student = tmp_path / "student"
    assert (
        main(
            [
                "distill",
                "-c",
                str(CELLS / "student_800_soft_T20.yaml"),
                "--teacher",
                str(teacher),
                "--run-dir",
                str(student),
                *tiny,
            ]
        )
        == 0
    )
    assert (student / "model.safetensors").is_file()
    assert "temperature: 20.0" in (student / "config.yaml").read_text()


def test_scale_needs_a_cell_config(tmp_path, capsys):
    plain = tmp_path / "plain.yaml"
    plain.write_text("seed: 1\n")
    assert (
        main(["train", "-c", str(plain), "--scale", "smoke", "--run-dir", str(tmp_path / "r")]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dk: error:") and "--scale smoke" in err[0]
    assert not (tmp_path / "r").exists()
