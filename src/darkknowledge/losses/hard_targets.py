"""The ordinary cross-entropy with the true labels, at T = 1 (Hinton et al. 2015, §2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from darkknowledge.errors import DKError
from darkknowledge.losses._checks import as_float
from darkknowledge.losses.label_smoothing import smoothed_targets


def hard_target_loss(
    student_logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Cross-entropy ``−(1/B) sum_b log softmax(z_b)[y_b]`` at temperature 1.

    The hard term uses the same logits as the soft term but never the temperature. With
    ``label_smoothing`` ε > 0 the targets are :func:`smoothed_targets` instead of the one-hot
    labels: ``−(1/B) sum_b sum_i t_bi log softmax(z_b)_i`` with ``t = (1 − ε)·one_hot + ε/C``.

    Args:
        student_logits: (batch, classes).
        labels: (batch,) integer class indices in ``[0, classes)``.
        label_smoothing: ε in [0, 1); 0 (the default) is the plain cross-entropy.

    Returns:
        scalar loss, float32 (float64 for float64 logits).

    Reference: Hinton, Vinyals & Dean 2015, §2.
    """
    student = as_float(student_logits, "student_logits")
    if student.dim() != 2 or student.shape[0] == 0:
        raise DKError(
            f"student_logits must be a non-empty (batch, classes), got shape {tuple(student.shape)}"
        )
    _check_labels(labels, student.shape[0], student.shape[1])
    labels = labels.to(device=student.device, dtype=torch.long)
    if not label_smoothing:
        return F.cross_entropy(student, labels)
    targets = smoothed_targets(labels, student.shape[1], label_smoothing).to(student.dtype)
    return -(targets * torch.log_softmax(student, dim=-1)).sum() / student.shape[0]


def _check_labels(labels: torch.Tensor, batch: int, classes: int) -> None:
    if not isinstance(labels, torch.Tensor):
        raise DKError(
            f"labels must be a torch.Tensor of class indices, got {type(labels).__name__}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise DKError(
            f"labels must be integer class indices, got dtype {labels.dtype}",
            "pass labels as a LongTensor of class indices, not one-hot or probabilities",
        )
    if tuple(labels.shape) != (batch,):
        raise DKError(
            f"labels must have shape ({batch},) to match student_logits ({batch}, {classes}), "
            f"got {tuple(labels.shape)}"
        )
    if labels.device.type != "cpu" or torch.compiler.is_compiling():
        # On an accelerator (or inside a compiled step) a range check would cost a host sync
        # every step; in-memory datasets check their labels once when built, and an
        # out-of-range label still fails inside cross_entropy.
        return
    # On the CPU the check is free: a clear message instead of an index error.
    low, high = int(labels.min()), int(labels.max())
    bad = low if low < 0 else high if high >= classes else None
    if bad is not None:
        raise DKError(
            f"label {bad} is out of range for a student with {classes} classes "
            f"(labels must be in [0, {classes}))",
            "check that the dataset's class count matches the model's output size",
        )
