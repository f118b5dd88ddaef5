import math

import pytest
import torch

from darkknowledge.errors import DKError
from darkknowledge.losses import combine_log_probs, combine_probs

MEMBER_A = [[1.0, 0.0, -1.0]]
MEMBER_B = [[-1.0, 2.0, 0.0]]


def py_softmax(values, temperature):
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


@pytest.mark.parametrize("temperature", [1, 2])
def test_arithmetic_and_geometric_on_a_hand_example(temperature):
    pa = py_softmax(MEMBER_A[0], temperature)
    pb = py_softmax(MEMBER_B[0], temperature)
    arithmetic = [(a + b) / 2 for a, b in zip(pa, pb, strict=True)]
    unnormalized = [math.sqrt(a * b) for a, b in zip(pa, pb, strict=True)]
    geometric = [g / sum(unnormalized) for g in unnormalized]
    members = torch.tensor([MEMBER_A, MEMBER_B])
    torch.testing.assert_close(
        combine_probs(members, temperature, "arithmetic"), torch.tensor([arithmetic])
    )
    torch.testing.assert_close(
        combine_probs(members, temperature, "geometric"), torch.tensor([geometric])
    )
    assert arithmetic != pytest.approx(geometric, rel=1e-3)


def test_geometric_equals_softmax_of_mean_logits():
    torch.manual_seed(0)
    members = torch.randn(5, 4, 7) * 3
    expected = torch.softmax(members.mean(dim=0) / 3.0, dim=-1)
    torch.testing.assert_close(combine_probs(members, 3.0, "geometric"), expected)


def test_arithmetic_batched_equals_looping_members():
    torch.manual_seed(1)
    members = torch.randn(5, 4, 7) * 3
    looped = sum(torch.softmax(member / 2.5, dim=-1) for member in members) / len(members)
    torch.testing.assert_close(combine_probs(members, 2.5, "arithmetic"), looped)


@pytest.mark.parametrize("combine", ["arithmetic", "geometric"])
def test_ensemble_of_one_equals_its_member(combine):
    torch.manual_seed(2)
    member = torch.randn(4, 6) * 5
    for temperature in (1, 4, 20):
        torch.testing.assert_close(
            combine_log_probs(member.unsqueeze(0), temperature, combine),
            combine_log_probs(member, temperature, combine),
        )
        torch.testing.assert_close(
            combine_log_probs(member, temperature, combine),
            torch.log_softmax(member / temperature, dim=-1),
        )


@pytest.mark.parametrize("combine", ["arithmetic", "geometric"])
def test_combined_distribution_is_normalized_and_stable(combine):
    members = torch.tensor([[[1000.0, 0.0, -1000.0]], [[-1000.0, 0.0, 1000.0]]])
    probs = combine_probs(members, 1.0, combine)
    assert torch.isfinite(probs).all()
    torch.testing.assert_close(probs.sum(dim=-1), torch.ones(1))


def test_half_precision_members_are_upcast():
    members = torch.randn(3, 2, 4).half()
    assert combine_log_probs(members, 2.0).dtype == torch.float32


def test_unknown_combine_is_rejected_with_suggestion():
    with pytest.raises(DKError, match="did you mean 'arithmetic'"):
        combine_probs(torch.zeros(2, 3), 1.0, "arithmatic")


@pytest.mark.parametrize("shape", [(3,), (0, 2, 3), (1, 1, 2, 3)])
def test_bad_teacher_shape_is_rejected(shape):
    with pytest.raises(DKError, match="teacher_logits"):
        combine_probs(torch.zeros(shape), 1.0)
