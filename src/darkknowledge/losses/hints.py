"""The hint loss of FitNets: a student layer, through a regressor, matches a teacher layer."""

from __future__ import annotations

import torch

from darkknowledge.errors import DKError
from darkknowledge.losses._checks import as_float, compute_dtype


def hint_loss(regressed: torch.Tensor, hint: torch.Tensor) -> torch.Tensor:
    """``½ · mean over examples and units of (r(v) − u)²``: the FitNets L2 hint loss, per unit.

    FitNets writes ``½‖u_h(x) − r(v_g(x))‖²`` for the teacher's hint layer ``u_h`` and the
    regressor ``r`` on the student's guided layer ``v_g``. Here the squared error is averaged over
    the hint's units as well as over examples, so the loss (and the step size that suits it) does
    not grow with the width of the hint layer.

    Args:
        regressed: (batch, units): the regressor's output on the student's guided layer.
        hint: (batch, units): the teacher's hint layer on the same examples (a fixed target).

    Returns:
        scalar loss, float32 (float64 when an input is float64).

    Reference: Romero et al. 2015, "FitNets: Hints for Thin Deep Nets", §2.2, eq. (3).
    """
    student = as_float(regressed, "regressed")
    teacher = as_float(hint, "hint")
    if student.shape != teacher.shape or student.dim() < 2 or student.shape[0] == 0:
        raise DKError(
            f"the regressed student layer {tuple(student.shape)} and the teacher's hint layer "
            f"{tuple(teacher.shape)} must have one non-empty (batch, units) shape",
            "regress the student's guided layer to the hint layer's width",
        )
    dtype = compute_dtype(student, teacher)
    return 0.5 * (student.to(dtype) - teacher.detach().to(dtype)).square().mean()
