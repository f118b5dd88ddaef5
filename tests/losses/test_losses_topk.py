"""Top-k + tail soft-target loss: hand-computed values, the k = C equivalence, the data-processing
inequality, gradients, and the TopKTargets container."""

from __future__ import annotations

import math

import pytest
import torch

from darkknowledge.errors import DKError
from darkknowledge.losses import TopKTargets, soft_target_loss, soft_target_loss_topk, topk_targets

# Two examples over 3 classes. Teacher p, student q (at the loss temperature):
#   p1 = (0.5, 0.3, 0.2), q1 = (0.25, 0.25, 0.5);  p2 = (0.9, 0.05, 0.05), q2 = (0.5, 0.3, 0.2).
# k = 1 (class 0 for both): buckets p1 = (0.5 | 0.5), q1 = (0.25 | 0.75); p2 = (0.9 | 0.1), q2 =
# (0.5 | 0.5).
#   KL1 = 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.5 ln(4/3)            = 0.143841036225890
#   KL2 = 0.9 ln(0.9/0.5) + 0.1 ln(0.1/0.5) = 0.9 ln 1.8 + 0.1 ln 0.2 = 0.368064207168498
#   batch mean = 0.255952621697194, times T².
P = torch.tensor([[0.5, 0.3, 0.2], [0.9, 0.05, 0.05]], dtype=torch.float64)
Q = torch.tensor([[0.25, 0.25, 0.5], [0.5, 0.3, 0.2]], dtype=torch.float64)
MEAN_KL_K1 = 0.255952621697194


def _student(temperature):
    return temperature * Q.log()  # softmax(z / T) = Q


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_hand_computed_k1(temperature):
    idx = torch.tensor([[0], [0]])
    top = P[:, :1].log()
    tail = torch.tensor([0.5, 0.1], dtype=torch.float64).log()
    loss = soft_target_loss_topk(_student(temperature), idx, top, tail, temperature)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(temperature**2 * MEAN_KL_K1, rel=1e-12)


