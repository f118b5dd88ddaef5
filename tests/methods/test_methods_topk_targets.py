"""Methods given top-k targets (a top-k teacher-output store) instead of dense teacher logits."""

from __future__ import annotations

import pytest
import torch

from darkknowledge.errors import DKError
from darkknowledge.losses import (
    hard_target_loss,
    soft_target_loss,
    soft_target_loss_topk,
    topk_targets,
)
from darkknowledge.methods import StepInputs, build_method


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(2, 40, 10, generator=g) * 4  # an ensemble of two, 40 stored examples
    student = torch.randn(8, 10, generator=g, requires_grad=True)
    labels = torch.randint(0, 10, (8,), generator=g)
    pos = torch.randint(0, 40, (8,), generator=g)
    return teacher, student, labels, pos


def test_soft_targets_uses_the_bucketed_loss_on_gathered_targets():
    teacher, student, labels, pos = _batch()
    stored = topk_targets(teacher, 3, 20.0)
    method = build_method(
        "soft_targets", {"temperature": 20, "soft_weight": 0.9, "hard_weight": 0.1}
    )
    # the loop's gathering: inputs.teacher_logits[:, pos]
    out = method(StepInputs.of(student, stored[:, pos], labels))
    soft = soft_target_loss_topk(
        student,
        stored.indices[0, pos],
        stored.log_probs[0, pos],
        stored.tail_log_prob[0, pos],
        20.0,
    )
    assert torch.allclose(out.components["soft"], soft)
    assert torch.allclose(out.loss, 0.9 * soft + 0.1 * hard_target_loss(student, labels))
    out.loss.backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


def test_full_topk_targets_match_dense_logits_in_the_method():
    teacher, student, labels, pos = _batch(1)
    method = build_method("soft_targets", {"temperature": 4, "hard_weight": 0})
    dense = method(StepInputs.of(student, teacher[:, pos], None, combine="geometric"))
    full_k = topk_targets(teacher, 10, 4.0, "geometric")[:, pos]
    full = method(StepInputs.of(student, full_k, None, combine="geometric"))
    assert torch.allclose(dense.loss, full.loss, rtol=1e-5)
    assert torch.allclose(dense.loss, soft_target_loss(student, teacher[:, pos], 4.0, "geometric"))


def test_another_temperature_or_combine_than_the_store_is_refused():
    teacher, student, labels, pos = _batch()
    stored = topk_targets(teacher, 3, 20.0)
    with pytest.raises(DKError, match=r"stored at temperature 20 but the loss uses temperature 2"):
        build_method("soft_targets", {"temperature": 2})(StepInputs.of(student, stored[:, pos]))
    with pytest.raises(DKError, match=r"set teacher.combine=arithmetic"):
        batch = StepInputs.of(student, stored[:, pos], labels, combine="geometric")
        build_method("soft_targets", {"temperature": 20})(batch)


def test_logit_matching_needs_dense_logits():
    teacher, student, _, pos = _batch()
    with pytest.raises(
        DKError,
        match=(
            r"logit_matching needs the teacher's dense logits, got top-k targets; use a dense "
            r"teacher-output store"
        ),
    ):
        top3 = topk_targets(teacher, 3, 1.0)[:, pos]
        build_method("logit_matching")(StepInputs.of(student, top3))
