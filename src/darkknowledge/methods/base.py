"""The method contract, the method registry, and config round-trips.

A method turns (student logits, teacher logits, labels) into one weighted loss plus its
unweighted components. Methods are frozen dataclasses whose fields are their hyperparameters:
constructor parameter = attribute = config key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch

from darkknowledge.errors import DKError
from darkknowledge.losses import hard_target_loss
from darkknowledge.registry import Registry


@dataclass(frozen=True)
class MethodOutput:
    """What a method returns for one batch."""

    loss: torch.Tensor  # scalar, weighted total: the thing to backpropagate
    components: dict[str, torch.Tensor]  # unweighted scalar terms, e.g. {"soft": ..., "hard": ...}


class Method(Protocol):
    """A distillation objective. Implementations are frozen dataclasses registered in ``methods``."""

    needs_teacher: ClassVar[bool]

    def needs_labels(self) -> bool: ...

    def __call__(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor | None,
        labels: torch.Tensor | None,
        *,
        combine: str = "arithmetic",
    ) -> MethodOutput: ...


methods: Registry[type] = Registry("method")


def method_name(method: object) -> str:
    """The registry name of a method instance or class (its class name if unregistered)."""
    cls = method if isinstance(method, type) else type(method)
    for name in methods.names():
        if methods.get(name) is cls:
            return name
    return cls.__name__


def validate_hyperparameters(method: Any) -> None:
    """Check and normalize a method's fields; call from ``__post_init__``.

    Every field is a float hyperparameter: a finite real number (bools rejected), stored as float.
    ``temperature`` must be > 0; fields named ``*_weight`` must be >= 0 and not all zero.
    """
    name = method_name(method)
    weights = {}
    for field in dataclasses.fields(method):
        value = getattr(method, field.name)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise DKError(
                f"method {name!r}: {field.name} must be a number, "
                f"got {type(value).__name__} {value!r}",
                f"e.g. {field.name}={field.default!r}",
            )
        value = float(value)
        if not math.isfinite(value):
            raise DKError(f"method {name!r}: {field.name} must be finite, got {value!r}")
        if field.name == "temperature" and value <= 0:
            raise DKError(
                f"method {name!r}: temperature must be > 0, got {value!r}",
                "use e.g. temperature=20 (T = 1 is the ordinary softmax)",
            )
        if field.name.endswith("_weight"):
            if value < 0:
                raise DKError(f"method {name!r}: {field.name} must be >= 0, got {value!r}")
            weights[field.name] = value
        object.__setattr__(method, field.name, value)
    if weights and not any(weights.values()):
        raise DKError(
            f"method {name!r}: all weights are zero ({', '.join(weights)})",
            "give at least one loss term a positive weight",
        )


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


def require_teacher(method: Method, teacher_logits: torch.Tensor | None) -> torch.Tensor:
    """The teacher logits as fixed targets (detached), or a DKError when they are missing."""
    if teacher_logits is None:
        raise DKError(
            f"method {method_name(method)!r} needs teacher logits, got None",
            "configure a teacher (or a teacher-output store) for this run",
        )
    return teacher_logits.detach()


def require_labels(method: Method, labels: torch.Tensor | None) -> torch.Tensor:
    if labels is None:
        hard_weight = getattr(method, "hard_weight", None)
        setting = f" with hard_weight={hard_weight:g}" if hard_weight is not None else ""
        raise DKError(
            f"method {method_name(method)!r}{setting} needs labels; the transfer set is unlabelled",
            "set hard_weight=0 or use a labelled transfer set" if hard_weight is not None else f"use a labelled transfer set ({method_name(method)!r} learns from the labels)",
        )
    return labels


def with_hard_term(method: Any, name: str, term: torch.Tensor, weight: float, student_logits: torch.Tensor, labels: torch.Tensor | None) -> MethodOutput:
    """``weight · term`` plus, when the method's ``hard_weight`` > 0, ``hard_weight ·`` the
    cross-entropy with the labels on the same logits (Hinton et al. 2015, §2: the second,
    usually much smaller, objective). Components are the unweighted terms."""
    loss = weight * term
    components = {name: term.detach()}
    if method.needs_labels():
        hard = hard_target_loss(student_logits, require_labels(method, labels))
        loss = loss + method.hard_weight * hard
        components["hard"] = hard.detach()
    return MethodOutput(loss=loss, components=components)
