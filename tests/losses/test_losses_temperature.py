import math

import pytest
import torch

from darkknowledge.errors import DKError
from darkknowledge.losses import log_softmax_with_temperature, softmax_with_temperature

LOGITS = [2.0, -1.0, 0.5]


def py_softmax(values, temperature):
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


@pytest.mark.parametrize("temperature", [1, 4, 20])
def test_matches_hand_computed_softmax(temperature):
    probs = softmax_with_temperature(torch.tensor([LOGITS]), temperature)
    expected = torch.tensor([py_softmax(LOGITS, temperature)])
    torch.testing.assert_close(probs, expected)
    log_probs = log_softmax_with_temperature(torch.tensor([LOGITS]), temperature)
    torch.testing.assert_close(log_probs, expected.log())


def test_higher_temperature_is_softer():
    logits = torch.tensor([LOGITS])
    peaks = [softmax_with_temperature(logits, t).max().item() for t in (1, 4, 20)]
    assert peaks[0] > peaks[1] > peaks[2] > 1 / 3


def test_softmax_is_over_the_last_dimension():
    logits = torch.randn(2, 3, 5)
    probs = softmax_with_temperature(logits, 3.0)
    torch.testing.assert_close(probs.sum(dim=-1), torch.ones(2, 3))
    torch.testing.assert_close(probs, torch.softmax(logits / 3.0, dim=-1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_upcast(dtype):
    probs = softmax_with_temperature(torch.tensor([LOGITS], dtype=dtype), 2.0)
    assert probs.dtype == torch.float32


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "20", True, None])
def test_bad_temperature_is_rejected(bad):
    with pytest.raises(DKError, match="temperature"):
        softmax_with_temperature(torch.tensor([LOGITS]), bad)


def test_integer_logits_are_rejected():
    with pytest.raises(DKError, match="floating-point logits"):
        softmax_with_temperature(torch.tensor([[1, 2, 3]]), 1.0)
