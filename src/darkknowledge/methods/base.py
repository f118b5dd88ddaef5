"""The method contract (v2), the method registry, and config round-trips.

A method is a frozen dataclass whose fields are its hyperparameters (constructor parameter =
attribute = config key), a subclass of :class:`Method`, registered by name where it is defined
(``@methods.register("name")``). Each step the loop hands it one :class:`StepInputs` (the
student's logits, the teacher's targets as a typed union, the labels, the epoch and step, and the
intermediate features it asked for) and it returns one weighted loss plus its unweighted
components (:class:`MethodOutput`). CONTRIBUTING.md walks through adding one.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

import torch
from torch import nn

from darkknowledge.errors import DKError
from darkknowledge.losses import TopKTargets, hard_target_loss
from darkknowledge.registry import Registry

# ---------------------------------------------------------------- what a method is given


@dataclass(frozen=True, eq=False)
class LiveLogits:
    """The teacher run on this very batch: logits (batch, classes) or (members, batch, classes)."""

    logits: torch.Tensor


@dataclass(frozen=True, eq=False)
class StoredLogits:
    """Dense teacher logits gathered from a teacher-output store: (members, batch, classes)."""

    logits: torch.Tensor


# What the teacher contributes to a step: its live logits, stored dense logits, or stored top-k
# log-probabilities at one temperature (:class:`~darkknowledge.losses.TopKTargets`).
TeacherTargets = Union[LiveLogits, StoredLogits, TopKTargets]  # noqa: UP007 (a runtime alias)


def as_targets(teacher: Any, stored: bool = False) -> TeacherTargets | None:
    """Wrap what a teacher gave: a tensor becomes :class:`LiveLogits` (``stored``:
    :class:`StoredLogits`); top-k targets, already-wrapped targets and None pass through."""
    if teacher is None or isinstance(teacher, (LiveLogits, StoredLogits, TopKTargets)):
        return teacher
    if not isinstance(teacher, torch.Tensor):
        raise DKError(
            f"teacher targets must be logits (a tensor) or top-k targets, got "
            f"{type(teacher).__name__}",
            "pass the teacher's logits",
        )
    return StoredLogits(teacher) if stored else LiveLogits(teacher)


@dataclass(frozen=True)
class FeatureRequest:
    """The named intermediate layers a method reads (``model.named_modules()`` paths, e.g.
    ``layers.0``): the loop captures their outputs with forward hooks and passes them in
    :attr:`StepInputs.student_features` / :attr:`StepInputs.teacher_features`."""

    student: tuple[str, ...] = ()
    teacher: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.student or self.teacher)


@dataclass(frozen=True, eq=False)
class StepInputs:
    """Everything a method may use for one batch (one micro-batch under gradient accumulation).

    Attributes:
        student_logits: (batch, classes), the student's raw outputs (bf16 under autocast).
        targets: the teacher's contribution (:data:`TeacherTargets`), None without a teacher.
        labels: (batch,) integer class indices; None on an unlabelled transfer set.
        epoch: 0-based epoch of this step. step: 0-based global step (steps done before it).
        combine: how an ensemble teacher's members make one target ("arithmetic"/"geometric").
        label_smoothing: ε of the hard-label targets, for any method's hard term (``hard_loss``).
        student_features: ``{layer: (batch, units)}``, the layers ``feature_layers().student``
            names.
        teacher_features: ``{layer: (members, batch, units)}``, ``feature_layers().teacher``'s.
    """

    student_logits: torch.Tensor
    targets: TeacherTargets | None = None
    labels: torch.Tensor | None = None
    epoch: int = 0
    step: int = 0
    combine: str = "arithmetic"
    label_smoothing: float = 0.0
    student_features: Mapping[str, torch.Tensor] = field(default_factory=dict)
    teacher_features: Mapping[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        student_logits: torch.Tensor,
        teacher: Any = None,
        labels: torch.Tensor | None = None,
        **rest: Any,
    ) -> StepInputs:
        """A step from plain values: a teacher tensor is taken as :class:`LiveLogits`."""
        return cls(student_logits, as_targets(teacher), labels, **rest)

    def teacher(self, method: Method) -> TeacherTargets:
        """The targets as fixed values (detached), or a DKError naming ``method`` if missing."""
        if self.targets is None:
            raise DKError(
                f"method {method_name(method)!r} needs teacher logits, got None",
                "configure a teacher (or a teacher-output store) for this run",
            )
        if isinstance(self.targets, TopKTargets):
            return self.targets
        return type(self.targets)(self.targets.logits.detach())

    def teacher_logits(self, method: Method) -> torch.Tensor:
        """The teacher's dense logits (detached); top-k targets are a DKError naming ``method``."""
        targets = self.teacher(method)
        if isinstance(targets, TopKTargets):
            name = method_name(method)
            raise DKError(
                f"{name} needs the teacher's dense logits, got top-k targets",
                "use a dense teacher-output store (teacher.store_topk: null)",
            )
        return targets.logits

    def labels_for(self, method: Method) -> torch.Tensor:
        """The labels, or a DKError whose advice fits ``method``."""
        return require_labels(method, self.labels)

    def hard_loss(self, method: Method) -> torch.Tensor:
        """Cross-entropy with the labels at T = 1, smoothed by ``label_smoothing``."""
        return hard_target_loss(self.student_logits, self.labels_for(method), self.label_smoothing)

    def feature(self, method: Method, side: str, name: str) -> torch.Tensor:
        """``student_features[name]`` or ``teacher_features[name]`` (``side``), or a DKError."""
        found = (self.student_features if side == "student" else self.teacher_features).get(name)
        if found is None:
            raise DKError(
                f"method {method_name(method)!r} got no {side} feature {name!r}",
                f"list it in feature_layers().{side} so the loop captures it",
            )
        return found


