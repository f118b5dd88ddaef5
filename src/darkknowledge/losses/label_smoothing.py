"""Label smoothing: a transform of the hard targets, not a loss (Szegedy et al. 2016, §7)."""

from __future__ import annotations

import math

import torch

from darkknowledge.errors import DKError
from darkknowledge.losses._checks import real_number


def check_label_smoothing(epsilon: object) -> float:
    """``epsilon`` as a float, or a :class:`DKError` unless it is a number in [0, 1)."""
    value = real_number(
        epsilon, "label_smoothing", "use a number in [0, 1), e.g. label_smoothing=0.1"
    )
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise DKError(
            f"label_smoothing must be in [0, 1), got {epsilon!r}",
            "use e.g. label_smoothing=0.1 (0 = the one-hot labels)",
        )
    return value


def smoothed_targets(labels: torch.Tensor, num_classes: int, epsilon: float) -> torch.Tensor:
    """The label distribution ``(1 − ε) · one_hot(y) + ε / C`` (batch, classes), float32.

    Every class keeps ``ε / C`` of the mass and the labelled class gets the rest; ε = 0 is the
    one-hot labels. Used by the hard term of any method (``hard_target_loss(..., label_smoothing)``)
    so that smoothing is a choice of targets, not a method of its own.

    Args:
        labels: (batch,) integer class indices in ``[0, num_classes)``.
        num_classes: C.
        epsilon: ε in [0, 1).

    Reference: Szegedy et al. 2016, "Rethinking the Inception Architecture", §7 (label-smoothing
    regularization); Müller et al. 2019 on its interplay with distillation.
    """
    eps = check_label_smoothing(epsilon)
    one_hot = torch.zeros(labels.shape[0], num_classes, device=labels.device)
    one_hot.scatter_(1, labels.long().unsqueeze(1), 1.0)
    return one_hot * (1.0 - eps) + eps / num_classes
