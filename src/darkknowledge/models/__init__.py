"""Student and teacher networks, registered by name (``@models.register``)."""

from darkknowledge.models.base import batchable, build_model, model_config, models
from darkknowledge.models.batched import BatchedLinear, BatchedMLP
from darkknowledge.models.cnn import CNN, CNNSpec
from darkknowledge.models.features import FeatureTap, feature_width, submodule
from darkknowledge.models.files import (
    MODEL_FILE,
    load_model,
    model_bytes,
    model_fingerprint,
    resolve_model_path,
    save_model,
)
from darkknowledge.models.mlp import MLP, MLPSpec

__all__ = [
    "CNN",
    "CNNSpec",
    "MLP",
    "BatchedLinear",
    "BatchedMLP",
    "FeatureTap",
    "MODEL_FILE",
    "MLPSpec",
    "batchable",
    "build_model",
    "feature_width",
    "load_model",
    "model_bytes",
    "model_config",
    "model_fingerprint",
    "models",
    "resolve_model_path",
    "save_model",
    "submodule",
]