@dataclass(frozen=True)
class MethodOutput:
    """What a method returns for one batch."""

    loss: torch.Tensor  # scalar, weighted total: the thing to backpropagate
    components: dict[str, torch.Tensor]  # unweighted scalar terms, e.g. {"soft": ..., "hard": ...}


# ---------------------------------------------------------------- the contract


class Method:
    """Base of every distillation method; subclasses are frozen dataclasses.

    A subclass sets ``needs_teacher``, implements ``__call__(batch: StepInputs) -> MethodOutput``
    and, where it needs to, overrides the defaults below. Its fields are validated on
    construction by :func:`validate_hyperparameters` (each field's type and range, declared on
    the field with :func:`hyperparameter` or by its name's convention).
    """

    needs_teacher: ClassVar[bool] = True
    # reads the teacher's dense logits (StepInputs.teacher_logits): a top-k store cannot serve it
    needs_dense_teacher: ClassVar[bool] = False

    def __post_init__(self) -> None:
        validate_hyperparameters(self)

    def needs_labels(self) -> bool:
        """Whether a step needs labels; by default when a ``hard_weight`` field is > 0."""
        return getattr(self, "hard_weight", 0.0) > 0

    def feature_layers(self) -> FeatureRequest:
        """The intermediate layers of student and teacher this method reads (none by default)."""
        return FeatureRequest()

    def build_connector(
        self, student_widths: Mapping[str, int], teacher_widths: Mapping[str, int]
    ) -> nn.Module | None:
        """The trainable module this method owns (e.g. a regressor between feature widths), built
        once per run from the widths of the layers ``feature_layers()`` names; None (the
        default) for none. Its parameters train with the student's and are checkpointed with it."""
        return None

    @property
    def connector(self) -> nn.Module | None:
        """The module :meth:`build_connector` made for this run (set by the loop), or None."""
        return self.__dict__.get("_connector")

    def attach_connector(self, module: nn.Module | None) -> None:
        object.__setattr__(self, "_connector", module)

    def __call__(self, batch: StepInputs) -> MethodOutput:
        raise NotImplementedError(f"{type(self).__name__} does not implement __call__(batch)")


methods: Registry[type] = Registry("method")


