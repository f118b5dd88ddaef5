"""The paper's MLPs: shapes, inverted dropout, max-norm projection, spec validation, registry."""

from __future__ import annotations

import pytest
import torch

from darkknowledge.errors import DKError
from darkknowledge.models import MLP, MLPSpec, build_model, model_config, models
from darkknowledge.train.optim import PaperDropoutSGD


def test_registered_and_built_from_config():
    assert "mlp" in models.names()
    model = build_model(
        "mlp", {"hidden": [16, 8], "input_dropout": 0.2}, in_features=12, num_classes=5
    )
    assert isinstance(model, MLP)
    assert [tuple(layer.weight.shape) for layer in model.layers] == [(16, 12), (8, 16), (5, 8)]
    assert model(torch.randn(3, 12)).shape == (3, 5)
    assert model_config(model) == {
        "name": "mlp",
        "params": {
            "hidden": [16, 8],
            "input_dropout": 0.2,
            "hidden_dropout": 0.0,
            "max_norm": None,
            "init_std": None,
        },
        "in_features": 12,
        "num_classes": 5,
    }


def test_unknown_model_name_suggests():
    with pytest.raises(DKError, match="unknown model 'mpl'.*did you mean 'mlp'"):
        build_model("mpl", {}, 4, 2)


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"hidden": []}, "model.hidden"),
        ({"hidden": [0]}, "model.hidden"),
        ({"input_dropout": 1.0}, "model.input_dropout=1.0"),
        ({"hidden_dropout": -0.1}, "model.hidden_dropout"),
        ({"max_norm": 0}, "model.max_norm"),
        ({"init_std": 0}, "model.init_std"),
        ({"hiden": [3]}, "did you mean 'hidden'"),
        ({"hidden": ["a"]}, r"model \(mlp\).hidden\[0\] must be an integer"),
    ],
)
def test_spec_validation(params, needle):
    with pytest.raises(DKError, match=needle):
        build_model("mlp", params, 4, 2)


def test_eval_mode_is_the_deterministic_mean_network():
    torch.manual_seed(0)
    model = build_model("mlp", {"hidden": [32], "input_dropout": 0.5, "hidden_dropout": 0.5}, 10, 3)
    x = torch.randn(4, 10)
    model.train()
    assert not torch.equal(model(x), model(x))  # dropout draws fresh masks
    model.eval()
    assert torch.equal(model(x), model(x))


def test_init_std_gives_normal_weights_and_zero_biases():
    torch.manual_seed(0)
    model = build_model("mlp", {"hidden": [400], "init_std": 0.01}, 300, 10)
    w = model.layers[0].weight
    assert abs(float(w.detach().std()) - 0.01) < 0.001
    assert all(float(layer.bias.detach().abs().max()) == 0.0 for layer in model.layers)


def test_max_norm_projection_bounds_every_hidden_unit():
    torch.manual_seed(0)
    spec = MLPSpec(hidden=[20, 10], max_norm=15**0.5)
    model = spec.build(in_features=30, num_classes=4)
    with torch.no_grad():
        for layer in model.layers:
            layer.weight.mul_(50.0)
    small_row = model.layers[0].weight[0].clone() / 1e4
    with torch.no_grad():
        model.layers[0].weight[0] = small_row
    model.project_max_norm_()
    for w in model.max_norm_weights():
        assert float(w.detach().norm(dim=1).max()) <= spec.max_norm * (1 + 1e-6)
    assert torch.equal(model.layers[0].weight[0], small_row)  # rows already inside are untouched
    # the output layer is not constrained
    assert float(model.layers[-1].weight.detach().norm(dim=1).max()) > spec.max_norm


def test_max_norm_holds_through_paper_training_steps():
    torch.manual_seed(0)
    model = MLPSpec(hidden=[16], max_norm=1.0).build(in_features=8, num_classes=3)
    opt = PaperDropoutSGD(model.parameters(), lr=50.0, momentum=0.5)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        model.project_max_norm_()
        assert float(model.layers[0].weight.detach().norm(dim=1).max()) <= 1.0 + 1e-6


def test_no_max_norm_means_no_constrained_weights():
    assert MLPSpec(hidden=[4]).build(3, 2).max_norm_weights() == []
