"""The FitNets hint loss, and label smoothing as a transform of the hard targets."""

import pytest
import torch
import torch.nn.functional as F

from darkknowledge.errors import DKError
from darkknowledge.losses import hard_target_loss, hint_loss, smoothed_targets


def test_hint_loss_is_half_the_squared_error_per_unit():
    regressed = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 4.0]])
    hint = torch.tensor([[0.0, 2.0, 1.0], [1.0, 0.0, 2.0]])
    # squared errors 1, 0, 1, 1, 0, 4: sum 7 over 6 elements
    assert hint_loss(regressed, hint).item() == pytest.approx(0.5 * 7 / 6)


def test_hint_loss_treats_the_hint_as_a_fixed_target():
    regressed = torch.randn(4, 3, requires_grad=True)
    hint = torch.randn(4, 3, requires_grad=True)
    hint_loss(regressed, hint).backward()
    assert regressed.grad is not None and hint.grad is None
    torch.testing.assert_close(regressed.grad, (regressed - hint).detach() / 12)


def test_hint_loss_needs_matching_shapes():
    with pytest.raises(DKError, match=r"regressed student layer \(4, 3\).*hint layer \(4, 5\)"):
        hint_loss(torch.zeros(4, 3), torch.zeros(4, 5))


def test_smoothed_targets_keep_epsilon_over_c_on_every_class():
    t = smoothed_targets(torch.tensor([0, 2]), 4, 0.2)
    torch.testing.assert_close(
        t, torch.tensor([[0.85, 0.05, 0.05, 0.05], [0.05, 0.05, 0.85, 0.05]])
    )
    torch.testing.assert_close(t.sum(1), torch.ones(2))


@pytest.mark.parametrize("epsilon", [0.05, 0.1, 0.5])
def test_the_smoothed_hard_term_is_cross_entropy_with_smoothed_targets(epsilon):
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(6, 5, generator=g), torch.randint(0, 5, (6,), generator=g)
    torch.testing.assert_close(
        hard_target_loss(logits, labels, epsilon),
        F.cross_entropy(logits, labels, label_smoothing=epsilon),
    )


def test_no_smoothing_is_the_plain_cross_entropy_bit_for_bit():
    g = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(6, 5, generator=g), torch.randint(0, 5, (6,), generator=g)
    assert torch.equal(hard_target_loss(logits, labels, 0.0), F.cross_entropy(logits, labels))


@pytest.mark.parametrize("epsilon", [1.0, -0.1, float("nan"), True])
def test_epsilon_outside_0_1_is_refused(epsilon):
    with pytest.raises(DKError, match="label_smoothing"):
        smoothed_targets(torch.tensor([0]), 3, epsilon)