def method_name(method: object) -> str:
    """The registry name of a method instance or class (its class name if unregistered)."""
    cls = method if isinstance(method, type) else type(method)
    for name in methods.names():
        if methods.get(name) is cls:
            return name
    return cls.__name__


# ---------------------------------------------------------------- hyperparameters and their checks


@dataclass(frozen=True)
class Range:
    """The values a numeric hyperparameter may take: ``low``/``high`` bounds (None: unbounded),
    each closed unless ``*_open``."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def describe(self) -> str:
        if self.high is None:
            return (
                f"{'>' if self.low_open else '>='} {self.low:g}" if self.low is not None else "any"
            )
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"

    def inside(self) -> float:
        """A value inside the range, away from the bounds (3 when unbounded above)."""
        if self.high is None:
            return 3.0 if self.low is None or self.low < 3 else self.low + 3
        low = self.low if self.low is not None else self.high - 2
        return (low + self.high) / 2

    def outside(self) -> list[float]:
        """Values just outside the range (the open bounds themselves included)."""
        out = []
        if self.low is not None:
            out += [self.low - 1] + ([self.low] if self.low_open else [])
        if self.high is not None:
            out += [self.high + 1] + ([self.high] if self.high_open else [])
        return out


def hyperparameter(
    default: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> Any:
    """A method field with a declared range: ``smoothing: float = hyperparameter(0.0, low=0,
    high=1, high_open=True)`` is a field in [0, 1); the validator and the contract suite read it."""
    return field(default=default, metadata={"range": Range(low, high, low_open, high_open)})


def field_range(f: dataclasses.Field, tp: Any) -> Range | None:
    """A field's declared range, or its name's convention: ``temperature`` > 0, ``*_weight`` and
    integer fields (counts, such as ``*_epochs``) >= 0; strings and the rest: none."""
    if "range" in f.metadata:
        return f.metadata["range"]
    if f.name == "temperature":
        return Range(0.0, low_open=True)
    if f.name.endswith("_weight") or tp is int:
        return Range(0.0)
    return None


def field_types(cls: type) -> dict[str, Any]:
    """Each hyperparameter's type (float, int or str) by field name."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _check_field(name: str, f: dataclasses.Field, tp: Any, value: Any) -> Any:
    """``value`` checked against the field's type and range, normalized (ints to float)."""
    example = f"e.g. {f.name}={f.default!r}"
    if tp is str:
        if not isinstance(value, str) or not value:
            raise DKError(
                f"method {name!r}: {f.name} must be a non-empty string, got "
                f"{type(value).__name__} {value!r}",
                example,
            )
        return value
    kind = "an integer" if tp is int else "a number"
    wrong = not isinstance(value, int) if tp is int else not isinstance(value, numbers.Real)
    if isinstance(value, bool) or wrong:
        raise DKError(
            f"method {name!r}: {f.name} must be {kind}, got {type(value).__name__} {value!r}",
            example,
        )
    value = int(value) if tp is int else float(value)
    if not math.isfinite(value):
        raise DKError(f"method {name!r}: {f.name} must be finite, got {value!r}", example)
    bounds = field_range(f, tp)
    if bounds is not None and value not in bounds:
        fix = (
            "use e.g. temperature=20 (T = 1 is the ordinary softmax)"
            if f.name == "temperature"
            else example
        )
        raise DKError(f"method {name!r}: {f.name} must be {bounds.describe()}, got {value!r}", fix)
    return value


def validate_hyperparameters(method: Any) -> None:
    """Check and normalize a method's fields; :class:`Method` calls it from ``__post_init__``.

    Each field is a float (a finite real number, stored as float; bools rejected), an int or a
    non-empty str, as annotated, within its range (:func:`field_range`). Fields named
    ``*_weight`` must not all be zero.
    """
    name = method_name(method)
    types = field_types(type(method))
    weights = {}
    for f in dataclasses.fields(method):
        value = _check_field(name, f, types[f.name], getattr(method, f.name))
        if f.name.endswith("_weight"):
            weights[f.name] = value
        object.__setattr__(method, f.name, value)
    if weights and not any(weights.values()):
        raise DKError(
            f"method {name!r}: all weights are zero ({', '.join(weights)})",
            "give at least one loss term a positive weight",
        )


