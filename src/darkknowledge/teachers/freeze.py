"""Freezing a teacher: eval mode, no gradients, and it stays that way (for good, or for the
length of one distillation: :func:`frozen_during`, which gives the user's modules back as they
were)."""

from __future__ import annotations

import contextlib
import inspect
import types
from collections.abc import Callable, Iterator
from typing import Any

from torch import nn


def _stay_in_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    # A frozen teacher ignores .train(): a container calling .train() on its children
    # must not switch dropout back on while the teacher produces targets.
    return self


def freeze(model: nn.Module) -> nn.Module:
    """Put ``model`` and every submodule in eval mode for good and stop its gradients."""
    model.eval()
    for module in model.modules():
        module.train = types.MethodType(_stay_in_eval, module)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def is_frozen(model: nn.Module) -> bool:
    return not model.training and all(not p.requires_grad for p in model.parameters())


@contextlib.contextmanager
def frozen_during(modules: list[nn.Module]) -> Iterator[None]:
    """Freeze ``modules`` for the block, then give them back exactly as they were: training mode
    of every submodule, ``requires_grad`` of every parameter, and their own ``train`` method (a
    user's teacher stays trainable after a distillation)."""
    subs = {id(m): m for module in modules for m in module.modules()}.values()
    modes = [(m, m.training, m.__dict__.get("train")) for m in subs]
    grads = [(p, p.requires_grad) for module in modules for p in module.parameters()]
    for module in modules:
        freeze(module)
    try:
        yield
    finally:
        for m, training, own_train in modes:
            if own_train is None:
                m.__dict__.pop("train", None)
            else:
                m.train = own_train
            m.training = training
        for p, requires_grad in grads:
            p.requires_grad_(requires_grad)


def modules_of(teacher: Callable[..., Any]) -> list[nn.Module]:
    """The modules a teacher callable computes with: itself if it is one, else the modules its
    closure and the globals it names hold (directly, or in a list, tuple, set or dict: the
    ``lambda x: torch.stack([t(x) for t in members])`` of an ensemble), or its object's attributes
    (a bound method, a callable object)."""
    found: dict[int, nn.Module] = {}

    def visit(value: Any, depth: int) -> None:
        if isinstance(value, nn.Module):
            found.setdefault(id(value), value)
        elif depth < 3 and isinstance(value, (list, tuple, set, frozenset)):
            for v in value:
                visit(v, depth + 1)
        elif depth < 3 and isinstance(value, dict):
            for v in value.values():
                visit(v, depth + 1)

    visit(teacher, 0)
    if found:
        return list(found.values())
    owner = getattr(teacher, "__self__", None)  # a bound method: model.forward
    if owner is not None:
        visit(owner, 0)
    fn = getattr(teacher, "__func__", teacher)
    if inspect.isfunction(fn):
        try:
            names = inspect.getclosurevars(fn)
        except (TypeError, ValueError):
            names = None
        if names is not None:
            for v in (*names.nonlocals.values(), *names.globals.values()):
                visit(v, 1)
    elif not inspect.isroutine(teacher):  # a callable object: its attributes
        for v in vars(teacher).values() if hasattr(teacher, "__dict__") else ():
            visit(v, 1)
    return list(found.values())
