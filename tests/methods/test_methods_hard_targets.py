import pytest
import torch
import torch.nn.functional as F

from darkknowledge.errors import DKError
from darkknowledge.methods import HardTargets, StepInputs, build_method, method_config

STUDENT = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
LABELS = torch.tensor([0, 2])


def test_is_cross_entropy_on_labels_without_a_teacher():
    method = HardTargets()
    assert not method.needs_teacher and method.needs_labels()
    out = method(StepInputs.of(STUDENT, None, LABELS))
    expected = F.cross_entropy(STUDENT, LABELS)
    torch.testing.assert_close(out.loss, expected)
    assert set(out.components) == {"hard"}


def test_has_no_parameters():
    assert method_config(HardTargets()) == {"name": "hard_targets"}
    with pytest.raises(DKError, match="no parameter 'temperature'"):
        build_method("hard_targets", {"temperature": 4})


def test_missing_labels_is_a_user_error():
    with pytest.raises(DKError, match="needs labels"):
        HardTargets()(StepInputs.of(STUDENT))


def test_label_smoothing_smooths_the_targets():
    out = HardTargets()(StepInputs.of(STUDENT, None, LABELS, label_smoothing=0.2))
    torch.testing.assert_close(out.loss, F.cross_entropy(STUDENT, LABELS, label_smoothing=0.2))
