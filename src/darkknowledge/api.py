"""The short path for your own models and data: ``fit`` and ``distill``.

    import darkknowledge as dk
    dk.fit(teacher, train_loader, epochs=10, lr=0.1)                     # hard labels
    dk.distill(student, teacher, train_loader, temperature=4, epochs=10)  # soft targets (+ a little hard)
    dk.evaluate(student, test_loader)                                    # errors, accuracy, NLL, ECE

Both are :func:`darkknowledge.train.fit_model` with the method spelled out as keywords; anything
else ``fit_model`` takes (``eval_batches``, ``run_dir`` and ``resume``, ``device``, ``seed``,
``select_best_on``, ...) passes through. A teacher may be a module, a list of modules (an
ensemble), a callable, or a saved teacher's path (an ensemble's run directory: all its
members, see :func:`load_teacher`); it is frozen for the distillation and given back as it was.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from darkknowledge.teachers.ensemble import load_members
from darkknowledge.train.evaluate import evaluate_batches
from darkknowledge.train.fit_model import fit_model


def fit(model: nn.Module, batches: Iterable, *, epochs: int = 10, lr: float = 0.1, optimizer: str = "sgd", **settings: Any) -> dict[str, Any]:
    """Train ``model`` on ``(inputs, labels)`` batches with the true labels (cross-entropy)."""
    return fit_model(model, batches, "hard_targets", {"name": optimizer, "lr": lr, "epochs": epochs}, **settings)


def distill(
    student: nn.Module,
    teacher: nn.Module | list[nn.Module] | Callable[[torch.Tensor], torch.Tensor] | str | os.PathLike,
    batches: Iterable,
    *,
    temperature: float = 4.0,
    hard_weight: float = 0.1,
    soft_weight: float = 1.0,
    epochs: int = 10,
    lr: float = 0.1,
    optimizer: str = "sgd",
    combine: str = "arithmetic",
    **settings: Any,
) -> dict[str, Any]:
    """Train ``student`` to match ``teacher``'s soft targets at ``temperature`` (the T² factor
    inside), plus ``hard_weight`` × the cross-entropy with the labels (0: the batches may be
    unlabelled, ``x`` or ``(x, None)``). An ensemble (a list of modules, or the path of an
    ensemble's run directory: ``dk train ensemble.members=N``) is combined by ``combine``:
    ``arithmetic`` (the paper's) or ``geometric``. A path (a model file, a run directory) is
    loaded with :func:`load_teacher`."""
    return fit_model(
        student, batches, "soft_targets", {"name": optimizer, "lr": lr, "epochs": epochs},
        method_params={"temperature": temperature, "hard_weight": hard_weight, "soft_weight": soft_weight},
        teacher=teacher, combine=combine, **settings,
    )


def load_teacher(path: str | os.PathLike | list, device: torch.device | str = "cpu") -> list[nn.Module]:
    """The models a saved teacher stands for: a model file or a run directory gives one, an
    ensemble's run directory (``dk train ensemble.members=N``) all its members, in order."""
    return load_members(path if isinstance(path, list) else os.fspath(path), device)


def evaluate(model: nn.Module, batches: Iterable, teacher: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
    """Errors, accuracy, NLL and ECE of ``model`` on labelled batches (with ``teacher``: also the
    agreement of their predictions)."""
    return evaluate_batches(model, batches, teacher)
