"""K same-architecture MLPs as one batched computation (seeds, ensemble members, sweeps).

Every weight is stacked along a leading replica dimension: layer ``i`` holds ``weight (K, out, in)``
and ``bias (K, out)``, and one ``torch.baddbmm`` computes all K layers at once. The state-dict
keys are the :class:`~darkknowledge.models.MLP` keys, so replica ``k``'s weights are
``{name: t[k]}``: :meth:`BatchedMLP.unstack` returns K ordinary MLPs, saved as ordinary model
files. Replicas share nothing but the kernels: a loss that sums the K per-model losses gives each
model exactly its stand-alone gradient, and elementwise optimizers (SGD, Adam, the paper's)
update each slice as they would update that model alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from darkknowledge.errors import DKError
from darkknowledge.models.mlp import MLP, MLPSpec


class BatchedLinear(nn.Module):
    """K independent linear maps: ``y[k] = x[k] @ weight[k]ᵀ + bias[k]``."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)  # (K, out, in)
        self.bias = nn.Parameter(bias)  # (K, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (K, batch, in) → (K, batch, out)."""
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))


class BatchedMLP(nn.Module):
    """K MLPs of one :class:`MLPSpec` with stacked weights; dropout is drawn per element.

    Built from K ordinary models (:meth:`from_models`), so each replica keeps its own
    initialization (its own seed). Input ``(K, batch, in_features)``, output ``(K, batch,
    classes)``.
    """

    def __init__(
        self, spec: MLPSpec, in_features: int, num_classes: int, layers: Sequence[BatchedLinear]
    ) -> None:
        super().__init__()
        self.spec = spec
        self.in_features = in_features
        self.num_classes = num_classes
        self.layers = nn.ModuleList(layers)
        self.replicas = int(self.layers[0].weight.shape[0])

    @classmethod
    def from_models(cls, models: Sequence[MLP]) -> BatchedMLP:
        if not models:
            raise DKError("BatchedMLP needs at least one model", "pass a list of MLPs")
        first = models[0]
        for m in models:
            if (
                not isinstance(m, MLP)
                or m.spec != first.spec
                or (m.in_features, m.num_classes) != (first.in_features, first.num_classes)
            ):
                raise DKError(
                    "BatchedMLP stacks MLPs of one architecture only",
                    "build every replica from the same model config",
                )
        layers = [
            BatchedLinear(
                torch.stack([m.layers[i].weight.detach() for m in models]).clone(),
                torch.stack([m.layers[i].bias.detach() for m in models]).clone(),
            )
            for i in range(len(first.layers))
        ]
        return cls(first.spec, first.in_features, first.num_classes, layers).to(
            first.layers[0].weight.device
        )

    def unstack(self) -> list[MLP]:
        """K ordinary MLPs holding copies of the replicas' weights (on this model's device)."""
        out = []
        for k in range(self.replicas):
            m = MLP(self.spec, self.in_features, self.num_classes).to(self.layers[0].weight.device)
            m.load_state_dict(
                {name: t[k].detach().clone() for name, t in self.state_dict().items()}
            )
            out.append(m)
        return out

    # The same computation as one MLP, on (K, batch, features) tensors through batched layers:
    # forward is x: (K, batch, in_features) → logits (K, batch, classes).
    forward = MLP.forward
    max_norm_weights = MLP.max_norm_weights
    project_max_norm_ = MLP.project_max_norm_
