"""Input checks shared by the losses: one place for the messages users see."""

from __future__ import annotations

import difflib
import math
import numbers

import torch

from darkknowledge.errors import DKError

COMBINES = ("arithmetic", "geometric")


def as_float(logits: torch.Tensor, name: str) -> torch.Tensor:
    """Upcast half/bf16 logits to float32; float32 and float64 pass through unchanged."""
    if not isinstance(logits, torch.Tensor):
        raise DKError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise DKError(
            f"{name} must be floating-point logits, got dtype {logits.dtype}",
            "pass the model's raw outputs (logits), not labels or class indices",
        )
    if logits.dtype in (torch.float16, torch.bfloat16):
        return logits.float()
    return logits


def real_number(value: object, name: str, fix: str) -> float:
    """``value`` as a float, or a DKError ``{name} must be a number`` (bools are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise DKError(f"{name} must be a number, got {type(value).__name__} {value!r}", fix)
    return float(value)


def check_temperature(temperature: object) -> float:
    """Return ``temperature`` as a float, or raise DKError unless it is a finite number > 0."""
    value = real_number(temperature, "temperature", "use a finite number > 0, e.g. temperature=20")
    if not math.isfinite(value) or value <= 0:
        raise DKError(
            f"temperature must be a finite number > 0, got {temperature!r}",
            "use e.g. temperature=20 (T = 1 is the ordinary softmax)",
        )
    return value


def check_combine(combine: object) -> str:
    if combine not in COMBINES:
        close = difflib.get_close_matches(str(combine), COMBINES, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise DKError(
            f"unknown ensemble combine {combine!r}",
            f"{hint}choose one of: {', '.join(COMBINES)}",
        )
    return combine  # type: ignore[return-value]


def check_teacher_shape(teacher_logits: torch.Tensor) -> None:
    if teacher_logits.dim() not in (2, 3) or teacher_logits.shape[0] == 0:
        raise DKError(
            f"teacher_logits must be (batch, classes) or (members, batch, classes) with at least "
            f"one member, got shape {tuple(teacher_logits.shape)}"
        )


def check_pair(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    """Student (batch, classes) against teacher (batch, classes) or (members, batch, classes)."""
    student_shape = tuple(student_logits.shape)
    teacher_shape = tuple(teacher_logits.shape)
    if student_logits.dim() != 2:
        raise DKError(f"student_logits must be (batch, classes), got shape {student_shape}")
    if student_shape[0] == 0:
        raise DKError("student_logits hold an empty batch (shape (0, classes))")
    check_teacher_shape(teacher_logits)
    if student_shape[-1] != teacher_shape[-1]:
        raise DKError(
            f"student has {student_shape[-1]} classes but teacher has {teacher_shape[-1]} "
            f"(student_logits {student_shape}, teacher_logits {teacher_shape})",
            "student and teacher must predict the same label set in the same order",
        )
    if student_shape[0] != teacher_shape[-2]:
        raise DKError(
            f"student batch {student_shape[0]} != teacher batch {teacher_shape[-2]} "
            f"(student_logits {student_shape}, teacher_logits {teacher_shape})",
            "compute teacher logits on the same examples as the student",
        )


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype
