import pytest
import torch

from darkknowledge.errors import DKError
from darkknowledge.losses import hard_target_loss, soft_target_loss
from darkknowledge.methods import SoftTargets, StepInputs, build_method, method_config

STUDENT = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
TEACHER = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, -2.0]])
LABELS = torch.tensor([0, 2])


def test_defaults_follow_the_paper():
    method = SoftTargets()
    assert (method.temperature, method.soft_weight, method.hard_weight) == (20.0, 1.0, 0.1)
    assert method.needs_teacher and method.needs_labels()
    assert SoftTargets.__doc__.startswith("Soft-target distillation (Hinton et al. 2015, §2).")


def test_loss_is_the_weighted_sum_of_unweighted_components():
    method = SoftTargets(temperature=4, soft_weight=0.7, hard_weight=0.3)
    out = method(StepInputs.of(STUDENT, TEACHER, LABELS))
    soft = soft_target_loss(STUDENT, TEACHER, 4)
    hard = hard_target_loss(STUDENT, LABELS)
    torch.testing.assert_close(out.components["soft"], soft)
    torch.testing.assert_close(out.components["hard"], hard)
    torch.testing.assert_close(out.loss, 0.7 * soft + 0.3 * hard)


def test_zero_hard_weight_needs_no_labels_and_keeps_t_squared():
    method = SoftTargets(temperature=20, hard_weight=0)
    assert not method.needs_labels()
    out = method(StepInputs.of(STUDENT, TEACHER, None))
    assert set(out.components) == {"soft"}
    # torchdistill's pitfall: T² dropped when the hard weight is 0.
    torch.testing.assert_close(out.loss, soft_target_loss(STUDENT, TEACHER, 20))


def test_missing_labels_message_says_how_to_fix():
    with pytest.raises(DKError, match=r"hard_weight=0\.1 needs labels.*set hard_weight=0"):
        SoftTargets()(StepInputs.of(STUDENT, TEACHER, None))


def test_combine_reaches_the_loss():
    members = torch.stack([TEACHER, -TEACHER])
    method = SoftTargets(temperature=2, hard_weight=0)
    for combine in ("arithmetic", "geometric"):
        torch.testing.assert_close(
            method(StepInputs.of(STUDENT, members, None, combine=combine)).loss,
            soft_target_loss(STUDENT, members, 2, combine=combine),
        )


def test_teacher_logits_that_require_grad_are_treated_as_fixed_targets():
    teacher = TEACHER.clone().requires_grad_(True)
    student = STUDENT.clone().requires_grad_(True)
    SoftTargets(temperature=4)(StepInputs.of(student, teacher, LABELS)).loss.backward()
    assert student.grad is not None
    assert teacher.grad is None


def test_config_is_flat_and_named():
    assert method_config(SoftTargets(temperature=4)) == {
        "name": "soft_targets",
        "temperature": 4.0,
        "soft_weight": 1.0,
        "hard_weight": 0.1,
    }


def test_typo_in_parameter_gets_a_suggestion():
    with pytest.raises(DKError, match="did you mean 'temperature'"):
        build_method("soft_targets", {"temprature": 4})


def test_temperature_must_be_positive():
    with pytest.raises(DKError, match="temperature must be > 0"):
        SoftTargets(temperature=-2)
