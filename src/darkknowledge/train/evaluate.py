"""Evaluation at temperature 1: errors, accuracy, NLL, calibration, agreement with the teacher.

Temperature never reaches this module (DESIGN.md principle 8): a deployed student predicts with
plain softmax, whatever temperature it was trained at.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from darkknowledge.data import TensorDataset
from darkknowledge.train.batches import split_batch


@torch.inference_mode()
def predict_logits(
    model: nn.Module, dataset: TensorDataset, batch_size: int = 2000
) -> torch.Tensor:
    """Logits of ``model`` (in eval mode) over the whole dataset, float32: (N, classes), or
    (K, N, classes) for a batched model of K replicas (one forward pass serves all K)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    replicas = getattr(model, "replicas", None)
    out = []
    for start in range(0, len(dataset), batch_size):
        pos = torch.arange(
            start, min(start + batch_size, len(dataset)), device=dataset.images.device
        )
        x = dataset.features(pos).to(device)
        out.append(
            model(x if replicas is None else x.unsqueeze(0).expand(replicas, *x.shape)).float()
        )
    model.train(was_training)
    return torch.cat(out, dim=-2)


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE with equal-width confidence bins: Σ_b (n_b/N)·|accuracy_b − confidence_b|."""
    conf, pred = probs.max(dim=1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1, device=probs.device)
    which = torch.bucketize(conf, edges[1:-1], right=True)
    acc = torch.zeros(bins, device=probs.device).scatter_add_(0, which, correct)
    cnf = torch.zeros(bins, device=probs.device).scatter_add_(0, which, conf)
    return float(((acc - cnf).abs()).sum() / len(labels))


def classification_metrics(
    logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None = None
) -> dict[str, float]:
    """logits: (N, C); labels: (N,); teacher_logits: (N, C) or (members, N, C) (arithmetic mean)."""
    logits, labels = logits.float(), labels.to(logits.device)
    pred = logits.argmax(dim=1)
    errors = int((pred != labels).sum())
    n = len(labels)
    out = {
        "errors": errors,
        "n": n,
        "accuracy": 1.0 - errors / n,
        "nll": float(F.cross_entropy(logits, labels)),
        "ece": expected_calibration_error(logits.softmax(dim=1), labels),
    }
    if teacher_logits is not None:
        t = teacher_logits.float().to(logits.device)
        t_probs = t.softmax(dim=-1).mean(dim=0) if t.dim() == 3 else t.softmax(dim=-1)
        out["agreement"] = float((t_probs.argmax(dim=1) == pred).float().mean())
    return out


COMBINATIONS = ("arithmetic", "geometric")


def combined_logits(member_logits: torch.Tensor, combine: str = "arithmetic") -> torch.Tensor:
    """An ensemble's prediction at temperature 1 as logits (N, C) from its members' (M, N, C):
    ``arithmetic``, the log of the mean of the members' distributions (the paper's); ``geometric``,
    the mean of their logits (the renormalized geometric mean of their distributions)."""
    z = member_logits.float()
    if combine == "geometric":
        return z.mean(dim=0)
    return torch.logsumexp(z.log_softmax(dim=-1), dim=0) - math.log(z.shape[0])


def ensemble_metrics(
    member_logits: torch.Tensor, labels: torch.Tensor
) -> dict[str, dict[str, float]]:
    """:func:`classification_metrics` of every combination of an ensemble's members (M, N, C)."""
    return {
        c: classification_metrics(combined_logits(member_logits, c), labels) for c in COMBINATIONS
    }


def evaluate(
    model: nn.Module, dataset: TensorDataset, teacher_logits: torch.Tensor | None = None
) -> dict[str, float]:
    return classification_metrics(predict_logits(model, dataset), dataset.labels, teacher_logits)


def evaluate_replicas(
    model: nn.Module, dataset: TensorDataset, teacher_logits: torch.Tensor | None = None
) -> list[dict[str, float]]:
    """:func:`evaluate` for each replica of a batched model (one forward pass for all K)."""
    logits = predict_logits(model, dataset)
    return [classification_metrics(z, dataset.labels, teacher_logits) for z in logits]


@torch.inference_mode()
def evaluate_batches(
    model: nn.Module,
    batches: Iterable,
    teacher: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """:func:`evaluate` over any iterable of ``(inputs, labels)`` batches (and the teacher's
    agreement).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits, labels, t_logits = [], [], []
    for item in batches:
        x, y = split_batch(item)
        x = x.to(device)
        logits.append(model(x).float())
        labels.append(None if y is None else y.to(device))
        if teacher is not None:
            t = teacher(x).float()
            t_logits.append(t.unsqueeze(0) if t.dim() == 2 else t)
    model.train(was_training)
    z, t_all = torch.cat(logits), (torch.cat(t_logits, dim=1) if t_logits else None)
    if any(y is None for y in labels):  # unlabelled: what can be measured without labels
        out: dict[str, float] = {"n": len(z)}
        if t_all is not None:
            t_probs = t_all.softmax(dim=-1).mean(dim=0)
            out["agreement"] = float((t_probs.argmax(dim=1) == z.argmax(dim=1)).float().mean())
        return out
    return classification_metrics(z, torch.cat(labels), t_all)