def test_hand_computed_k2_single_tail_class_is_the_dense_kl():
    # k = 2 leaves one class in the tail, so the buckets are the classes: the full KL.
    # KL1 = 0.5 ln 2 + 0.3 ln 1.2 + 0.2 ln 0.4 = 0.218011911;  KL2 = 0.9 ln 1.8 + 0.05 ln(1/6) +
    # 0.05 ln 0.25
    kl1 = 0.5 * math.log(2) + 0.3 * math.log(1.2) + 0.2 * math.log(0.4)
    kl2 = 0.9 * math.log(1.8) + 0.05 * math.log(0.05 / 0.3) + 0.05 * math.log(0.05 / 0.2)
    assert kl1 == pytest.approx(0.218011911, abs=1e-9)
    idx = torch.tensor([[0, 1], [0, 2]])
    top = P.gather(1, idx).log()
    tail = torch.tensor([0.2, 0.05], dtype=torch.float64).log()
    loss = soft_target_loss_topk(_student(2.0), idx, top, tail, 2.0)
    assert loss.item() == pytest.approx(4.0 * (kl1 + kl2) / 2, rel=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
@pytest.mark.parametrize("members", [1, 3])
def test_k_equal_to_classes_is_the_dense_loss(temperature, members):
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(members, 8, 6, generator=g, dtype=torch.float64) * 5
    student = torch.randn(8, 6, generator=g, dtype=torch.float64) * 5
    for combine in ("arithmetic", "geometric"):
        t = topk_targets(teacher if members > 1 else teacher[0], 6, temperature, combine)
        assert torch.all(t.tail_log_prob == -math.inf)
        bucketed = soft_target_loss_topk(student, *t.at(temperature, combine), temperature)
        dense = soft_target_loss(
            student, teacher if members > 1 else teacher[0], temperature, combine
        )
        assert bucketed.item() == pytest.approx(dense.item(), rel=1e-12, abs=1e-14)
    # float32, as a store holds it: equal to rounding
    t32 = topk_targets(teacher.float(), 6, temperature)
    assert torch.allclose(
        soft_target_loss_topk(student.float(), *t32.at(temperature), temperature),
        soft_target_loss(student.float(), teacher.float(), temperature),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_fewer_buckets_never_exceed_the_dense_kl(temperature):
    """Data-processing inequality: merging classes into a tail can only lower the KL."""
    g = torch.Generator().manual_seed(1)
    for trial in range(5):
        teacher = torch.randn(2, 16, 12, generator=g, dtype=torch.float64) * (1 + 3 * trial)
        student = torch.randn(16, 12, generator=g, dtype=torch.float64) * (1 + 3 * trial)
        dense = soft_target_loss(student, teacher, temperature).item()
        previous = -1.0
        for k in range(1, 13):
            t = topk_targets(teacher, k, temperature)
            value = soft_target_loss_topk(student, *t.at(temperature), temperature).item()
            assert 0.0 <= value <= dense * (1 + 1e-12) + 1e-15
            assert value >= previous - 1e-12  # refining the buckets can only raise it
            previous = value
        assert previous == pytest.approx(dense, rel=1e-12)


def test_gradient_is_the_bucketed_q_minus_p():
    """dL/dz_j = (T/B) (q_j − p_B q_j / Q_B) for class j in bucket B (top-k buckets are single
    classes).
    """
    g = torch.Generator().manual_seed(2)
    teacher = torch.randn(5, 9, generator=g, dtype=torch.float64) * 3
    student = (torch.randn(5, 9, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    temperature, k = 3.0, 4
    t = topk_targets(teacher, k, temperature)
    soft_target_loss_topk(student, *t.at(temperature), temperature).backward()
    q = torch.softmax(student.detach() / temperature, dim=1)
    p = torch.softmax(teacher / temperature, dim=1)
    idx = t.indices[0]
    in_top = torch.zeros_like(q, dtype=torch.bool).scatter(1, idx, True)
    q_tail = (q * ~in_top).sum(1, keepdim=True)
    p_tail = (p * ~in_top).sum(1, keepdim=True)
    expected = torch.where(in_top, q - p, q - p_tail * q / q_tail) * temperature / 5
    assert torch.allclose(student.grad, expected, atol=1e-12)


def test_perfect_student_and_empty_tail_give_zero_loss_and_finite_gradient():
    teacher = torch.randn(4, 7) * 4
    student = teacher.clone().requires_grad_(True)
    t = topk_targets(teacher, 7, 2.0)
    loss = soft_target_loss_topk(student, *t.at(2.0), 2.0)
    loss.backward()
    assert abs(loss.item()) < 1e-6
    assert torch.isfinite(student.grad).all() and student.grad.abs().max() < 1e-5


def test_a_teacher_tail_that_underflows_to_zero_adds_nothing():
    student = torch.zeros(1, 3, requires_grad=True)
    loss = soft_target_loss_topk(
        student,
        torch.tensor([[0, 1]]),
        torch.tensor([[math.log(0.5), math.log(0.5)]]),
        torch.tensor([-math.inf]),
        1.0,
    )
    loss.backward()
    # buckets p = (0.5, 0.5, 0), q = (1/3, 1/3, 1/3 tail): KL = ln 1.5
    assert loss.item() == pytest.approx(math.log(1.5), rel=1e-6)
    assert torch.isfinite(student.grad).all()


def test_half_inputs_are_upcast():
    teacher = torch.randn(3, 5)
    t = topk_targets(teacher, 2, 4.0)
    loss = soft_target_loss_topk(
        torch.randn(3, 5).half(),
        t.indices[0],
        t.log_probs[0].half(),
        t.tail_log_prob[0].half(),
        4.0,
    )
    assert loss.dtype == torch.float32


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (
            (
                torch.zeros(2, 5),
                torch.zeros(2, 2, dtype=torch.long),
                torch.zeros(2, 2),
                torch.zeros(2),
                0.0,
            ),
            "temperature must be a finite number > 0",
        ),
        (
            (torch.zeros(2, 5), torch.zeros(2, 2), torch.zeros(2, 2), torch.zeros(2), 1.0),
            "topk_indices must be an integer tensor",
        ),
        (
            (
                torch.zeros(2, 5),
                torch.zeros(3, 2, dtype=torch.long),
                torch.zeros(3, 2),
                torch.zeros(3),
                1.0,
            ),
            "topk_indices must be \\(batch, k\\) with batch 2",
        ),
        (
            (
                torch.zeros(2, 5),
                torch.zeros(2, 6, dtype=torch.long),
                torch.zeros(2, 6),
                torch.zeros(2),
                1.0,
            ),
            "1 ≤ k ≤ 5",
        ),
        (
            (
                torch.zeros(2, 5),
                torch.zeros(2, 2, dtype=torch.long),
                torch.zeros(2, 3),
                torch.zeros(2),
                1.0,
            ),
            "topk_log_probs must be \\(2, 2\\)",
        ),
        (
            (
                torch.zeros(2, 5),
                torch.zeros(2, 2, dtype=torch.long),
                torch.zeros(2, 2),
                torch.zeros(1),
                1.0,
            ),
            "tail_log_prob \\(2,\\)",
        ),
        (
            (
                torch.zeros(5),
                torch.zeros(2, 2, dtype=torch.long),
                torch.zeros(2, 2),
                torch.zeros(2),
                1.0,
            ),
            "student_logits must be a non-empty",
        ),
    ],
)
def test_bad_inputs_are_dkerrors(args, needle):
    with pytest.raises(DKError, match=needle):
        soft_target_loss_topk(*args)


def test_topk_targets_checks_k():
    with pytest.raises(DKError, match=r"top-k needs 1 ≤ k ≤ 4"):
        topk_targets(torch.zeros(2, 4), 5, 1.0)
    with pytest.raises(DKError, match="top-k needs"):
        topk_targets(torch.zeros(2, 4), 0, 1.0)


def test_topk_targets_hold_the_largest_probabilities_and_the_rest_of_the_mass():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    t = topk_targets(logits, 2, 2.0)
    p = torch.softmax(logits / 2.0, dim=1)
    assert t.indices.tolist() == [[[1, 2]]]
    assert torch.allclose(t.log_probs.exp(), p[:, [1, 2]][None])
    assert torch.allclose(t.tail_log_prob.exp(), (p[:, 0] + p[:, 3])[None])
    assert t.shape == (1, 1, 2) and t.k == 2 and t.members == 1 and t.combine is None


def test_ensembles_are_combined_at_the_stored_temperature():
    members = torch.randn(3, 6, 5)
    t = topk_targets(members, 5, 4.0, "geometric")
    assert t.members == 3 and t.combine == "geometric"
    order = t.indices[0]
    from darkknowledge.losses import combine_log_probs

    assert torch.allclose(
        t.log_probs[0], combine_log_probs(members, 4.0, "geometric").gather(1, order)
    )


def test_targets_gather_like_a_tensor_and_move():
    t = topk_targets(torch.randn(10, 6), 3, 2.0)
    pos = torch.tensor([4, 1, 4])
    got = t[:, pos]
    assert (
        isinstance(got, TopKTargets)
        and got.shape == (1, 3, 3)
        and got.tail_log_prob.shape == (1, 3)
    )
    assert torch.equal(got.indices[0], t.indices[0, pos]) and torch.equal(
        got.log_probs[0], t.log_probs[0, pos]
    )
    assert got.temperature == 2.0
    assert t[:, 2:5].shape == (1, 3, 3)
    assert t.detach() is t and t.to("cpu").device.type == "cpu"
    with pytest.raises(DKError, match="first two dimensions"):
        t[:, pos, 0]


def test_a_loss_at_another_temperature_or_combine_is_refused():
    t = topk_targets(torch.randn(2, 4, 6), 3, 20.0, "arithmetic")
    with pytest.raises(
        DKError,
        match=(
            r"stored at temperature 20 but the loss uses temperature 4; set the method's "
            r"temperature to 20"
        ),
    ):
        t.at(4.0)
    with pytest.raises(
        DKError,
        match=(
            r"combine 2 members by the arithmetic mean but the run asks for geometric; set "
            r"teacher.combine=arithmetic"
        ),
    ):
        t.at(20.0, "geometric")
    one = topk_targets(torch.randn(4, 6), 3, 20.0)
    assert one.at(20.0, "geometric")[0].shape == (4, 3)  # one teacher: the combine does not matter


def test_malformed_targets_are_refused():
    with pytest.raises(DKError, match=r"indices must be integer \(1, N, k\)"):
        TopKTargets(
            torch.zeros(2, 3, 2, dtype=torch.long), torch.zeros(2, 3, 2), torch.zeros(2, 3), 1.0
        )
    with pytest.raises(DKError, match="tail_log_prob must be float"):
        TopKTargets(
            torch.zeros(1, 3, 2, dtype=torch.long), torch.zeros(1, 3, 2), torch.zeros(1, 2), 1.0
        )
    with pytest.raises(DKError, match="temperature must be a finite number > 0"):
        TopKTargets(
            torch.zeros(1, 3, 2, dtype=torch.long), torch.zeros(1, 3, 2), torch.zeros(1, 3), -1.0
        )
