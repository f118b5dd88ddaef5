"""Ensemble soft targets: members combined at the loss temperature (Hinton et al. 2015, §2)."""

from __future__ import annotations

import math

import torch

from darkknowledge.losses._checks import as_float, check_combine, check_teacher_shape
from darkknowledge.losses.temperature import log_softmax_with_temperature


def combine_log_probs(
    teacher_logits: torch.Tensor, temperature: float = 1.0, combine: str = "arithmetic"
) -> torch.Tensor:
    """Log of the teacher target distribution at temperature T.

    For M members with logits ``z_m``:

    - ``"arithmetic"``: ``p = (1/M) sum_m softmax(z_m/T)``, computed as
      ``logsumexp_m log_softmax(z_m/T) - log M``;
    - ``"geometric"``: the renormalized geometric mean ``p ∝ prod_m softmax(z_m/T)^(1/M)``,
      which equals ``softmax(mean_m z_m / T)``.

    Args:
        teacher_logits: (batch, classes) for one teacher, passed through as
            ``log_softmax(z/T)``; or (members, batch, classes) for an ensemble.
        temperature: finite number > 0.
        combine: ``"arithmetic"`` or ``"geometric"``.

    Returns:
        log-probabilities (batch, classes), float32 (float64 for float64 input).
    """
    combine = check_combine(combine)
    logits = as_float(teacher_logits, "teacher_logits")
    check_teacher_shape(logits)
    if logits.dim() == 2:
        return log_softmax_with_temperature(logits, temperature)
    if combine == "geometric":
        return log_softmax_with_temperature(logits.mean(dim=0), temperature)
    members = logits.shape[0]
    member_log_probs = log_softmax_with_temperature(logits, temperature)
    return torch.logsumexp(member_log_probs, dim=0) - math.log(members)


def combine_probs(
    teacher_logits: torch.Tensor, temperature: float = 1.0, combine: str = "arithmetic"
) -> torch.Tensor:
    """Teacher target probabilities (batch, classes): ``exp`` of :func:`combine_log_probs`."""
    return combine_log_probs(teacher_logits, temperature, combine).exp()
