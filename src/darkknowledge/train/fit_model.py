"""Your model, your batches, our loop: ``fit_model`` for users who bring their own nn.Module and
data.

    from darkknowledge.train import fit_model
    history = fit_model(my_net, [(x0, y0), (x1, y1), ...], "hard_targets", {"lr": 0.1, "epochs": 5})
    history = fit_model(student, batches, "soft_targets", {"epochs": 5},
    method_params={"temperature": 4},
                        teacher=my_teacher_net)

Underneath is :func:`darkknowledge.train.loop.fit`, the very loop ``dk train`` runs: same
optimizers and schedules, finite checks, gradient accumulation, compile/bf16 switches, and with a
``run_dir`` the same metrics log, checkpoints and exact resume. The teacher (a module, a list of
modules for an ensemble, or any callable returning logits) is frozen and run live on each batch
for the distillation, never trained, and given back as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from darkknowledge.config import OptimConfig, RunConfig, build_dataclass
from darkknowledge.errors import DKError, short, writing
from darkknowledge.methods import Method, build_method, method_config
from darkknowledge.methods.binding import BoundMethod
from darkknowledge.teachers.ensemble import load_members
from darkknowledge.teachers.freeze import frozen_during, modules_of
from darkknowledge.train.batches import IterableBatches
from darkknowledge.train.checkpoint import latest_checkpoint, list_checkpoints
from darkknowledge.train.loop import FitInputs, fit
from darkknowledge.train.run import resolve_device
from darkknowledge.train.rundir import MARKER, check_owned, hold


def _as_teacher(
    teacher: nn.Module | Callable | list | tuple | None,
) -> tuple[Callable[[torch.Tensor], torch.Tensor] | None, list[nn.Module]]:
    """The teacher as a function of a batch (under ``torch.inference_mode``), and the modules to
    keep frozen while it serves: a module, a list of modules (an ensemble: its members' logits
    stacked), or any callable (the modules it computes with are found, see ``modules_of``)."""
    if teacher is None:
        return None, []
    if isinstance(teacher, (list, tuple)):
        members = list(teacher)
        if not members or not all(callable(m) for m in members):
            raise DKError(
                "teacher=[...] must be a non-empty list of modules (an ensemble), got "
                f"{short(members)}",
                "pass teacher=[net_a, net_b, ...]",
            )

        def ensemble(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return torch.stack([m(x) for m in members])

        return ensemble, [m for member in members for m in modules_of(member)]
    if not callable(teacher):
        raise DKError(
            "teacher must be a module, a list of modules or a callable returning logits, got "
            f"{type(teacher).__name__}",
            "pass teacher=my_net",
        )

    def targets(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return teacher(x)

    return targets, modules_of(teacher)


def _members(teacher: Any) -> list[nn.Module] | None:
    """The teacher's modules in order, for feature hooks (None for a plain function)."""
    if isinstance(teacher, nn.Module):
        return [teacher]
    if isinstance(teacher, (list, tuple)) and all(isinstance(m, nn.Module) for m in teacher):
        return list(teacher)
    return None


