import pytest
import torch

from darkknowledge.errors import DKError
from darkknowledge.losses import hard_target_loss, logit_matching_loss
from darkknowledge.methods import LogitMatching, StepInputs

STUDENT = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
TEACHER = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, -2.0]])
LABELS = torch.tensor([0, 2])


def test_default_is_pure_logit_matching_without_labels():
    method = LogitMatching()
    assert method.needs_teacher and not method.needs_labels()
    out = method(StepInputs.of(STUDENT, TEACHER, None))
    assert set(out.components) == {"logit"}
    torch.testing.assert_close(out.loss, logit_matching_loss(STUDENT, TEACHER))


def test_weighted_sum_with_hard_term():
    method = LogitMatching(logit_weight=0.5, hard_weight=2)
    out = method(StepInputs.of(STUDENT, TEACHER, LABELS))
    logit = logit_matching_loss(STUDENT, TEACHER)
    hard = hard_target_loss(STUDENT, LABELS)
    torch.testing.assert_close(out.components["logit"], logit)
    torch.testing.assert_close(out.components["hard"], hard)
    torch.testing.assert_close(out.loss, 0.5 * logit + 2 * hard)
    with pytest.raises(DKError, match=r"hard_weight=2 needs labels"):
        method(StepInputs.of(STUDENT, TEACHER, None))


def test_ensemble_teacher_matches_mean_logits():
    members = torch.stack([TEACHER, TEACHER * 3])
    out = LogitMatching()(StepInputs.of(STUDENT, members, None))
    torch.testing.assert_close(out.loss, logit_matching_loss(STUDENT, TEACHER * 2))
