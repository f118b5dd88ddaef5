"""Matching the teacher's logits directly: model compression, the high-temperature limit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from darkknowledge.losses import logit_matching_loss
from darkknowledge.methods.base import Method, MethodOutput, StepInputs, methods, with_hard_term


@methods.register("logit_matching")
@dataclass(frozen=True)
class LogitMatching(Method):
    """Logit matching (Caruana et al. 2006 / Bucila et al. 2006; Hinton et al. 2015, §2.1).

    Model compression by
    ``loss = logit_weight · (1/B) sum_b sum_i ½((z − z̄) − (v − v̄))²
    + hard_weight · CE(labels, q_1)``:
    squared error between per-example zero-meaned student and teacher logits (the T → ∞ limit of
    ``N ·`` the soft-target loss, see :func:`~darkknowledge.losses.logit_matching_loss`), plus an
    optional cross-entropy with the true labels. An ensemble teacher is matched through the mean of
    its members' logits.

    Attributes:
        logit_weight: weight of the logit-matching term.
        hard_weight: weight of the hard term; 0 (the default) needs no labels.
    """

    needs_teacher: ClassVar[bool] = True
    needs_dense_teacher: ClassVar[bool] = True

    logit_weight: float = 1.0
    hard_weight: float = 0.0

    def __call__(self, batch: StepInputs) -> MethodOutput:
        logit = logit_matching_loss(batch.student_logits, batch.teacher_logits(self), batch.combine)
        return with_hard_term(self, "logit", logit, self.logit_weight, batch)
