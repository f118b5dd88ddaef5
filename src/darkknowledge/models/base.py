"""The model registry and the builder that validates a model's config."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from darkknowledge.config import build_dataclass
from darkknowledge.registry import Registry

models: Registry[type] = Registry("model")


def build_model(name: str, params: dict[str, Any], in_features: int, num_classes: int) -> nn.Module:
    """Build a registered model from its config (``params`` are the spec dataclass's fields)."""
    spec_cls = models.get(name)
    spec = build_dataclass(spec_cls, params, f"model ({name})")
    return spec.build(in_features=in_features, num_classes=num_classes)


def model_config(model: nn.Module) -> dict[str, Any]:
    """Everything needed to rebuild ``model``: name, spec fields, input and class counts."""
    spec = model.spec
    return {
        "name": spec.registered_name,
        "params": dataclasses.asdict(spec),
        "in_features": model.in_features,
        "num_classes": model.num_classes,
    }
