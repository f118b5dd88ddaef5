import math

import pytest
import torch

from darkknowledge.errors import DKError
from darkknowledge.losses import hard_target_loss

STUDENT = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
LABELS = [2, 2]


def test_matches_hand_computed_cross_entropy():
    expected = 0.0
    for z, y in zip(STUDENT, LABELS, strict=True):
        expected -= z[y] - math.log(sum(math.exp(v) for v in z))
    expected /= len(STUDENT)
    loss = hard_target_loss(torch.tensor(STUDENT), torch.tensor(LABELS))
    assert loss.shape == ()
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_half_precision_input_gives_float32_loss():
    loss = hard_target_loss(torch.tensor(STUDENT).half(), torch.tensor(LABELS))
    assert loss.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8])
def test_any_integer_label_dtype_is_accepted(dtype):
    hard_target_loss(torch.tensor(STUDENT), torch.tensor(LABELS, dtype=dtype))


@pytest.mark.parametrize("bad", [3, 7, -1])
def test_out_of_range_label_names_value_and_class_count(bad):
    with pytest.raises(DKError, match=rf"label {bad} .* 3 classes"):
        hard_target_loss(torch.tensor(STUDENT), torch.tensor([0, bad]))


def test_float_labels_are_rejected():
    with pytest.raises(DKError, match="integer class indices"):
        hard_target_loss(torch.tensor(STUDENT), torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize("labels", [[0], [0, 1, 2], [[0], [1]]])
def test_label_shape_must_match_batch(labels):
    with pytest.raises(DKError, match=r"shape \(2,\)"):
        hard_target_loss(torch.tensor(STUDENT), torch.tensor(labels))
