"""Training: the one loop, optimizers and schedules, evaluation, checkpoints."""

from darkknowledge.train.evaluate import classification_metrics, evaluate, predict_logits
from darkknowledge.train.loop import FitInputs, fit
from darkknowledge.train.run import prepare_data, resolve_device, run
from darkknowledge.train.signals import Interrupted

__all__ = [
    "FitInputs",
    "Interrupted",
    "classification_metrics",
    "evaluate",
    "fit",
    "predict_logits",
    "prepare_data",
    "resolve_device",
    "run",
]
