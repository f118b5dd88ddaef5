"""Training on the true labels only: the undistilled baseline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from darkknowledge.methods.base import Method, MethodOutput, StepInputs, methods


@methods.register("hard_targets")
@dataclass(frozen=True)
class HardTargets(Method):
    """Hard-label baseline (Hinton et al. 2015, §3: the 146-error student): cross-entropy at T = 1.

    With ``label_smoothing`` set for the run, the targets are smoothed labels (Szegedy et al.
    2016): the label-smoothing baseline, with no teacher.
    """

    needs_teacher: ClassVar[bool] = False

    def needs_labels(self) -> bool:
        return True

    def __call__(self, batch: StepInputs) -> MethodOutput:
        hard = batch.hard_loss(self)
        return MethodOutput(loss=hard, components={"hard": hard.detach()})
