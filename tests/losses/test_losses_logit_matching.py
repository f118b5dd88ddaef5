import pytest
import torch

from darkknowledge.errors import DKError
from darkknowledge.losses import logit_matching_loss, soft_target_loss

STUDENT = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
TEACHER = [[2.0, 0.0, 1.0], [1.0, 1.0, -2.0]]


def zero_meaned(x):
    return x - x.mean(dim=-1, keepdim=True)


def test_matches_hand_computed_value():
    expected = 0.0
    for z, v in zip(STUDENT, TEACHER, strict=True):
        zbar, vbar = sum(z) / len(z), sum(v) / len(v)
        expected += sum(0.5 * ((zi - zbar) - (vi - vbar)) ** 2 for zi, vi in zip(z, v, strict=True))
    expected /= len(STUDENT)
    loss = logit_matching_loss(torch.tensor(STUDENT), torch.tensor(TEACHER))
    assert loss.shape == ()
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_gradient_is_logit_difference_over_batch():
    torch.manual_seed(0)
    student = zero_meaned(torch.randn(4, 6)).requires_grad_(True)
    teacher = zero_meaned(torch.randn(4, 6))
    (grad,) = torch.autograd.grad(logit_matching_loss(student, teacher), student)
    torch.testing.assert_close(grad, (student - teacher).detach() / 4)


def test_invariant_to_per_example_shift():
    torch.manual_seed(1)
    student, teacher = torch.randn(3, 5), torch.randn(3, 5)
    shift = torch.randn(3, 1) * 10
    torch.testing.assert_close(
        logit_matching_loss(student + shift, teacher - shift), logit_matching_loss(student, teacher)
    )


def test_student_equal_to_teacher_gives_zero_loss_and_gradient():
    logits = torch.randn(3, 5)
    student = logits.clone().requires_grad_(True)
    loss = logit_matching_loss(student, logits)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(student.grad) == 0


@pytest.mark.parametrize("combine", ["arithmetic", "geometric"])
def test_ensemble_teacher_matches_mean_member_logits(combine):
    torch.manual_seed(2)
    student, members = torch.randn(3, 5), torch.randn(4, 3, 5)
    torch.testing.assert_close(
        logit_matching_loss(student, members, combine=combine),
        logit_matching_loss(student, members.mean(dim=0)),
    )


def _high_t_example(dtype):
    torch.manual_seed(3)
    student = zero_meaned(torch.randn(4, 5, dtype=dtype))
    teacher = zero_meaned(torch.randn(4, 5, dtype=dtype) * 2)
    return student, teacher


def _scaled_soft_gradient(student, teacher, temperature):
    """N · T² · gradient of the unscaled soft loss = N · gradient of soft_target_loss."""
    z = student.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(soft_target_loss(z, teacher, temperature), z)
    return student.shape[-1] * grad


def test_high_temperature_limit_is_logit_matching_float64():
    student, teacher = _high_t_example(torch.float64)
    batch = student.shape[0]
    z = student.clone().requires_grad_(True)
    (lm_grad,) = torch.autograd.grad(logit_matching_loss(z, teacher), z)
    torch.testing.assert_close(lm_grad, (student - teacher) / batch)
    errors = []
    for temperature in (1e2, 1e3, 1e4):
        grad = _scaled_soft_gradient(student, teacher, temperature)
        errors.append((grad - lm_grad).abs().max().item())
        value = student.shape[-1] * soft_target_loss(student, teacher, temperature)
        assert value.item() == pytest.approx(
            logit_matching_loss(student, teacher).item(), rel=20 / temperature
        )
    assert errors[0] > 5 * errors[1] > 25 * errors[2]
    torch.testing.assert_close(
        _scaled_soft_gradient(student, teacher, 1e4), lm_grad, rtol=1e-3, atol=1e-4
    )


def test_high_temperature_limit_holds_in_float32():
    student, teacher = _high_t_example(torch.float32)
    expected = (student - teacher) / student.shape[0]
    grad = _scaled_soft_gradient(student, teacher, 1e3)
    torch.testing.assert_close(grad, expected, rtol=2e-2, atol=5e-3)
    # At T = 1 the soft gradient is far from logit matching: the limit needs high T.
    assert not torch.allclose(_scaled_soft_gradient(student, teacher, 1.0), expected, atol=5e-2)


def test_class_count_mismatch_names_both_shapes():
    with pytest.raises(DKError, match=r"\(2, 3\).*\(2, 4\)"):
        logit_matching_loss(torch.zeros(2, 3), torch.zeros(2, 4))


def test_half_precision_input_gives_float32_loss():
    loss = logit_matching_loss(torch.tensor(STUDENT).half(), torch.tensor(TEACHER).half())
    assert loss.dtype == torch.float32
