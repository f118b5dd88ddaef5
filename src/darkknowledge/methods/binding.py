"""A method bound to one run: its feature taps on student and teacher, and its connector.

The loop makes one :class:`BoundMethod` per run. It checks what the method asks of the run
(intermediate features need the teacher run live, on one process, eagerly; label smoothing needs
a method that reads labels), builds the method's connector (a regressor between feature widths)
from a seed of its own so that the student's randomness is the same with or without one, and
gives the loop what it needs: the connector's parameters for the optimizer, the captured
features for each step, and the connector's tensors for checkpoints (``method/<name>`` in
``state.safetensors``; a method without a connector adds nothing, so every checkpoint written
before connectors existed still resumes as it did).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from darkknowledge.errors import DKError
from darkknowledge.methods.base import Method, method_name
from darkknowledge.models.features import FeatureTap, feature_width

PREFIX = "method/"  # the connector's tensors in a checkpoint's state.safetensors


def build_connector(
    method: Method, student: nn.Module, teachers: Sequence[nn.Module] | None, seed: int
) -> nn.Module | None:
    """``method``'s connector for this student and teacher, initialized from ``seed`` (a fork of
    the torch RNG: the global generator the student's dropout draws from is left as it was)."""
    request = method.feature_layers()
    student_widths = {n: feature_width(student, n, "the student") for n in request.student}
    teacher_widths = {}
    if request.teacher and teachers:
        teacher_widths = {n: feature_width(teachers[0], n, "the teacher") for n in request.teacher}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return method.build_connector(student_widths, teacher_widths)


def connector_state(connector: nn.Module | None) -> dict[str, torch.Tensor]:
    """The connector's tensors under their checkpoint keys (none without a connector)."""
    if connector is None:
        return {}
    return {PREFIX + k: v.detach() for k, v in connector.state_dict().items()}


def state_problem(connector: nn.Module | None, tensors: dict[str, torch.Tensor]) -> str | None:
    """What keeps ``tensors`` (a checkpoint's state) from restoring ``connector``, or None."""
    expected = connector_state(connector)
    saved = {k for k in tensors if k.startswith(PREFIX)}
    if saved != set(expected):
        return (
            f"state.safetensors holds the method tensors {sorted(saved)}, "
            f"the method has {sorted(expected)}"
        )
    for key, value in expected.items():
        if tensors[key].shape != value.shape or tensors[key].dtype != value.dtype:
            saved_as = f"{tensors[key].dtype} {tuple(tensors[key].shape)}"
            return f"{key} is {saved_as}, the method's is {value.dtype} {tuple(value.shape)}"
    return None


class BoundMethod:
    """``methods`` (one, or one per replica) bound to the run's student and teacher.

    Args:
        methods: the run's method, or its K replicas' methods.
        student: the student model (not a DDP wrapper).
        teachers: the teacher's member modules in order (for feature hooks), None if unknown.
        seed: seeds the connector's initialization.
        stored_targets: the teacher's outputs come from a store (its layers never run).
        topk_targets: that store holds each image's top-k classes only.
        label_smoothing: the run's ε; > 0 needs a method that reads labels.
        eager: the step runs eagerly (feature hooks do not run inside a compiled step).
        processes: the number of training processes (a connector is not synchronized by DDP).
    """

    def __init__(
        self,
        methods: Sequence[Method],
        student: nn.Module,
        teachers: Sequence[nn.Module] | None,
        *,
        seed: int,
        stored_targets: bool,
        topk_targets: bool = False,
        label_smoothing: float,
        eager: bool,
        processes: int,
    ) -> None:
        method = methods[0]
        name = method_name(method)
        if label_smoothing and not all(m.needs_labels() for m in methods):
            raise DKError(
                f"label_smoothing={label_smoothing:g} has no effect: method {name!r} "
                "uses no labels here",
                "give the method a hard term (hard_weight > 0) or set label_smoothing=0",
            )
        if topk_targets and method.needs_dense_teacher:
            raise DKError(
                f"method {name!r} needs the teacher's dense logits, which a top-k teacher-output "
                "store does not hold",
                "use a dense store (teacher.store_topk: null) or teacher.outputs=live",
            )
        request = method.feature_layers()
        self.student_tap: FeatureTap | None = None
        self.teacher_tap: FeatureTap | None = None
        self.connector: nn.Module | None = None
        self._hooked: tuple | None = None
        if not request:
            method.attach_connector(None)
            return
        where = (
            "replicas"
            if len(methods) > 1
            else "torchrun"
            if processes > 1
            else None
            if eager
            else "a compiled step"
        )
        if where is not None:
            raise DKError(
                f"method {name!r} reads intermediate layers, which {where} cannot give it",
                "train it as one eager run (train_step=eager, no replicas, no torchrun)",
            )
        if request.teacher and stored_targets:
            raise DKError(
                f"method {name!r} reads the teacher's layer(s) "
                f"{', '.join(request.teacher)}, which a teacher-output store does not "
                "hold",
                "set teacher.outputs=live",
            )
        if request.teacher and not teachers:
            raise DKError(
                f"method {name!r} reads the teacher's layers but the teacher is a plain function",
                "pass the teacher as a module (or a list of modules)",
            )
        self.connector = build_connector(method, student, teachers, seed)
        method.attach_connector(self.connector)
        self._hooked = (student, teachers, request)

    def open(self) -> None:
        """Put the feature hooks on student and teacher (for the training steps; ``close()``
        takes them off, so a user's model is given back without them)."""
        if self._hooked is None:
            return
        student, teachers, request = self._hooked
        if request.student:
            self.student_tap = FeatureTap([student], request.student, "the student")
        if request.teacher:
            self.teacher_tap = FeatureTap(teachers, request.teacher, "the teacher", stacked=True)

    def to(self, device: torch.device) -> BoundMethod:
        if self.connector is not None:
            self.connector.to(device)
        return self

    def parameters(self) -> list[nn.Parameter]:
        """The connector's parameters, trained with the student's (none without a connector)."""
        return [] if self.connector is None else list(self.connector.parameters())

    def student_features(self) -> dict[str, torch.Tensor]:
        return {} if self.student_tap is None else self.student_tap.take()

    def teacher_features(self) -> dict[str, torch.Tensor]:
        return {} if self.teacher_tap is None else self.teacher_tap.take()

    def state(self) -> dict[str, torch.Tensor]:
        return connector_state(self.connector)

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        if self.connector is not None:
            n = len(PREFIX)
            self.connector.load_state_dict(
                {k[n:]: v for k, v in tensors.items() if k.startswith(PREFIX)}
            )

    def close(self) -> None:
        for tap in (self.student_tap, self.teacher_tap):
            if tap is not None:
                tap.close()
        self.student_tap = self.teacher_tap = None
