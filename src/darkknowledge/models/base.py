"""The model registry and the builder that validates a model's config."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from torch import nn

from darkknowledge.config import build_dataclass
from darkknowledge.errors import DKError, short
from darkknowledge.registry import Registry

models: Registry[type] = Registry("model")


def build_model(name: str, params: dict[str, Any], in_features: int, num_classes: int) -> nn.Module:
    """Build a registered model from its config (``params`` are the spec dataclass's fields)."""
    spec_cls = models.get(name)
    spec = build_dataclass(spec_cls, params, f"model ({name})")
    count = getattr(spec, "parameter_count", None)
    if count is not None:
        check_fits_in_memory(
            f"model ({name}) {short(params, 60)} with {in_features} inputs and {num_classes} "
            "classes",
            count(in_features, num_classes),
        )
    return spec.build(in_features=in_features, num_classes=num_classes)


def batchable(name: str) -> bool:
    """Whether replicas of model ``name`` can train as one batched model (``replicas``)."""
    return bool(getattr(models.get(name), "batchable", False))


TRAINING_COPIES = 4  # weights, gradients, optimizer buffers, a checkpoint being written


def available_memory() -> int:
    """Bytes of memory this machine can still give (MemAvailable; the physical pages elsewhere)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: no limit from here


def check_fits_in_memory(what: str, parameters: int) -> None:
    """Refuse a model whose float32 training state cannot fit in memory, before it is allocated
    (a width of 10⁹ in a config or in a model file's metadata otherwise ends in an allocator
    traceback, or in the machine swapping)."""
    need, free = parameters * 4 * TRAINING_COPIES, available_memory()
    if need > free:
        raise DKError(
            f"{what} has {parameters:,} parameters: training it needs about {need / 1e9:,.1f} GB, "
            f"this machine has {free / 1e9:,.1f} GB available",
            "use smaller layer widths (or a machine with more memory)",
        )


def model_config(model: nn.Module) -> dict[str, Any]:
    """Everything needed to rebuild ``model``: name, spec fields, input and class counts."""
    spec = model.spec
    return {
        "name": spec.registered_name,
        "params": dataclasses.asdict(spec),
        "in_features": model.in_features,
        "num_classes": model.num_classes,
    }
