"""Named intermediate activations of any model, through forward hooks: no model is rewritten.

A name is a submodule's path in ``model.named_modules()`` (``layers.0`` is an MLP's first linear
layer: its output is the first hidden layer before the ReLU). :class:`FeatureTap` keeps the
output of each named submodule at every forward pass, for methods that compare what a student
and a teacher compute inside (hints, FitNets).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from darkknowledge.errors import DKError


def submodule(model: nn.Module, name: str, who: str = "the model") -> nn.Module:
    """``model``'s submodule called ``name``, or a :class:`DKError` listing the names it has."""
    names = [n for n, _ in model.named_modules() if n]
    if name not in names:
        shown = ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")
        raise DKError(f"{who} has no layer {name!r}", f"name one of its layers: {shown or 'none'}")
    return model.get_submodule(name)


def feature_width(model: nn.Module, name: str, who: str = "the model") -> int:
    """The number of units the layer ``name`` outputs (its ``out_features``)."""
    layer = submodule(model, name, who)
    width = getattr(layer, "out_features", None)
    if not isinstance(width, int):
        raise DKError(
            f"{who}'s layer {name!r} ({type(layer).__name__}) does not say its width "
            "(no out_features)",
            "name a linear layer, e.g. layers.0",
        )
    return width


class FeatureTap:
    """Keeps the outputs of the named layers of one or more models at each forward pass.

    ``take()`` returns the last pass's outputs, ``{name: (batch, ...)}`` of one model, or with
    ``stacked`` ``{name: (models, batch, ...)}`` (an ensemble's members, in order), and forgets
    them, so a step never reads a stale activation. Outputs computed under
    ``torch.inference_mode`` (a frozen teacher) are copied into ordinary tensors. ``close()``
    (or leaving the ``with`` block) removes the hooks.
    """

    def __init__(
        self, models: Sequence[nn.Module], names: Sequence[str], who: str, stacked: bool = False
    ) -> None:
        if not stacked and len(models) != 1:
            raise DKError(f"{who}: a feature tap on {len(models)} models must stack their outputs")
        self.names, self.stacked = list(names), stacked
        self._outputs: list[dict[str, torch.Tensor]] = [{} for _ in models]
        self._handles: list[Any] = []
        for i, model in enumerate(models):
            for name in self.names:
                layer = submodule(model, name, who)
                self._handles.append(
                    layer.register_forward_hook(functools.partial(self._keep, i, name))
                )
        self.who = who

    def _keep(self, index: int, name: str, module: nn.Module, args: Any, output: Any) -> None:
        self._outputs[index][name] = output

    def take(self) -> dict[str, torch.Tensor]:
        out = {}
        for name in self.names:
            per_model = [outputs.pop(name, None) for outputs in self._outputs]
            if any(t is None for t in per_model):
                raise DKError(
                    f"{self.who}'s layer {name!r} did not run in the last forward pass",
                    "name a layer that the model's forward uses",
                )
            per_model = [t.clone() if t.is_inference() else t for t in per_model]
            out[name] = torch.stack(per_model) if self.stacked else per_model[0]
        return out

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> FeatureTap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
