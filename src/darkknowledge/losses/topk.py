"""Top-k soft targets with a tail bucket: compressed teacher outputs for many classes.

A teacher distribution ``p`` at temperature T over C classes is kept as its k most probable
classes (indices and log-probabilities ``log p_i``) plus one *tail* bucket, the log of the mass
of the other C − k classes, ``log sum_{i ∉ top-k} p_i`` (−inf when k = C). Ensemble members are
combined first, at T, so the stored buckets are the combined teacher distribution.

The loss compares student and teacher on these k + 1 buckets. Merging classes into one bucket
can only lose information, so (data-processing inequality) the bucketed KL is at most the full
KL, with equality when k = C or when the student's distribution over the tail classes is
proportional to the teacher's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from darkknowledge.errors import DKError
from darkknowledge.losses._checks import as_float, check_combine, check_temperature, compute_dtype
from darkknowledge.losses.ensemble import combine_log_probs
from darkknowledge.losses.temperature import log_softmax_with_temperature


@dataclass(frozen=True, eq=False)
class TopKTargets:
    """Top-k teacher log-probabilities at one temperature, plus the tail bucket.

    The leading dimension is always 1 (one combined distribution, whatever the number of
    teacher members), so the tensor-style gathering of stored teacher logits,
    ``targets[:, positions]``, works unchanged and returns the targets of those examples.

    Attributes:
        indices: (1, N, k) int64 class indices, most probable first.
        log_probs: (1, N, k) float, ``log p_i`` of those classes at ``temperature``.
        tail_log_prob: (1, N) float, ``log`` of the mass outside the top k (−inf if k = C).
        temperature: the T at which ``p`` was computed; a loss at another T is refused.
        combine: how ensemble members were combined ("arithmetic"/"geometric"); None for one
        teacher.
        members: number of teacher members combined.
    """

    indices: torch.Tensor
    log_probs: torch.Tensor
    tail_log_prob: torch.Tensor
    temperature: float
    combine: str | None = None
    members: int = 1

    def __post_init__(self) -> None:
        idx, lp, tail = self.indices, self.log_probs, self.tail_log_prob
        if not all(isinstance(t, torch.Tensor) for t in (idx, lp, tail)):
            raise DKError("TopKTargets needs three tensors: indices, log_probs, tail_log_prob")
        if (
            idx.dim() != 3
            or idx.shape[0] != 1
            or idx.is_floating_point()
            or idx.dtype == torch.bool
        ):
            raise DKError(
                f"TopKTargets indices must be integer (1, N, k), got {idx.dtype} {tuple(idx.shape)}"
            )
        if lp.shape != idx.shape or not lp.is_floating_point():
            raise DKError(
                f"TopKTargets log_probs must be float {tuple(idx.shape)} like the indices, got "
                f"{lp.dtype} {tuple(lp.shape)}"
            )
        if tuple(tail.shape) != tuple(idx.shape[:2]) or not tail.is_floating_point():
            raise DKError(
                f"TopKTargets tail_log_prob must be float {tuple(idx.shape[:2])}, got {tail.dtype} "
                f"{tuple(tail.shape)}"
            )
        object.__setattr__(self, "temperature", check_temperature(self.temperature))

    @property
    def shape(self) -> torch.Size:
        """(1, N, k), the shape of ``indices``."""
        return self.indices.shape

    @property
    def k(self) -> int:
        return self.indices.shape[-1]

    @property
    def device(self) -> torch.device:
        return self.indices.device

    def __len__(self) -> int:
        return self.indices.shape[0]

    def __getitem__(self, key: Any) -> TopKTargets:
        """Index the first two dimensions like a tensor, e.g. ``targets[:, positions]``."""
        parts = key if isinstance(key, tuple) else (key,)
        if len(parts) > 2 or any(p is Ellipsis or p is None for p in parts):
            raise DKError(
                f"TopKTargets can be indexed on its first two dimensions only, got {key!r}",
                "use targets[:, positions]",
            )
        return TopKTargets(
            self.indices[key],
            self.log_probs[key],
            self.tail_log_prob[key],
            self.temperature,
            self.combine,
            self.members,
        )

    def to(self, device: torch.device | str) -> TopKTargets:
        return TopKTargets(
            self.indices.to(device),
            self.log_probs.to(device),
            self.tail_log_prob.to(device),
            self.temperature,
            self.combine,
            self.members,
        )

    def detach(self) -> TopKTargets:
        """The targets themselves: stored outputs never carry gradients (mirrors
        ``Tensor.detach``).
        """
        return self

    def at(
        self, temperature: float, combine: str = "arithmetic"
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(indices (B, k), log_probs (B, k), tail_log_prob (B,))`` for a loss at ``temperature``.

        A loss at another temperature than the one the targets were made at, or with another
        ensemble combine, is a :class:`DKError`: top-k targets cannot be re-tempered.
        """
        t = check_temperature(temperature)
        combine = check_combine(combine)
        if t != self.temperature:
            raise DKError(
                f"top-k teacher outputs were stored at temperature {self.temperature:g} but the "
                f"loss uses temperature {t:g}",
                f"set the method's temperature to {self.temperature:g}, or rebuild the store at "
                f"{t:g} (a dense store serves every temperature)",
            )
        if self.members > 1 and self.combine is not None and combine != self.combine:
            raise DKError(
                f"top-k teacher outputs combine {self.members} members by the {self.combine} mean "
                f"but the run asks for {combine}",
                f"set teacher.combine={self.combine}, or rebuild the store with combine {combine}",
            )
        return self.indices[0], self.log_probs[0], self.tail_log_prob[0]


