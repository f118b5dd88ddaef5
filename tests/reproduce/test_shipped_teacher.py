"""The cpu-scale teacher shipped in the repository (the smoke scale's teacher): its file is the one
that was trained (checksum), small enough for the repository, the cpu scale's teacher of these
configs (config hash), and its test errors are what its summary says."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from darkknowledge.config import DataConfig, read_yaml
from darkknowledge.models import load_model
from darkknowledge.reproduce import load_cells
from darkknowledge.reproduce.runner import Context
from darkknowledge.train import predict_logits, prepare_data

EXP = Path(__file__).resolve().parents[2] / "experiments" / "hinton2015"
SHIPPED = EXP / "shipped" / "teacher_1200_cpu"


def test_the_shipped_teacher_is_the_trained_file_and_the_cpu_scales_teacher(tmp_path):
    summary = json.loads((SHIPPED / "summary.json").read_text())
    model_file = SHIPPED / "model.safetensors"
    assert hashlib.sha256(model_file.read_bytes()).hexdigest() == summary["model_sha256"]
    assert model_file.stat().st_size <= 10_000_000
    cells = load_cells(EXP)
    assert cells["teacher_1200"].shipped["path"] == "shipped/teacher_1200_cpu"
    lr = read_yaml(SHIPPED / "config.yaml")["optim"][
        "lr"
    ]  # chosen on the validation split (select:)
    assert lr in cells["teacher_1200"].select["values"]
    cfg = Context(
        EXP, cells, "cpu", seed=0, overrides=[], device="auto", runs_root=tmp_path
    ).config(cells["teacher_1200"], [f"optim.lr={lr}"])
    assert summary["config_hash"] == cfg.hash()


def test_the_shipped_teacher_makes_the_test_errors_its_summary_records():
    summary = json.loads((SHIPPED / "summary.json").read_text())
    test = prepare_data(DataConfig(dataset="mnist")).test  # all 10,000 test images
    errors = int((predict_logits(load_model(SHIPPED), test).argmax(dim=1) != test.labels).sum())
    assert abs(errors - summary["eval"]["test"]["errors"]) <= 2  # another machine's rounding
