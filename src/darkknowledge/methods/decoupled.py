"""Decoupled knowledge distillation: target-class and non-target-class terms, weighted apart."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from darkknowledge.losses import decoupled_kd_terms
from darkknowledge.methods.base import Method, MethodOutput, StepInputs, methods


@methods.register("decoupled")
@dataclass(frozen=True)
class Decoupled(Method):
    """Decoupled knowledge distillation, DKD (Zhao et al. 2022, §3.2, eq. 7).

    ``loss = hard_weight · CE(labels, q_1) + w(epoch) · (target_weight · TCKD + nontarget_weight
    · NCKD)``. The soft-target KL equals ``TCKD + (1 − p_t) · NCKD``
    (:func:`~darkknowledge.losses.decoupled_kd_terms`): classic distillation lets a confident
    teacher (``p_t`` near 1) mute the non-target term, the "dark knowledge"; DKD gives it its own
    weight (the paper's α and β, here ``target_weight`` and ``nontarget_weight``). The distillation
    terms ramp in linearly over the first ``warmup_epochs`` epochs, ``w = min((epoch + 1) /
    warmup_epochs, 1)`` (epochs counted from 0; the paper: 20 of 240). Needs labels (the split is
    at the true class) and the teacher's dense logits.

    Attributes:
        temperature: T of both terms (the paper's CIFAR-100 runs: 4).
        target_weight: α, the weight of TCKD (paper: 1).
        nontarget_weight: β, the weight of NCKD (paper: 8 on CIFAR-100, 0.5 on ImageNet).
        hard_weight: weight of the cross-entropy with the labels (paper: 1).
        warmup_epochs: epochs over which the distillation terms ramp up; 0 = none.
    """

    needs_teacher: ClassVar[bool] = True
    needs_dense_teacher: ClassVar[bool] = True

    temperature: float = 4.0
    target_weight: float = 1.0
    nontarget_weight: float = 8.0
    hard_weight: float = 1.0
    warmup_epochs: int = 20

    def warmup(self, epoch: int) -> float:
        """The factor of the distillation terms at ``epoch`` (0-based)."""
        return 1.0 if not self.warmup_epochs else min((epoch + 1) / self.warmup_epochs, 1.0)

    def needs_labels(self) -> bool:
        return True

    def __call__(self, batch: StepInputs) -> MethodOutput:
        tckd, nckd = decoupled_kd_terms(
            batch.student_logits,
            batch.teacher_logits(self),
            batch.labels_for(self),
            self.temperature,
            batch.combine,
        )
        loss = self.warmup(batch.epoch) * (self.target_weight * tckd + self.nontarget_weight * nckd)
        components = {"tckd": tckd.detach(), "nckd": nckd.detach()}
        if self.hard_weight > 0:
            hard = batch.hard_loss(self)
            loss = loss + self.hard_weight * hard
            components["hard"] = hard.detach()
        return MethodOutput(loss=loss, components=components)
