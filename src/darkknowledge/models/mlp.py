"""Fully connected ReLU nets with dropout and max-norm (the paper's MNIST nets, §3)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from darkknowledge.errors import DKError, short
from darkknowledge.models.base import models

MAX_LAYERS = 1000


@models.register("mlp")
@dataclass(frozen=True)
class MLPSpec:
    """Multilayer perceptron: ``in → hidden... → classes`` with ReLU.

    The teacher of §3 is ``hidden=[1200, 1200], input_dropout=0.2, hidden_dropout=0.5,
    max_norm=sqrt(15), init_std=0.01`` (Hinton et al. 2012, App. A.1); the student is
    ``hidden=[800, 800]`` with everything else off.

    Attributes:
        hidden: units per hidden layer (the paper's teacher: [1200, 1200]; student: [800, 800]).
        input_dropout: dropout probability on the inputs (the teacher: 0.2).
        hidden_dropout: dropout probability on every hidden layer (the teacher: 0.5).
        max_norm: bound on each hidden unit's incoming weight norm (the teacher: √15); null = none.
        init_std: weights initialized N(0, init_std²), biases 0; null = PyTorch's default.
    """

    registered_name: ClassVar[str] = "mlp"
    batchable: ClassVar[bool] = True  # replicas stack MLPs into one BatchedMLP
    hidden: list[int] = field(default_factory=lambda: [800, 800])
    input_dropout: float = 0.0
    hidden_dropout: float = 0.0
    max_norm: float | None = None
    init_std: float | None = None

    def __post_init__(self) -> None:
        if len(self.hidden) > MAX_LAYERS:
            raise DKError(
                f"model.hidden has {len(self.hidden):,} layers, more than {MAX_LAYERS}",
                "give a list of layer widths, e.g. [800, 800]",
            )
        if not self.hidden or any(int(h) < 1 for h in self.hidden):
            raise DKError(
                f"model.hidden={short(self.hidden)} is invalid",
                "give a list of positive layer widths, e.g. [800, 800]",
            )
        for key in ("input_dropout", "hidden_dropout"):
            p = getattr(self, key)
            if not 0.0 <= p < 1.0:
                raise DKError(
                    f"model.{key}={p} is out of range", "use a dropout probability in [0, 1)"
                )
        if self.max_norm is not None and not (self.max_norm > 0 and math.isfinite(self.max_norm)):
            raise DKError(
                f"model.max_norm={self.max_norm} is invalid", "use a positive number or null"
            )
        if self.init_std is not None and not self.init_std > 0:
            raise DKError(
                f"model.init_std={self.init_std} is invalid", "use a positive number or null"
            )

    def parameter_count(self, in_features: int, num_classes: int) -> int:
        """How many parameters ``build`` would allocate (checked before it does)."""
        widths = [in_features, *[int(h) for h in self.hidden], num_classes]
        return sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:], strict=True))

    def build(self, in_features: int, num_classes: int) -> MLP:
        return MLP(self, in_features, num_classes)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout: zero each element with probability ``p``, scale the rest by 1/(1−p).

    On the CPU the mask comes from ``rand_like(x) >= p``: the same distribution as
    ``F.dropout``'s Bernoulli draw at about a third of its cost there (``bernoulli_`` was ~30%
    of a teacher step on 2 cores). Elsewhere PyTorch's fused kernel is used.
    """
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    return torch.where(torch.rand_like(x) >= p, x * (1.0 / (1.0 - p)), 0.0)


class MLP(nn.Module):
    """ReLU MLP; dropout is inverted, so eval mode is the paper's "mean network"."""

    def __init__(self, spec: MLPSpec, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.spec = spec
        self.in_features = in_features
        self.num_classes = num_classes
        widths = [in_features, *[int(h) for h in spec.hidden], num_classes]
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        if spec.init_std is not None:
            for layer in self.layers:
                nn.init.normal_(layer.weight, 0.0, spec.init_std)
                nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, in_features) → logits (batch, classes)."""
        x = dropout(x, self.spec.input_dropout, self.training)
        for layer in self.layers[:-1]:
            x = dropout(torch.relu(layer(x)), self.spec.hidden_dropout, self.training)
        return self.layers[-1](x)

    def max_norm_weights(self) -> list[torch.Tensor]:
        """Weights whose rows (each hidden unit's incoming vector) the max-norm constraint
        bounds.
        """
        return [layer.weight for layer in self.layers[:-1]] if self.spec.max_norm else []

    @torch.no_grad()
    def project_max_norm_(self) -> None:
        """Rescale every hidden unit's incoming weight vector to norm ≤ max_norm (in place)."""
        for w in self.max_norm_weights():
            # rows of (out, in), or of every replica's (K, out, in) at once in a BatchedMLP
            w.view(-1, w.shape[-1]).renorm_(2, 0, self.spec.max_norm)
