"""Decoupled knowledge distillation: the soft-target KL split at the true class (DKD)."""

from __future__ import annotations

import torch

from darkknowledge.losses._checks import as_float, check_pair, check_temperature, compute_dtype
from darkknowledge.losses.ensemble import combine_log_probs
from darkknowledge.losses.hard_targets import _check_labels
from darkknowledge.losses.temperature import log_softmax_with_temperature


def _split_at_labels(log_p: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(log p_t, log(1 − p_t), log p̂)`` of (batch, classes) log-probabilities: the labelled
    class, the mass of the others, and the others renormalized (batch, classes − 1), in order."""
    batch, classes = log_p.shape
    is_target = torch.zeros_like(log_p, dtype=torch.bool).scatter_(1, labels[:, None], True)
    log_target = log_p.gather(1, labels[:, None]).squeeze(1)
    log_others = log_p[~is_target].view(batch, classes - 1)  # row order kept: exact, no masking
    log_rest = torch.logsumexp(log_others, dim=1)
    return log_target, log_rest, log_others - log_rest[:, None]


def _kl_terms(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``p · (log p − log q)`` elementwise, with ``0 · log 0 = 0``."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros((), dtype=p.dtype, device=p.device))


def decoupled_kd_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    combine: str = "arithmetic",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(TCKD, NCKD)``, each ``T² ·`` a KL divergence, summed over classes, batch mean.

    With ``p`` the teacher's and ``q`` the student's distribution at temperature T and ``t`` the
    labelled class:

    - TCKD = ``T² · KL([p_t, 1 − p_t] ‖ [q_t, 1 − q_t])``, the binary target-vs-rest KL;
    - NCKD = ``T² · KL(p̂ ‖ q̂)`` over the other classes, ``p̂_i = p_i / (1 − p_t)``.

    The soft-target loss is exactly ``TCKD + (1 − p_t) · NCKD`` (Zhao et al., eq. 5); DKD weights
    the two terms freely instead. Ensemble members are combined at T first
    (:func:`combine_log_probs`). Everything is computed in log space (the rest mass as a
    logsumexp), so a confident teacher (``p_t`` → 1) gives no NaN.

    Args:
        student_logits: (batch, classes), classes ≥ 2.
        teacher_logits: (batch, classes), or (members, batch, classes) for an ensemble.
        labels: (batch,) integer class indices in ``[0, classes)``.
        temperature: finite number > 0, for student and teacher alike.
        combine: ``"arithmetic"`` or ``"geometric"`` ensemble mean.

    Returns:
        two scalars, float32 (float64 when an input is float64).

    Reference: Zhao, Cui, Song, Qiu & Liang 2022, "Decoupled Knowledge Distillation", §3, eq. 7.
    """
    t = check_temperature(temperature)
    student = as_float(student_logits, "student_logits")
    teacher = as_float(teacher_logits, "teacher_logits")
    check_pair(student, teacher)
    _check_labels(labels, student.shape[0], student.shape[1])
    labels = labels.to(device=student.device, dtype=torch.long)
    dtype = compute_dtype(student, teacher)
    s_target, s_rest, s_others = _split_at_labels(
        log_softmax_with_temperature(student.to(dtype), t), labels
    )
    p_target, p_rest, p_others = _split_at_labels(
        combine_log_probs(teacher.to(dtype), t, combine), labels
    )
    batch = student.shape[0]
    tckd = (_kl_terms(p_target, s_target) + _kl_terms(p_rest, s_rest)).sum() / batch
    nckd = _kl_terms(p_others, s_others).sum() / batch
    return (t * t) * tckd, (t * t) * nckd
