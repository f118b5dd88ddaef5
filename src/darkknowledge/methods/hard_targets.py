"""Training on the true labels only: the undistilled baseline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from darkknowledge.losses import hard_target_loss
from darkknowledge.methods.base import (
    MethodOutput,
    methods,
    require_labels,
    validate_hyperparameters,
)


@methods.register("hard_targets")
@dataclass(frozen=True)
class HardTargets:
    """Hard-label baseline (Hinton et al. 2015, §3: the 146-error student): cross-entropy at T = 1."""

    needs_teacher: ClassVar[bool] = False

    def __post_init__(self) -> None:
        validate_hyperparameters(self)

    def needs_labels(self) -> bool:
        return True

    def __call__(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor | None,
        labels: torch.Tensor | None,
        *,
        combine: str = "arithmetic",
    ) -> MethodOutput:
        hard = hard_target_loss(student_logits, require_labels(self, labels))
        return MethodOutput(loss=hard, components={"hard": hard.detach()})
