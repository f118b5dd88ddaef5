"""Training: the one loop, optimizers and schedules, evaluation, checkpoints."""

from darkknowledge.config import OptimConfig
from darkknowledge.train.batches import IterableBatches
from darkknowledge.train.evaluate import (
    classification_metrics,
    combined_logits,
    ensemble_metrics,
    evaluate,
    evaluate_batches,
    evaluate_replicas,
    predict_logits,
)
from darkknowledge.train.fit_model import fit_model
from darkknowledge.train.loop import FitInputs, fit
from darkknowledge.train.run import prepare_data, resolve_device, run
from darkknowledge.train.signals import Interrupted

__all__ = [
    "FitInputs",
    "Interrupted",
    "OptimConfig",
    "IterableBatches",
    "classification_metrics",
    "combined_logits",
    "ensemble_metrics",
    "evaluate",
    "evaluate_batches",
    "evaluate_replicas",
    "fit",
    "fit_model",
    "predict_logits",
    "prepare_data",
    "resolve_device",
    "run",
]
