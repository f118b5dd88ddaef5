"""Student and teacher networks, registered by name (``@models.register``)."""

from darkknowledge.models.base import build_model, model_config, models
from darkknowledge.models.mlp import MLP

__all__ = ["MLP", "build_model", "model_config", "models"]
