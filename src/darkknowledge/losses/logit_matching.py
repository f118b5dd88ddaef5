"""Logit matching: model compression (Bucila et al. 2006; Caruana et al.), the high-T limit of
soft targets (Hinton et al. 2015, §2.1)."""

from __future__ import annotations

import torch

from darkknowledge.losses._checks import as_float, check_combine, check_pair, compute_dtype


def logit_matching_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    combine: str = "arithmetic",
) -> torch.Tensor:
    """Squared error between per-example zero-meaned logits, summed over classes.

    ``loss = (1/B) · sum_b sum_i ½ · ((z_bi − z̄_b) − (v_bi − v̄_b))²``

    where ``z̄_b`` and ``v̄_b`` are the means over the N classes of example b. Zero-meaning makes
    the loss invariant to a per-example shift of the logits, like the softmax.

    Scaling: for each example, ``∂loss/∂z_i = (d_i − mean_j d_j) / B = d_i / B`` with
    ``d = (z − z̄) − (v − v̄)``; for zero-meaned logits that is exactly ``(z_i − v_i) / B``. Since the
    unscaled soft-target gradient is ``(1/T)(q_i − p_i) ≈ (z_i − v_i) / (N T²)`` for T large
    relative to the logits (§2.1), this loss is the T → ∞ limit of ``N · T²`` times the unscaled
    soft-target loss, i.e. of ``N · soft_target_loss`` (which already holds the T²), in value and in
    gradient.

    An ensemble teacher is matched through the mean of its members' logits. Both ensemble
    combines reduce to that mean in the high-T limit, so ``combine`` is checked but does not change
    the result.

    Args:
        student_logits: (batch, classes).
        teacher_logits: (batch, classes), or (members, batch, classes) for an ensemble.
        combine: ``"arithmetic"`` or ``"geometric"``; same result (see above).

    Returns:
        scalar loss, float32 (float64 when an input is float64).

    Reference: Hinton, Vinyals & Dean 2015, §2.1; Bucila, Caruana & Niculescu-Mizil 2006.
    """
    check_combine(combine)
    student = as_float(student_logits, "student_logits")
    teacher = as_float(teacher_logits, "teacher_logits")
    check_pair(student, teacher)
    dtype = compute_dtype(student, teacher)
    student = student.to(dtype)
    teacher = teacher.to(dtype)
    if teacher.dim() == 3:
        teacher = teacher.mean(dim=0)
    diff = (student - student.mean(dim=-1, keepdim=True)) - (
        teacher - teacher.mean(dim=-1, keepdim=True)
    )
    return 0.5 * diff.square().sum() / student.shape[0]
