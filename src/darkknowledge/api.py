"""The short path for your own models and data: ``fit``, ``distill`` and ``born_again``.

    import darkknowledge as dk
    dk.fit(teacher, train_loader, epochs=10, lr=0.1)                     # hard labels
    dk.distill(student, teacher, train_loader, temperature=4, epochs=10)  # soft targets (+ a little
    hard)
    dk.distill(student, teacher, train_loader, method="decoupled")      # any method (dk ls)
    students, _ = dk.born_again(lambda: Net(), teacher, train_loader, generations=3)
    dk.evaluate(student, test_loader)                                    # errors, accuracy, NLL,
    ECE

Both are :func:`darkknowledge.train.fit_model` with the method spelled out as keywords; anything
else ``fit_model`` takes (``eval_batches``, ``run_dir`` and ``resume``, ``device``, ``seed``,
``select_best_on``, ...) passes through. A teacher may be a module, a list of modules (an
ensemble), a callable, or a saved teacher's path (an ensemble's run directory: all its
members, see :func:`load_teacher`); it is frozen for the distillation and given back as it was.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from darkknowledge.errors import DKError
from darkknowledge.teachers.ensemble import load_members
from darkknowledge.train.evaluate import evaluate_batches
from darkknowledge.train.fit_model import fit_model


def fit(
    model: nn.Module,
    batches: Iterable,
    *,
    epochs: int = 10,
    lr: float = 0.1,
    optimizer: str = "sgd",
    **settings: Any,
) -> dict[str, Any]:
    """Train ``model`` on ``(inputs, labels)`` batches with the true labels (cross-entropy)."""
    return fit_model(
        model, batches, "hard_targets", {"name": optimizer, "lr": lr, "epochs": epochs}, **settings
    )


def distill(
    student: nn.Module,
    teacher: nn.Module
    | list[nn.Module]
    | Callable[[torch.Tensor], torch.Tensor]
    | str
    | os.PathLike,
    batches: Iterable,
    *,
    temperature: float = 4.0,
    hard_weight: float = 0.1,
    soft_weight: float = 1.0,
    epochs: int = 10,
    lr: float = 0.1,
    optimizer: str = "sgd",
    combine: str = "arithmetic",
    method: str = "soft_targets",
    method_params: Mapping[str, Any] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Train ``student`` to match ``teacher``'s soft targets at ``temperature`` (the T² factor
    inside), plus ``hard_weight`` × the cross-entropy with the labels (0: the batches may be
    unlabelled, ``x`` or ``(x, None)``). An ensemble (a list of modules, or the path of an
    ensemble's run directory: ``dk train ensemble.members=N``) is combined by ``combine``:
    ``arithmetic`` (the paper's) or ``geometric``. A path (a model file, a run directory) is
    loaded with :func:`load_teacher`.

    Another method (``dk ls``: ``hints``, ``decoupled``, ``logit_matching``) takes its
    hyperparameters from ``method_params`` instead of the soft-target keywords, e.g.
    ``method="hints", method_params={"student_layer": "layers.1", "hint_epochs": 2}``;
    ``label_smoothing=0.1`` smooths the labels of any method's hard term."""
    if method_params is None and method == "soft_targets":
        method_params = {
            "temperature": temperature,
            "hard_weight": hard_weight,
            "soft_weight": soft_weight,
        }
    return fit_model(
        student,
        batches,
        method,
        {"name": optimizer, "lr": lr, "epochs": epochs},
        method_params=method_params,
        teacher=teacher,
        combine=combine,
        **settings,
    )


def born_again(
    make_student: Callable[[], nn.Module],
    teacher: nn.Module | str | os.PathLike,
    batches: Iterable,
    *,
    generations: int = 3,
    seed: int = 0,
    run_dir: str | os.PathLike | None = None,
    **distill_args: Any,
) -> tuple[list[nn.Module], list[dict[str, Any]]]:
    """Born-again networks (Furlanello et al. 2018): ``generations`` students of the teacher's
    architecture in a row, generation 1 distilled from ``teacher`` (one model), generation k from
    generation k − 1, each built by ``make_student()`` after seeding with ``seed + k − 1``.

    ``distill_args`` are :func:`distill`'s (``temperature``, ``epochs``, ``method``, ...); with
    ``run_dir``, generation k writes to ``run_dir/generations/<k>``. Returns the students and
    their histories; the list of students is itself a teacher, the ensemble of the generations:
    ``dk.distill(new_student, students, loader)``.
    """
    if isinstance(generations, bool) or not isinstance(generations, int) or generations < 1:
        raise DKError(
            f"generations={generations!r} must be a positive integer", "e.g. generations=3"
        )
    if isinstance(teacher, (str, os.PathLike)):
        (teacher,) = load_teacher(teacher)
    students, histories = [], []
    for k in range(1, generations + 1):
        torch.manual_seed(seed + k - 1)
        student = make_student()
        if k == 1:
            _check_same_architecture(student, teacher)
        where = None if run_dir is None else os.path.join(run_dir, "generations", str(k))
        history = distill(
            student, teacher, batches, seed=seed + k - 1, run_dir=where, **distill_args
        )
        histories.append(history)
        students.append(student)
        teacher = student
    return students, histories


def _check_same_architecture(student: nn.Module, teacher: Any) -> None:
    if not isinstance(teacher, nn.Module):
        raise DKError(
            f"born_again starts from one teacher module, got {type(teacher).__name__}",
            "pass the generation-0 model",
        )
    shapes = {k: tuple(v.shape) for k, v in student.state_dict().items()}
    if shapes != {k: tuple(v.shape) for k, v in teacher.state_dict().items()}:
        raise DKError(
            "born-again students have their teacher's architecture, but make_student() "
            "builds another",
            "make students like the teacher",
        )


def load_teacher(
    path: str | os.PathLike | list, device: torch.device | str = "cpu"
) -> list[nn.Module]:
    """The models a saved teacher stands for: a model file or a run directory gives one, an
    ensemble's run directory (``dk train ensemble.members=N``) all its members, in order."""
    return load_members(path if isinstance(path, list) else os.fspath(path), device)


def evaluate(
    model: nn.Module,
    batches: Iterable,
    teacher: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Errors, accuracy, NLL and ECE of ``model`` on labelled batches (with ``teacher``: also the
    agreement of their predictions)."""
    return evaluate_batches(model, batches, teacher)