def fit_model(
    model: nn.Module,
    batches: Iterable | Callable[[], Iterable],
    method: str | Method = "hard_targets",
    optim: OptimConfig | Mapping[str, Any] | None = None,
    *,
    method_params: Mapping[str, Any] | None = None,
    teacher: nn.Module
    | list[nn.Module]
    | Callable[[torch.Tensor], torch.Tensor]
    | str
    | os.PathLike
    | None = None,
    combine: str = "arithmetic",
    eval_batches: Mapping[str, Iterable] | None = None,
    steps_per_epoch: int | None = None,
    device: str = "auto",
    seed: int = 0,
    run_dir: str | Path | None = None,
    resume: str = "never",
    **settings: Any,
) -> dict[str, Any]:
    """Train ``model`` on ``batches`` with a registered method (or a method instance).

    Args:
        model: any ``nn.Module`` mapping inputs (B, ...) to logits (B, classes); moved to
        ``device``.
            A ``project_max_norm_()`` method, if it has one, runs after every step.
        batches: a re-iterable of ``(inputs, labels)`` (labels may be None for teacher-only
            methods), e.g. a list or a DataLoader, or a zero-argument function returning one
            epoch's batches (then give ``steps_per_epoch``). Iterated once per epoch.
        method: a method name (``dk ls``) with ``method_params``, or a method instance.
        optim: ``OptimConfig`` or its fields as a mapping, e.g. ``{"name": "adam", "lr": 1e-3,
        "epochs": 3}``
            (no ``batch_size``: the batches are yours; an ``OptimConfig``'s is not used).
        teacher: a module, a list of modules (an ensemble), or a callable returning logits
            (B, classes) or (members, B, classes); run under ``torch.inference_mode`` on every
            batch. Its modules (a callable's: those its closure holds) are frozen (eval mode, no
            gradients) for the distillation and given back exactly as they were afterwards.
        combine: how an ensemble's members make one target: ``arithmetic`` (the mean of their
            probabilities, the paper's choice) or ``geometric`` (of their log-probabilities).
        eval_batches: ``{name: batches}`` evaluated at epoch ends (errors, accuracy, NLL, ECE,
            agreement with the teacher); ``select_best_on="valid"`` needs a ``valid`` entry.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``. ``seed`` seeds dropout.
        run_dir: where to write ``metrics.jsonl`` and checkpoints (None: nothing is written).
        resume: ``never`` or ``auto`` (continue from the newest checkpoint in ``run_dir``).
        settings: other :class:`RunConfig` fields: ``label_smoothing`` (of the hard-label targets,
            any method), ``log_every``, ``sync_every``, ``train_step``, ``precision``,
            ``checkpoint_every``, ``eval_every``, ``select_best_on``, ``progress``...

    Returns:
        ``{"eval": {name: metrics}, "steps", "epochs", "best_epoch", "train_seconds"}``.
    """
    if isinstance(method, str):
        method = build_method(method, dict(method_params or {}))
    elif method_params:
        raise DKError(
            "method_params given with a method instance",
            "pass the method's name with method_params, or configure the instance",
        )
    if method.needs_teacher and teacher is None:
        raise DKError(
            f"method {method_config(method)['name']!r} needs a teacher",
            "pass teacher=<module or callable returning logits>",
        )
    optim_cfg = (
        optim
        if isinstance(optim, OptimConfig)
        else build_dataclass(OptimConfig, dict(optim or {}), "optim")
    )
    # a config object always has one
    if not isinstance(optim, OptimConfig) and "batch_size" in (optim or {}):
        raise DKError(
            f"optim batch_size={optim_cfg.batch_size} has no effect here: fit_model trains on your "
            "batches as they come",
            "leave batch_size out and set it where the batches are made (e.g. DataLoader(..., "
            "batch_size=...))",
        )
    for key in (
        "data",
        "teacher",
        "model",
        "method",
        "replicas",
        "optim",
        "seed",
        "device",
        "run_dir",
    ):
        if key in settings:
            raise DKError(
                f"fit_model does not take {key} as a setting",
                "pass it as fit_model's own argument (or use dk train for datasets)",
            )
    if settings.get("generations", 1) != 1:
        raise DKError(
            f"fit_model trains one model, got generations={settings['generations']}",
            "use dk.born_again(make_student, teacher, batches, generations=N)",
        )
    cfg = build_dataclass(
        RunConfig,
        {
            "run_dir": str(run_dir) if run_dir is not None else "(nothing written)",
            "seed": seed,
            "device": device,
            "model": {"name": type(model).__name__},
            "method": method_config(method),
            "optim": dataclasses.asdict(optim_cfg),
            # RunConfig wants a validation split for select_best_on; here it is
            # eval_batches["valid"]
            "data": {"validation_size": 1} if settings.get("select_best_on") else {},
            "teacher": {"combine": combine},
            **settings,
        },
        "",
    )
    dev = resolve_device(cfg.device)
    source = IterableBatches.of(batches, dev, steps_per_epoch)
    # re-iterable batches as they are; a factory is called anew at each evaluation
    evals = {
        name: IterableBatches(b, 1) if callable(b) and not hasattr(b, "__iter__") else b
        for name, b in (eval_batches or {}).items()
    }
    if cfg.select_best_on and cfg.select_best_on not in evals:
        raise DKError(
            f"select_best_on={cfg.select_best_on} but eval_batches has no {cfg.select_best_on!r} "
            "entry",
            f"pass eval_batches={{'{cfg.select_best_on}': ...}}",
        )
    model.to(dev)
    # a saved teacher: a model file or a run directory (an ensemble's: all members)
    if isinstance(teacher, (str, os.PathLike)):
        teacher = load_members(teacher, dev)
    teacher_fn, teacher_modules = _as_teacher(teacher)
    members = _members(teacher)
    # what the method asks of the run (features, a connector, labels), checked before any file
    BoundMethod(
        [method],
        model,
        members,
        seed=cfg.seed,
        stored_targets=False,
        label_smoothing=cfg.label_smoothing,
        eager=cfg.train_step == "eager",
        processes=1,
    )
    inputs = FitInputs(
        model,
        method,
        None,
        dev,
        teacher=teacher_fn,
        eval_sets=evals,
        batches=source,
        teacher_members=members,
    )

    ckpt = None
    root = Path(run_dir) if run_dir is not None else None
    if root is not None:
        check_owned(root)  # a directory that is not a darkknowledge run is never written
    if root is not None and resume == "auto":
        ckpt = latest_checkpoint(root / "checkpoints")
        if ckpt is not None and ckpt["state"].get("config_hash") != cfg.hash():
            raise DKError(
                f"checkpoint {ckpt['path']} was made with other settings",
                "resume with the same settings, or choose a new run_dir",
            )
    elif root is not None and resume == "never" and list_checkpoints(root / "checkpoints"):
        raise DKError(
            f"run directory {root} already holds checkpoints",
            "pass resume='auto' to continue, or choose a new run_dir",
        )
    elif resume not in ("never", "auto"):
        raise DKError(f"resume={resume!r} is invalid for fit_model", "use never or auto")
    torch.manual_seed(cfg.seed)
    with contextlib.ExitStack() as held:
        if root is not None:
            with writing(root / MARKER):
                root.mkdir(parents=True, exist_ok=True)
            held.enter_context(hold(root))  # one writer per run directory
        held.enter_context(frozen_during(teacher_modules))  # given back as they were afterwards
        return fit(cfg, inputs, root, resume=ckpt)
