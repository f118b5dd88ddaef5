"""Named intermediate activations through forward hooks: no model rewritten, nothing left behind."""

import pytest
import torch

from darkknowledge.errors import DKError
from darkknowledge.models import FeatureTap, build_model, feature_width


def _mlp(seed=0, hidden=(6, 5)):
    torch.manual_seed(seed)
    return build_model("mlp", {"hidden": list(hidden)}, 4, 3)


def test_the_tap_keeps_the_named_layers_outputs():
    model, x = _mlp(), torch.randn(2, 4)
    with FeatureTap([model], ["layers.0", "layers.1"], "the student") as tap:
        model(x)
        features = tap.take()
    first = model.layers[0](x)
    torch.testing.assert_close(features["layers.0"], first)
    torch.testing.assert_close(features["layers.1"], model.layers[1](torch.relu(first)))
    assert all(not m._forward_hooks for m in model.modules())


def test_several_models_stack_in_order_and_a_take_forgets():
    members, x = [_mlp(0), _mlp(1)], torch.randn(2, 4)
    tap = FeatureTap(members, ["layers.0"], "the teacher", stacked=True)
    with torch.inference_mode():
        for m in members:
            m(x)
    out = tap.take()["layers.0"]
    assert out.shape == (2, 2, 6) and not out.is_inference()  # usable by autograd outside
    torch.testing.assert_close(out[1], members[1].layers[0](x))
    with pytest.raises(DKError, match="did not run in the last forward pass"):
        tap.take()
    tap.close()


def test_an_unknown_layer_names_the_ones_there_are():
    with pytest.raises(
        DKError, match=r"the student has no layer 'layers\.7'.*layers\.0, layers\.1, layers\.2"
    ):
        FeatureTap([_mlp()], ["layers.7"], "the student")
    with pytest.raises(DKError, match="no layer"):
        feature_width(_mlp(), "body", "the teacher")


def test_widths_come_from_linear_layers():
    model = _mlp()
    assert [feature_width(model, f"layers.{i}") for i in range(3)] == [6, 5, 3]
    with pytest.raises(DKError, match="does not say its width"):
        feature_width(model, "layers", "the student")
