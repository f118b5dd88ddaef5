"""The convolutional net: shapes for square and non-square inputs, an exact parameter count,
clear errors for inputs it cannot read, files, features, and runs (one by one, never batched)."""

from __future__ import annotations

import pytest
import torch

from darkknowledge.errors import DKError
from darkknowledge.models import (
    CNN,
    FeatureTap,
    batchable,
    build_model,
    feature_width,
    load_model,
    model_config,
    models,
    save_model,
)
from darkknowledge.train import run


def _count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("params", "in_features", "pooled"),
    [
        ({}, 784, (64, 4, 4)),  # 28 → 24 → 12 → 8 → 4
        ({"channels": [4, 8], "kernel": 3, "image": [1, 28, 56]}, 28 * 56, (8, 5, 12)),
        ({"channels": [5], "kernel": 3, "hidden": [7, 6], "image": [3, 8, 8]}, 192, (5, 3, 3)),
    ],
)
def test_shapes_and_parameter_count(params, in_features, pooled):
    model = build_model("cnn", params, in_features, 10)
    assert isinstance(model, CNN)
    assert model.layers[0].in_features == pooled[0] * pooled[1] * pooled[2]
    assert model(torch.randn(3, in_features)).shape == (3, 10)
    assert models.get("cnn")(**params).parameter_count(in_features, 10) == _count(model)
    assert model_config(model)["name"] == "cnn"


def test_dropout_only_in_training_and_eval_is_deterministic():
    torch.manual_seed(0)
    model = build_model("cnn", {"channels": [4], "hidden": [32], "hidden_dropout": 0.5}, 784, 10)
    x = torch.randn(4, 784)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize(
    ("params", "in_features", "message"),
    [
        ({}, 700, "700 features, which is not one square image.*set model.image"),
        ({"image": [1, 28, 28]}, 785, r"model.image=\[1, 28, 28\] does not match"),
        ({"channels": [4, 4, 4]}, 784, "28×28 input is too small for 3 convolutions"),
        ({"channels": []}, 784, "model.channels=.*invalid"),
        ({"hidden": [0]}, 784, "model.hidden=.*invalid"),
        ({"kernel": 0}, 784, "model.kernel=0 is out of range"),
        ({"hidden_dropout": 1.0}, 784, "model.hidden_dropout=1.0 is out of range"),
        ({"image": [28, 28]}, 784, r"model.image=\[28, 28\] is invalid.*\[channels, height"),
        ({"width": 3}, 784, "width"),
    ],
)
def test_inputs_it_cannot_read_are_refused_in_one_line(params, in_features, message):
    with pytest.raises(DKError, match=message) as err:
        build_model("cnn", params, in_features, 10)
    assert "\n" not in str(err.value)


def test_file_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_model("cnn", {"channels": [4, 6], "hidden": [16], "image": [1, 28, 28]}, 784, 10)
    again = load_model(save_model(model, tmp_path / "m.safetensors"))
    x = torch.randn(5, 784)
    assert again.spec == model.spec
    assert torch.equal(again.eval()(x), model.eval()(x))


def test_named_features_read_the_fully_connected_layers_as_in_an_mlp():
    model = build_model("cnn", {"channels": [4], "hidden": [24, 12]}, 784, 10)
    assert feature_width(model, "layers.0") == 24
    with FeatureTap([model], ["layers.1", "convs.0"], "the cnn") as tap:
        model(torch.randn(2, 784))
        got = tap.take()
    assert got["layers.1"].shape == (2, 12) and got["convs.0"].shape == (2, 4, 24, 24)


def test_only_mlps_batch():
    assert batchable("mlp") and not batchable("cnn")


def test_a_cnn_run_learns_and_refuses_replicas(make_cfg, memoized_data, isolated_cache):
    cnn = ["model.name=cnn", "model.channels=[4]", "model.hidden=[16]", "optim.lr=0.1"]
    summary = run(make_cfg(*cnn, "optim.epochs=8"), "train")
    assert summary["eval"]["test"]["accuracy"] > 0.5  # 10 classes: chance is 0.1
    with pytest.raises(DKError, match="replicas train MLPs.*model.name=cnn is not supported"):
        run(make_cfg(*cnn, "replicas.seeds=[0,1]", name="replicas"), "train")
