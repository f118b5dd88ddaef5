"""Model files: safetensors + JSON metadata, bitwise round trip, clear errors for bad files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save as st_save

from darkknowledge.errors import DKError
from darkknowledge.models import (
    MODEL_FILE,
    build_model,
    load_model,
    model_bytes,
    model_fingerprint,
    save_model,
)


def _model(seed=0, **params):
    torch.manual_seed(seed)
    return build_model("mlp", {"hidden": [8], **params}, 6, 3)


def test_round_trip_is_bitwise(tmp_path):
    model = _model(input_dropout=0.1, max_norm=2.0)
    path = save_model(model, tmp_path / "m.safetensors")
    again = load_model(path)
    assert again.spec == model.spec
    for (k, a), (k2, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    assert model_fingerprint(again) == model_fingerprint(model)
    assert model_bytes(again) == path.read_bytes()


def test_a_run_directory_resolves_to_its_model(tmp_path):
    save_model(_model(), tmp_path / MODEL_FILE)
    assert load_model(tmp_path).num_classes == 3


def test_fingerprint_sees_every_weight():
    a, b = _model(), _model()
    assert model_fingerprint(a) == model_fingerprint(b)
    with torch.no_grad():
        b.layers[1].bias[0] += 1e-7
    assert model_fingerprint(a) != model_fingerprint(b)


def _header_file(tmp_path, tensors, metadata):
    path = tmp_path / "x.safetensors"
    path.write_bytes(st_save(tensors, metadata=metadata))
    return path


def test_bad_model_files(tmp_path):
    with pytest.raises(DKError, match="not found"):
        load_model(tmp_path / "missing.safetensors")
    with pytest.raises(DKError, match="not found.*finished run directory"):
        load_model(tmp_path)  # a directory without a model
    good = model_bytes(_model())
    (tmp_path / "trunc.safetensors").write_bytes(good[: len(good) // 2])
    with pytest.raises(DKError, match="trunc.safetensors is corrupt"):
        load_model(tmp_path / "trunc.safetensors")
    (tmp_path / "tiny.safetensors").write_bytes(b"abc")
    with pytest.raises(DKError, match="corrupt"):
        load_model(tmp_path / "tiny.safetensors")
    with pytest.raises(DKError, match="has no darkknowledge model config"):
        load_model(_header_file(tmp_path, {"w": torch.zeros(2)}, None))


def test_config_and_tensors_must_agree(tmp_path):
    model = _model()
    meta = {
        "darkknowledge.model": json.dumps(
            {"name": "mlp", "params": {"hidden": [8]}, "in_features": 6, "num_classes": 3}
        )
    }
    tensors = dict(model.state_dict())
    tensors["layers.0.weight"] = torch.zeros(8, 7)
    with pytest.raises(
        DKError,
        match=(
            r"layers.0.weight is torch.float32 \(8, 7\) but its "
            r"config needs torch.float32 \(8, 6\)"
        ),
    ):
        load_model(_header_file(tmp_path, tensors, meta))
    tensors.pop("layers.0.weight")
    with pytest.raises(DKError, match="missing \\['layers.0.weight'\\]"):
        load_model(_header_file(tmp_path, tensors, meta))
    with pytest.raises(DKError, match="malformed model config"):
        load_model(
            _header_file(
                tmp_path,
                dict(model.state_dict()),
                {"darkknowledge.model": json.dumps({"name": "mlp"})},
            )
        )
    with pytest.raises(DKError, match="corrupt"):
        load_model(
            _header_file(tmp_path, dict(model.state_dict()), {"darkknowledge.model": "{not json"})
        )
    with pytest.raises(DKError, match="unknown model 'resnet'"):
        load_model(
            _header_file(
                tmp_path,
                dict(model.state_dict()),
                {
                    "darkknowledge.model": json.dumps(
                        {"name": "resnet", "params": {}, "in_features": 6, "num_classes": 3}
                    )
                },
            )
        )
