"""Hints (FitNets): a student layer learns a teacher layer first, then soft targets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from darkknowledge.errors import DKError
from darkknowledge.losses import hint_loss
from darkknowledge.methods.base import (
    FeatureRequest,
    Method,
    MethodOutput,
    StepInputs,
    hyperparameter,
    methods,
    with_hard_term,
)
from darkknowledge.methods.soft_targets import soft_term


@methods.register("hints")
@dataclass(frozen=True)
class Hints(Method):
    """Hint-based training, FitNets (Romero et al. 2015, §2.2–2.3): a thin, deep student.

    Two stages, switched by the epoch. Stage 1 (epochs ``0 .. hint_epochs − 1``): the student's
    guided layer ``student_layer``, through a trainable linear regressor ``r``, learns the
    teacher's hint layer ``teacher_layer``: ``loss = hint_weight · ½ mean (r(v) − u)²``
    (:func:`~darkknowledge.losses.hint_loss`); only the student's layers up to the guided one (and
    the regressor) get a gradient. Stage 2 (the remaining epochs): the whole student learns soft
    targets, ``soft_weight · T²·KL(p_T ‖ q_T) + hard_weight · CE``, as ``soft_targets`` does; the
    regressor is then unused. Every step reports all three terms.

    Layers are ``named_modules()`` paths, read with forward hooks (``layers.0`` is an MLP's first
    hidden layer, before its ReLU). The hint needs the teacher run on every batch
    (``teacher.outputs=live``) and one teacher model, not an ensemble.

    Attributes:
        student_layer: the student's guided layer (FitNets: its middle layer).
        teacher_layer: the teacher's hint layer (FitNets: its middle layer).
        hint_epochs: epochs of stage 1; 0 = soft targets only.
        hint_weight: weight of the hint loss in stage 1.
        temperature: T of the soft term in stage 2.
        soft_weight: weight of the soft term in stage 2.
        hard_weight: weight of the hard term in stage 2; 0 needs no labels.
    """

    needs_teacher: ClassVar[bool] = True

    student_layer: str = "layers.0"
    teacher_layer: str = "layers.0"
    hint_epochs: int = hyperparameter(5, low=0)  # the stage switch: epochs of stage 1
    hint_weight: float = 1.0
    temperature: float = 4.0
    soft_weight: float = 1.0
    hard_weight: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hint_epochs and not self.hint_weight:
            raise DKError(
                f"method 'hints': hint_weight=0 leaves the {self.hint_epochs} hint "
                "epochs without a loss",
                "give hint_weight > 0, or set hint_epochs=0",
            )
        if not (self.soft_weight or self.hard_weight):
            raise DKError(
                "method 'hints': soft_weight and hard_weight are both 0, so the second "
                "stage has no loss",
                "give soft_weight or hard_weight a positive value",
            )

    def feature_layers(self) -> FeatureRequest:
        return FeatureRequest(student=(self.student_layer,), teacher=(self.teacher_layer,))

    def build_connector(
        self, student_widths: Mapping[str, int], teacher_widths: Mapping[str, int]
    ) -> nn.Module:
        """The regressor: the guided layer's width to the hint layer's, linear."""
        return nn.Linear(student_widths[self.student_layer], teacher_widths[self.teacher_layer])

    def __call__(self, batch: StepInputs) -> MethodOutput:
        regressor = self.connector
        if regressor is None:
            raise DKError(
                "method 'hints' has no regressor",
                "train it with the loop (dk distill, "
                "fit_model), which builds it from the layers' widths",
            )
        hint_layer = batch.feature(self, "teacher", self.teacher_layer)
        if hint_layer.shape[0] != 1:
            raise DKError(
                f"method 'hints' needs one teacher model, got an ensemble of {hint_layer.shape[0]}",
                "distil hints from a single teacher",
            )
        guided = batch.feature(self, "student", self.student_layer)
        weight = regressor.weight
        hint = hint_loss(regressor(guided.to(weight.dtype)), hint_layer[0])
        soft = with_hard_term(
            self, "soft", soft_term(self, batch, self.temperature), self.soft_weight, batch
        )
        components = {"hint": hint.detach(), **soft.components}
        loss = self.hint_weight * hint if batch.epoch < self.hint_epochs else soft.loss
        return MethodOutput(loss=loss, components=components)
