"""DKD's two terms: hand-computed values, and the decomposition of the soft-target loss."""

import math

import pytest
import torch

from darkknowledge.errors import DKError
from darkknowledge.losses import decoupled_kd_terms, soft_target_loss, softmax_with_temperature

STUDENT = [[1.0, 2.0, 0.5, -1.0], [0.0, -1.0, 3.0, 0.5]]
TEACHER = [[2.0, 0.0, 1.0, 0.5], [1.0, 1.0, -2.0, 0.0]]
LABELS = [0, 2]


def py_softmax(values, temperature):
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


def py_kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0)


def py_terms(student, teacher, labels, temperature):
    """(TCKD, NCKD) in plain Python, from the paper's definitions (Zhao et al. 2022, eq. 1-4)."""
    tckd = nckd = 0.0
    for z, v, y in zip(student, teacher, labels, strict=True):
        q, p = py_softmax(z, temperature), py_softmax(v, temperature)
        tckd += py_kl([p[y], 1 - p[y]], [q[y], 1 - q[y]])
        p_hat = [pi / (1 - p[y]) for i, pi in enumerate(p) if i != y]
        q_hat = [qi / (1 - q[y]) for i, qi in enumerate(q) if i != y]
        nckd += py_kl(p_hat, q_hat)
    t2, n = temperature**2, len(labels)
    return t2 * tckd / n, t2 * nckd / n


@pytest.mark.parametrize("temperature", [1, 4, 20])
def test_matches_hand_computed_values(temperature):
    tckd, nckd = decoupled_kd_terms(
        torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(LABELS), temperature
    )
    want_t, want_n = py_terms(STUDENT, TEACHER, LABELS, temperature)
    assert tckd.shape == () and nckd.shape == ()
    assert tckd.item() == pytest.approx(want_t, rel=1e-4)
    assert nckd.item() == pytest.approx(want_n, rel=1e-4)


@pytest.mark.parametrize("temperature", [1, 4, 20])
@pytest.mark.parametrize("combine", ["arithmetic", "geometric"])
def test_soft_target_loss_is_tckd_plus_rest_mass_times_nckd(temperature, combine):
    """KD = TCKD + (1 − p_t) · NCKD, example by example (Zhao et al., eq. 5): no magic numbers."""
    g = torch.Generator().manual_seed(0)
    student = torch.randn(5, 7, generator=g, dtype=torch.float64) * 3
    teacher = torch.randn(3, 5, 7, generator=g, dtype=torch.float64) * 3  # an ensemble of three
    labels = torch.randint(0, 7, (5,), generator=g)
    p = softmax_with_temperature(teacher, temperature)
    p = (
        p.mean(0)
        if combine == "arithmetic"
        else softmax_with_temperature(teacher.mean(0), temperature)
    )
    for b in range(5):
        tckd, nckd = decoupled_kd_terms(
            student[b : b + 1], teacher[:, b : b + 1], labels[b : b + 1], temperature, combine
        )
        kd = soft_target_loss(student[b : b + 1], teacher[:, b : b + 1], temperature, combine)
        rest = 1 - p[b, labels[b]]
        torch.testing.assert_close(kd, tckd + rest * nckd)


def test_a_certain_teacher_gives_finite_terms_and_gradients():
    student = torch.tensor([[0.0, 1.0, 2.0]], requires_grad=True)
    teacher = torch.tensor([[200.0, 0.0, 0.0]])  # p_t = 1 in float32: the rest mass is 0
    tckd, nckd = decoupled_kd_terms(student, teacher, torch.tensor([0]), 1.0)
    assert torch.isfinite(tckd) and torch.isfinite(nckd)
    (tckd + nckd).backward()
    assert torch.isfinite(student.grad).all()


def test_labels_are_checked():
    with pytest.raises(DKError, match="out of range"):
        decoupled_kd_terms(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 3]), 4.0)
    with pytest.raises(DKError, match="integer class indices"):
        decoupled_kd_terms(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0.0, 1.0]), 4.0)
