"""Knowledge distillation with soft targets at a high temperature."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from darkknowledge.losses import TopKTargets, soft_target_loss, soft_target_loss_topk
from darkknowledge.methods.base import Method, MethodOutput, StepInputs, methods, with_hard_term


def soft_term(method: Method, batch: StepInputs, temperature: float) -> torch.Tensor:
    """``T²·KL(p_T ‖ q_T)`` against the batch's teacher targets, dense or top-k (the soft term of
    every method that distils soft targets)."""
    teacher = batch.teacher(method)
    if isinstance(teacher, TopKTargets):
        indices, log_probs, tail = teacher.at(temperature, batch.combine)
        return soft_target_loss_topk(batch.student_logits, indices, log_probs, tail, temperature)
    return soft_target_loss(batch.student_logits, teacher.logits, temperature, batch.combine)


@methods.register("soft_targets")
@dataclass(frozen=True)
class SoftTargets(Method):
    """Soft-target distillation (Hinton et al. 2015, §2).

    ``loss = soft_weight · T²·KL(p_T ‖ q_T) + hard_weight · CE(labels, q_1)``: the soft term (T²
    inside
    :func:`~darkknowledge.losses.soft_target_loss`) against the teacher at temperature T, plus a
    usually much smaller cross-entropy with the true labels at T = 1 on the same logits. With
    ``hard_weight = 0`` the transfer set may be unlabelled.

    The teacher may also come as :class:`~darkknowledge.losses.TopKTargets` (a top-k store): the
    soft term is then :func:`~darkknowledge.losses.soft_target_loss_topk`, and a temperature other
    than the store's is a :class:`~darkknowledge.errors.DKError`.

    Attributes:
        temperature: T, used for student and teacher in the soft term only (paper MNIST: 20).
        soft_weight: weight of the soft term.
        hard_weight: weight of the hard term; 0 disables it and the need for labels.
    """

    needs_teacher: ClassVar[bool] = True

    temperature: float = 20.0
    soft_weight: float = 1.0
    hard_weight: float = 0.1

    def __call__(self, batch: StepInputs) -> MethodOutput:
        soft = soft_term(self, batch, self.temperature)
        return with_hard_term(self, "soft", soft, self.soft_weight, batch)
