"""Freezing a teacher: eval mode, no gradients, and it stays that way."""

from __future__ import annotations

import types

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
