"""The soft-target loss of knowledge distillation (Hinton et al. 2015, §2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from darkknowledge.losses._checks import as_float, check_pair, check_temperature, compute_dtype
from darkknowledge.losses.ensemble import combine_log_probs
from darkknowledge.losses.temperature import log_softmax_with_temperature


def soft_target_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    combine: str = "arithmetic",
) -> torch.Tensor:
    """T² · KL(p_T ‖ q_T), summed over classes and averaged over examples.

    ``loss = T² · (1/B) · sum_b sum_i p_bi · (log p_bi − log q_bi)`` with
    ``q = softmax(z/T)`` (student) and ``p`` the teacher distribution at the same T (ensemble
    members combined by :func:`combine_log_probs`).

    Why T²: the gradient of the unscaled term is ``dC/dz_i = (1/T)(q_i − p_i)``, and for large T
    ``q − p`` itself shrinks as 1/T, so gradients scale as 1/T². Multiplying by T² keeps the soft
    term's contribution roughly unchanged when T is changed, and comparable to the hard term.
    KL and cross-entropy against ``p`` differ by the teacher entropy, a constant, so they give the
    same gradient; KL is used so that a perfect student scores exactly 0. The reduction is a sum
    over classes and a mean over examples, never a mean over classes too (which would divide by
    the class count).

    Args:
        student_logits: (batch, classes).
        teacher_logits: (batch, classes), or (members, batch, classes) for an ensemble.
        temperature: finite number > 0, applied to student and teacher alike.
        combine: ``"arithmetic"`` or ``"geometric"`` ensemble mean (ignored for one teacher).

    Returns:
        scalar loss, float32 (float64 when an input is float64).

    Reference: Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", §2.
    """
    t = check_temperature(temperature)
    student = as_float(student_logits, "student_logits")
    teacher = as_float(teacher_logits, "teacher_logits")
    check_pair(student, teacher)
    dtype = compute_dtype(student, teacher)
    student_log_probs = log_softmax_with_temperature(student.to(dtype), t)
    teacher_log_probs = combine_log_probs(teacher.to(dtype), t, combine)
    kl = F.kl_div(student_log_probs, teacher_log_probs, reduction="sum", log_target=True)
    return (t * t) * kl / student.shape[0]
