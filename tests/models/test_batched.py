"""BatchedMLP: K stacked MLPs compute what the K models compute alone, and unstack back into
them.
"""

from __future__ import annotations

import pytest
import torch

from darkknowledge.errors import DKError
from darkknowledge.losses import hard_target_loss
from darkknowledge.models import MLP, BatchedMLP, build_model, load_model, save_model


def _members(k=3, seed0=0, **params):
    out = []
    for s in range(seed0, seed0 + k):
        torch.manual_seed(s)
        out.append(build_model("mlp", {"hidden": [16, 8], **params}, 12, 5))
    return out


def test_forward_equals_each_model_alone():
    members = _members()
    batched = BatchedMLP.from_models(members).eval()
    x = torch.randn(3, 7, 12)
    out = batched(x)
    assert out.shape == (3, 7, 5)
    for k, m in enumerate(members):
        torch.testing.assert_close(out[k], m.eval()(x[k]), rtol=1e-6, atol=1e-6)


def test_unstack_round_trips_bitwise_into_ordinary_model_files(tmp_path):
    members = _members(max_norm=2.0)
    batched = BatchedMLP.from_models(members)
    assert set(batched.state_dict()) == set(members[0].state_dict())
    for k, (orig, back) in enumerate(zip(members, batched.unstack(), strict=True)):
        assert isinstance(back, MLP) and back.spec == orig.spec
        path = save_model(back, tmp_path / f"m{k}.safetensors")
        loaded = load_model(path).state_dict()
        for name, v in orig.state_dict().items():
            assert torch.equal(loaded[name], v), name


def test_summed_loss_gives_each_model_its_stand_alone_gradient():
    members = _members()
    batched = BatchedMLP.from_models(members)
    x, y = torch.randn(3, 10, 12), torch.randint(0, 5, (3, 10))
    logits = batched(x)
    sum(hard_target_loss(logits[k], y[k]) for k in range(3)).backward()
    for k, m in enumerate(members):
        hard_target_loss(m(x[k]), y[k]).backward()
        for (name, p), bp in zip(m.named_parameters(), batched.parameters(), strict=True):
            torch.testing.assert_close(bp.grad[k], p.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_max_norm_is_one_renorm_per_layer_for_all_replicas_and_equals_each_models():
    members = _members(max_norm=0.3)
    for m in members:
        with torch.no_grad():
            for layer in m.layers:
                layer.weight.mul_(10)
    batched = BatchedMLP.from_models(members)
    batched.project_max_norm_()
    for m in members:
        m.project_max_norm_()
    for k, m in enumerate(members):
        for name, v in m.state_dict().items():
            assert torch.equal(batched.state_dict()[name][k], v), name
    assert len(batched.max_norm_weights()) == 2  # hidden layers only, like MLP


def test_dropout_is_drawn_per_element_and_off_in_eval_mode():
    batched = BatchedMLP.from_models(_members(input_dropout=0.5))
    x = torch.ones(3, 4, 12)
    torch.manual_seed(0)
    a = batched.train()(x)
    torch.manual_seed(0)
    b = batched(x)
    assert torch.equal(a, b)  # drawn from the torch RNG: reproducible
    e = batched.eval()(x)
    torch.testing.assert_close(e[0], batched.unstack()[0].eval()(x[0]), rtol=1e-6, atol=1e-6)


def test_only_one_architecture_can_be_stacked():
    a = _members(1)[0]
    torch.manual_seed(0)
    b = build_model("mlp", {"hidden": [16, 4]}, 12, 5)
    with pytest.raises(DKError, match="one architecture"):
        BatchedMLP.from_models([a, b])
    with pytest.raises(DKError, match="at least one"):
        BatchedMLP.from_models([])
