"""Softmax at temperature T (Hinton et al. 2015, §2): ``q_i = exp(z_i/T) / sum_j exp(z_j/T)``."""

from __future__ import annotations

import torch

from darkknowledge.losses._checks import as_float, check_temperature


def log_softmax_with_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Log of the softmax of ``logits / temperature`` over the last (class) dimension.

    Args:
        logits: (..., classes); half/bf16 inputs are upcast to float32.
        temperature: finite number > 0; higher T gives a softer distribution.

    Returns:
        log-probabilities, same shape as ``logits``, float32 (float64 if the input is float64).
    """
    t = check_temperature(temperature)
    return torch.log_softmax(as_float(logits, "logits") / t, dim=-1)


def softmax_with_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Softmax of ``logits / temperature`` over the last (class) dimension.

    Args:
        logits: (..., classes); half/bf16 inputs are upcast to float32.
        temperature: finite number > 0.

    Returns:
        probabilities, same shape as ``logits``, summing to 1 over the last dimension.
    """
    t = check_temperature(temperature)
    return torch.softmax(as_float(logits, "logits") / t, dim=-1)
