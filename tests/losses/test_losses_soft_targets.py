import math

import pytest
import torch

from darkknowledge.errors import DKError
from darkknowledge.losses import combine_probs, soft_target_loss

# A small fixed example: 2 examples, 3 classes.
STUDENT = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
TEACHER = [[2.0, 0.0, 1.0], [1.0, 1.0, -2.0]]


def py_softmax(values, temperature):
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


def py_kl_sum_over_classes(student, teacher, temperature):
    """Per-example KL(p ‖ q) summed over classes, in plain Python."""
    out = []
    for z, v in zip(student, teacher, strict=True):
        q = py_softmax(z, temperature)
        p = py_softmax(v, temperature)
        out.append(sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True)))
    return out


@pytest.mark.parametrize("temperature", [1, 4, 20])
def test_matches_hand_computed_value(temperature):
    kls = py_kl_sum_over_classes(STUDENT, TEACHER, temperature)
    expected = temperature**2 * sum(kls) / len(kls)
    loss = soft_target_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), temperature)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("temperature", [1, 4, 20])
def test_sums_over_classes_not_mean_over_classes(temperature):
    # KLDivLoss(reduction="mean") or a batchmean over classes*batch would divide by N = 3 too.
    kls = py_kl_sum_over_classes(STUDENT, TEACHER, temperature)
    sum_variant = temperature**2 * sum(kls) / len(kls)
    class_mean_variant = sum_variant / len(STUDENT[0])
    loss = soft_target_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), temperature).item()
    assert loss == pytest.approx(sum_variant, rel=1e-4)
    assert loss != pytest.approx(class_mean_variant, rel=1e-2)


@pytest.mark.parametrize("temperature", [1, 4, 20])
def test_t_squared_is_inside(temperature):
    kls = py_kl_sum_over_classes(STUDENT, TEACHER, temperature)
    unscaled = sum(kls) / len(kls)
    loss = soft_target_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), temperature).item()
    if temperature > 1:
        assert loss != pytest.approx(unscaled, rel=1e-2)
    assert loss / temperature**2 == pytest.approx(unscaled, rel=1e-4)


@pytest.mark.parametrize("temperature", [1, 4, 20])
def test_gradient_is_q_minus_p_over_t(temperature):
    student = torch.tensor(STUDENT, requires_grad=True)
    batch = len(STUDENT)
    unscaled = soft_target_loss(student, torch.tensor(TEACHER), temperature) / temperature**2
    (grad,) = torch.autograd.grad(unscaled, student)
    # dC/dz_i = (1/T)(q_i - p_i) per example; the loss is a mean over the batch.
    expected = torch.tensor(
        [
            [
                (qi - pi) / temperature / batch
                for qi, pi in zip(
                    py_softmax(z, temperature), py_softmax(v, temperature), strict=True
                )
            ]
            for z, v in zip(STUDENT, TEACHER, strict=True)
        ]
    )
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-8)


def test_kl_form_and_cross_entropy_form_give_the_same_gradient():
    torch.manual_seed(0)
    logits = torch.randn(4, 6)
    teacher = torch.randn(4, 6) * 3
    temperature = 4.0
    student_kl = logits.clone().requires_grad_(True)
    student_ce = logits.clone().requires_grad_(True)
    kl = soft_target_loss(student_kl, teacher, temperature)
    p = torch.softmax(teacher / temperature, dim=-1)
    ce = (
        -(p * torch.log_softmax(student_ce / temperature, dim=-1)).sum(dim=-1).mean()
        * temperature**2
    )
    (g_kl,) = torch.autograd.grad(kl, student_kl)
    (g_ce,) = torch.autograd.grad(ce, student_ce)
    torch.testing.assert_close(g_kl, g_ce)
    # The values differ by T² times the teacher entropy, a constant.
    entropy = -(p * p.log()).sum(dim=-1).mean() * temperature**2
    torch.testing.assert_close(ce - kl, entropy)


@pytest.mark.parametrize("temperature", [1, 4, 20])
def test_student_equal_to_teacher_gives_zero_loss_and_gradient(temperature):
    torch.manual_seed(1)
    logits = torch.randn(5, 7) * 4
    student = logits.clone().requires_grad_(True)
    loss = soft_target_loss(student, logits, temperature)
    loss.backward()
    assert loss.item() == 0.0
    torch.testing.assert_close(student.grad, torch.zeros_like(logits), atol=1e-6, rtol=0)


def test_loss_is_positive_when_student_differs():
    loss = soft_target_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), 4)
    assert loss.item() > 0


@pytest.mark.parametrize("combine", ["arithmetic", "geometric"])
def test_ensemble_teacher_uses_combined_targets(combine):
    torch.manual_seed(2)
    student = torch.randn(3, 5)
    members = torch.randn(4, 3, 5) * 2
    temperature = 4.0
    p = combine_probs(members, temperature, combine)
    log_q = torch.log_softmax(student / temperature, dim=-1)
    expected = temperature**2 * (p * (p.log() - log_q)).sum(dim=-1).mean()
    loss = soft_target_loss(student, members, temperature, combine=combine)
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input_gives_float32_loss(dtype):
    student = torch.tensor(STUDENT, dtype=dtype)
    teacher = torch.tensor(TEACHER, dtype=dtype)
    loss = soft_target_loss(student, teacher, 4)
    assert loss.dtype == torch.float32
    full = soft_target_loss(student.float(), teacher.float(), 4)
    torch.testing.assert_close(loss, full)


def test_half_precision_gradient_reaches_half_student():
    student = torch.tensor(STUDENT, dtype=torch.float16, requires_grad=True)
    soft_target_loss(student, torch.tensor(TEACHER), 4).backward()
    assert student.grad is not None and student.grad.dtype == torch.float16


def test_class_count_mismatch_names_both_shapes():
    with pytest.raises(DKError, match=r"\(2, 3\).*\(2, 4\)"):
        soft_target_loss(torch.zeros(2, 3), torch.zeros(2, 4), 4)
    with pytest.raises(DKError, match=r"\(2, 3\).*\(5, 2, 4\)"):
        soft_target_loss(torch.zeros(2, 3), torch.zeros(5, 2, 4), 4)


def test_batch_mismatch_is_rejected():
    with pytest.raises(DKError, match="batch"):
        soft_target_loss(torch.zeros(2, 3), torch.zeros(3, 3), 4)


@pytest.mark.parametrize("shape", [(3,), (2, 2, 3), (0, 3)])
def test_bad_student_shape_is_rejected(shape):
    with pytest.raises(DKError, match="student_logits"):
        soft_target_loss(torch.zeros(shape), torch.zeros(2, 3), 4)


@pytest.mark.parametrize("bad", [0, -4, float("nan"), float("inf"), "20", True])
def test_bad_temperature_is_rejected(bad):
    with pytest.raises(DKError, match="temperature"):
        soft_target_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), bad)


def test_unknown_combine_is_rejected():
    with pytest.raises(DKError, match="geometric"):
        soft_target_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), 4, combine="geometirc")
