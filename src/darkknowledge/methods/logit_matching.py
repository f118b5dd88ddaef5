"""Matching the teacher's logits directly: model compression, the high-temperature limit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from darkknowledge.errors import DKError
from darkknowledge.losses import TopKTargets, logit_matching_loss
from darkknowledge.methods.base import (
    MethodOutput,
    methods,
    require_teacher,
    validate_hyperparameters,
    with_hard_term,
)


@methods.register("logit_matching")
@dataclass(frozen=True)
class LogitMatching:
    """Logit matching (Caruana et al. 2006 / Bucila et al. 2006 model compression; Hinton et al. 2015, §2.1).

    ``loss = logit_weight · (1/B) sum_b sum_i ½((z − z̄) − (v − v̄))²  + hard_weight · CE(labels, q_1)``:
    squared error between per-example zero-meaned student and teacher logits (the T → ∞ limit of
    ``N ·`` the soft-target loss, see :func:`~darkknowledge.losses.logit_matching_loss`), plus an
    optional cross-entropy with the true labels. An ensemble teacher is matched through the mean of
    its members' logits.

    Attributes:
        logit_weight: weight of the logit-matching term.
        hard_weight: weight of the hard term; 0 (the default) needs no labels.
    """

    needs_teacher: ClassVar[bool] = True

    logit_weight: float = 1.0
    hard_weight: float = 0.0

    def __post_init__(self) -> None:
        validate_hyperparameters(self)

    def needs_labels(self) -> bool:
        return self.hard_weight > 0

    def __call__(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor | None,
        labels: torch.Tensor | None,
        *,
        combine: str = "arithmetic",
    ) -> MethodOutput:
        teacher = require_teacher(self, teacher_logits)
        if isinstance(teacher, TopKTargets):
            raise DKError("logit_matching needs the teacher's dense logits, got top-k targets", "use a dense teacher-output store (teacher.store_topk: null)")
        logit = logit_matching_loss(student_logits, teacher, combine)
        return with_hard_term(self, "logit", logit, self.logit_weight, student_logits, labels)