def parameter_examples(cls: type) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], str]]]:
    """Examples the contract suite checks, derived from each field's type and range: valid
    non-default values (one field at a time) and invalid ones, each with the field its error
    must name. A method's own test adds the cases these cannot know (one field against another)."""
    valid: list[dict[str, Any]] = []
    invalid: list[tuple[dict[str, Any], str]] = []
    for f in dataclasses.fields(cls):
        tp = field_types(cls)[f.name]
        if tp is str:
            invalid += [({f.name: bad}, f.name) for bad in (3, None, "", True)]
            continue
        bounds = field_range(f, tp) or Range()
        good = bounds.inside()
        valid.append({f.name: int(good) if tp is int else good})
        bad_type = ["3", True, None] + ([2.5] if tp is int else [float("nan"), float("inf")])
        invalid += [({f.name: bad}, f.name) for bad in [*bad_type, *bounds.outside()]]
    return valid, invalid


# ---------------------------------------------------------------- building from configs


def build_method(name: str, params: Mapping[str, Any] | None = None) -> Method:
    """Look up a registered method by name and construct it from config ``params``."""
    cls = methods.get(name)
    params = {} if params is None else params
    if not isinstance(params, Mapping):
        raise DKError(
            f"method {name!r}: params must be a mapping of hyperparameters, "
            f"got {type(params).__name__}"
        )
    allowed = [field.name for field in dataclasses.fields(cls)]
    for key in params:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            choices = ", ".join(allowed) if allowed else "none (this method has no parameters)"
            raise DKError(
                f"method {name!r} has no parameter {key!r}",
                f"{hint}allowed: {choices}",
            )
    return cls(**params)


def method_config(method: Method) -> dict[str, Any]:
    """``{"name": ..., **hyperparameters}``; ``build_method(c.pop("name"), c)`` rebuilds it."""
    fields = dataclasses.fields(method)  # type: ignore[arg-type]
    return {"name": method_name(method), **{f.name: getattr(method, f.name) for f in fields}}


# ---------------------------------------------------------------- shared pieces of methods


def require_labels(method: Method, labels: torch.Tensor | None) -> torch.Tensor:
    """The labels, or a DKError whose advice fits the method: set ``hard_weight=0`` where that
    frees the method from labels, else use a labelled transfer set."""
    if labels is None:
        name = method_name(method)
        hard_weight = getattr(method, "hard_weight", None)
        setting = f" with hard_weight={hard_weight:g}" if hard_weight is not None else ""
        fix = (
            "set hard_weight=0 or use a labelled transfer set"
            if labels_optional(method)
            else f"use a labelled transfer set ({name!r} learns from the labels)"
        )
        raise DKError(f"method {name!r}{setting} needs labels; the transfer set is unlabelled", fix)
    return labels


def labels_optional(method: Method) -> bool:
    """Whether the same method with ``hard_weight=0`` would need no labels."""
    if getattr(method, "hard_weight", None) is None:
        return False
    try:
        without = dataclasses.replace(method, hard_weight=0.0)  # type: ignore[type-var]
        return not without.needs_labels()
    except DKError:  # e.g. every other weight is zero too
        return False


def with_hard_term(
    method: Any, name: str, term: torch.Tensor, weight: float, batch: StepInputs
) -> MethodOutput:
    """``weight · term`` plus, when the method's ``hard_weight`` > 0, ``hard_weight ·`` the
    cross-entropy with the (smoothed) labels on the same logits (Hinton et al. 2015, §2: the
    second, usually much smaller, objective). Components are the unweighted terms."""
    loss = weight * term
    components = {name: term.detach()}
    if method.needs_labels():
        hard = batch.hard_loss(method)
        loss = loss + method.hard_weight * hard
        components["hard"] = hard.detach()
    return MethodOutput(loss=loss, components=components)