def topk_targets(
    teacher_logits: torch.Tensor, k: int, temperature: float, combine: str = "arithmetic"
) -> TopKTargets:
    """Compress teacher logits into :class:`TopKTargets` at ``temperature``.

    ``log p = combine_log_probs(teacher_logits, T, combine)``; the k largest ``log p_i`` (ties
    broken by ``torch.topk``) and ``log sum_{rest} p_i`` computed as a logsumexp over the other
    classes (exact, no ``1 − sum`` cancellation).

    Args:
        teacher_logits: (N, classes) for one teacher or (members, N, classes) for an ensemble.
        k: 1 ≤ k ≤ classes.
        temperature: finite number > 0.
        combine: ``"arithmetic"`` or ``"geometric"`` (ensembles only).

    Returns:
        TopKTargets with float32 (float64 for float64 input) log-probabilities.
    """
    logits = as_float(teacher_logits, "teacher_logits")
    members = 1 if logits.dim() == 2 else logits.shape[0]
    log_p = combine_log_probs(logits, temperature, combine)
    classes = log_p.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= classes:
        raise DKError(
            f"top-k needs 1 ≤ k ≤ {classes} (the class count), got k={k!r}",
            f"use k in [1, {classes}]",
        )
    values, indices = log_p.topk(k, dim=-1)
    tail = torch.logsumexp(log_p.scatter(-1, indices, -math.inf), dim=-1)
    combined = combine if members > 1 else None
    return TopKTargets(
        indices[None], values[None], tail[None], float(temperature), combined, members
    )


def soft_target_loss_topk(
    student_logits: torch.Tensor,
    topk_indices: torch.Tensor,
    topk_log_probs: torch.Tensor,
    tail_log_prob: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """T² · KL over the k + 1 buckets (the teacher's top-k classes and one tail), batch mean.

    ``loss = T² · (1/B) · sum_b [ sum_{i ∈ top-k} p_bi (log p_bi − log q_bi) + p_b,tail (log
    p_b,tail − log q_b,tail) ]``

    with ``q = softmax(z/T)`` the student distribution, ``q_tail = 1 − sum_{top-k} q`` (computed
    as a logsumexp over the student's non-top-k classes) and ``0 · log 0 = 0`` (an empty tail,
    k = C, adds nothing). With k = C this is exactly :func:`soft_target_loss` (up to summation
    order); with k < C it is at most that (data-processing inequality).

    Args:
        student_logits: (batch, classes).
        topk_indices: (batch, k) integer class indices, distinct within a row, in [0, classes).
        topk_log_probs: (batch, k) teacher log-probabilities at ``temperature``.
        tail_log_prob: (batch,) log of the teacher mass outside the top k (−inf when empty).
        temperature: finite number > 0, the temperature the teacher buckets were made at.

    Returns:
        scalar loss, float32 (float64 when an input is float64).

    Reference: Hinton, Vinyals & Dean 2015, §2; top-k compression as in LLM distillation toolkits.
    """
    t = check_temperature(temperature)
    student = as_float(student_logits, "student_logits")
    teacher = as_float(topk_log_probs, "topk_log_probs")
    tail = as_float(tail_log_prob, "tail_log_prob")
    if student.dim() != 2 or student.shape[0] == 0:
        raise DKError(
            f"student_logits must be a non-empty (batch, classes), got shape {tuple(student.shape)}"
        )
    batch, classes = student.shape
    if (
        not isinstance(topk_indices, torch.Tensor)
        or topk_indices.is_floating_point()
        or topk_indices.dtype == torch.bool
    ):
        raise DKError("topk_indices must be an integer tensor of class indices")
    if (
        topk_indices.dim() != 2
        or topk_indices.shape[0] != batch
        or not 1 <= topk_indices.shape[1] <= classes
    ):
        raise DKError(
            f"topk_indices must be (batch, k) with batch {batch} and 1 ≤ k ≤ {classes}, got shape "
            f"{tuple(topk_indices.shape)}",
            "compute the teacher's top-k on the same examples and label set as the student",
        )
    if teacher.shape != topk_indices.shape or tuple(tail.shape) != (batch,):
        raise DKError(
            f"topk_log_probs must be {tuple(topk_indices.shape)} and tail_log_prob ({batch},), got "
            f"{tuple(teacher.shape)} and {tuple(tail.shape)}"
        )
    dtype = compute_dtype(student, teacher, tail)
    student_log_probs = log_softmax_with_temperature(student.to(dtype), t)
    indices = topk_indices.to(device=student.device, dtype=torch.long)
    student_top = student_log_probs.gather(1, indices)
    # Scattering −inf over the top-k leaves the tail classes; the gradient of scatter is zero at
    # the scattered positions, so an empty tail (all −inf) sends no NaN back.
    student_tail = torch.logsumexp(student_log_probs.scatter(1, indices, -math.inf), dim=1)
    log_p = torch.cat([teacher.to(dtype), tail.to(dtype)[:, None]], dim=1)
    log_q = torch.cat([student_top, student_tail[:, None]], dim=1)
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros((), dtype=dtype, device=p.device))
    return (t * t) * terms.sum() / batch
