"""dk export: an ONNX file that onnxruntime serves with PyTorch's logits, timed, and an int8 copy
whose cost in test errors is reported."""

from __future__ import annotations

import json

import pytest
import torch

from darkknowledge.cli import main
from darkknowledge.errors import DKError
from darkknowledge.models import build_model, save_model

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from darkknowledge.export import TOLERANCE, export  # noqa: E402


@pytest.fixture
def model_file(tmp_path):
    torch.manual_seed(0)
    # dropout: identity once exported
    model = build_model("mlp", {"hidden": [64, 32], "hidden_dropout": 0.5}, 784, 10)
    return save_model(model, tmp_path / "m.safetensors")


def test_the_onnx_file_gives_pytorchs_logits_and_the_int8_copy_reports_its_cost(
    model_file, tmp_path
):
    report = export(model_file, tmp_path / "out", quantize="dynamic-int8", repeats=5)
    assert report["onnx"]["max_abs_diff"] <= TOLERANCE
    assert report["onnx"]["test_errors"] == report["pytorch"]["test_errors"]
    assert report["int8"]["bytes"] < 0.5 * report["onnx"]["bytes"]
    assert (
        report["int8"]["test_errors_change"]
        == report["int8"]["test_errors"] - report["onnx"]["test_errors"]
    )
    for runtime in ("pytorch", "onnx", "int8"):
        for batch in ("batch_1", "batch_64"):
            t = report[runtime][batch]
            assert 0 < t["p50_ms"] <= t["p95_ms"]
    assert json.loads((tmp_path / "out" / "export.json").read_text()) == report
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "export.json",
        "model.int8.onnx",
        "model.onnx",
    ]


def test_dk_export_prints_the_table_and_refuses_what_it_cannot_do(model_file, tmp_path, capsys):
    assert main(["export", str(model_file), "--out", str(tmp_path / "o"), "--repeats", "3"]) == 0
    out = capsys.readouterr().out
    assert "| ONNX fp32 |" in out and "max |Δlogit|" in out
    assert main(["export", str(model_file), "--quantize", "int4"]) == 2
    assert "--quantize int4 is unknown" in capsys.readouterr().err
    assert main(["export", str(model_file), "--format", "tflite"]) == 2
    with pytest.raises(
        DKError, match="predicts 10 classes from 100 inputs; mnist has 10 classes, 784 inputs"
    ):
        export(
            save_model(
                build_model("mlp", {"hidden": [8]}, 100, 10), tmp_path / "small.safetensors"
            ),
            tmp_path / "x",
            dataset="mnist",
        )
    assert not (tmp_path / "x").exists()


def test_a_cnn_exports_with_pytorchs_logits(tmp_path):
    torch.manual_seed(0)
    model = build_model("cnn", {"channels": [4, 8], "hidden": [32], "hidden_dropout": 0.5}, 784, 10)
    report = export(save_model(model, tmp_path / "cnn.safetensors"), tmp_path / "out", repeats=3)
    assert report["onnx"]["max_abs_diff"] <= TOLERANCE
    assert report["onnx"]["test_errors"] == report["pytorch"]["test_errors"]
