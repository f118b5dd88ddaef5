"""Generalist + specialists as one predictor, and distilling it back into one network (the debt
the paper leaves, §5: it never distilled the specialists into one model).

:func:`predict` runs the whole system over a dataset in chunks: the generalist's distributions,
the active specialists (the generalist's top-n classes), their outputs, and the combined q.
:func:`distill_into_one` trains one model of the generalist's size on the combined
distributions as soft targets (computed once over the training images, like the teacher-output
store) plus a small hard-label term.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from darkknowledge.data import TensorDataset
from darkknowledge.errors import DKError
from darkknowledge.losses import hard_target_loss, soft_target_loss
from darkknowledge.models import BatchedMLP
from darkknowledge.specialists.combine import active_specialists, combine, dense_specialist_probs


@torch.no_grad()
def predict(generalist: nn.Module, specialists: BatchedMLP, clusters: torch.Tensor, data: TensorDataset, top_n: int = 1, chunk: int = 2000) -> dict[str, torch.Tensor]:
    """``p_general`` (N, C), ``active`` (N, M) and the combined ``q`` (N, C) over ``data``."""
    generalist.eval()
    specialists.eval()
    device = next(generalist.parameters()).device
    clusters = clusters.to(device)
    out: dict[str, list[torch.Tensor]] = {"p_general": [], "active": [], "q": []}
    for start in range(0, len(data), chunk):
        x = data.features(torch.arange(start, min(start + chunk, len(data)))).to(device)
        p_g = generalist(x).double().softmax(dim=1)
        per = specialists(x.unsqueeze(0).expand(specialists.replicas, -1, -1)).double().softmax(dim=-1)  # (M, B, size + 1)
        active = active_specialists(p_g, clusters, top_n)
        p_s = dense_specialist_probs(list(per), clusters)
        out["p_general"].append(p_g.float())
        out["active"].append(active)
        out["q"].append(combine(p_g, p_s, clusters, active).float())
    return {k: torch.cat(v) for k, v in out.items()}


@dataclass(frozen=True)
class DistillSettings:
    """The single student: SGD + momentum with a cosine schedule over ``epochs`` of
    ``batch_size``; soft targets at ``temperature`` (T² inside) plus ``hard_weight`` × CE."""

    epochs: int = 10
    batch_size: int = 100
    lr: float = 0.05
    momentum: float = 0.9
    temperature: float = 2.0
    hard_weight: float = 0.1
    seed: int = 0


def distill_into_one(student: nn.Module, q_train: torch.Tensor, train: TensorDataset, settings: DistillSettings) -> dict[str, float]:
    """Train ``student`` (in place) on the system's combined distributions ``q_train`` (N, C)
    over ``train``: ``T²·KL(q_T ‖ student_T) + hard_weight · CE(labels)``, with ``log q`` serving
    as the teacher's logits (softmax(log q / T) is q softened at T)."""
    if q_train.shape[0] != len(train):
        raise DKError(f"{q_train.shape[0]} target distributions for {len(train)} training images", "compute q over the same training images")
    device = next(student.parameters()).device
    g = torch.Generator().manual_seed(settings.seed)
    teacher_logits = q_train.clamp_min(1e-12).log().to(device)
    steps_per_epoch = math.ceil(len(train) / settings.batch_size)
    opt = torch.optim.SGD(student.parameters(), lr=settings.lr, momentum=settings.momentum)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, settings.epochs * steps_per_epoch)
    started = time.perf_counter()
    student.train()
    loss = torch.zeros(())
    for _ in range(settings.epochs):
        order = torch.randperm(len(train), generator=g)
        for start in range(0, len(train), settings.batch_size):
            pos = order[start : start + settings.batch_size]
            x = train.features(pos).to(device)
            z = student(x)
            loss = soft_target_loss(z, teacher_logits[pos.to(device)], settings.temperature)
            if settings.hard_weight and train.labels is not None:
                loss = loss + settings.hard_weight * hard_target_loss(z, train.labels[pos].to(device))
            if not torch.isfinite(loss):
                raise DKError(f"the student's loss is not finite ({float(loss)})", "lower the step size")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    student.eval()
    return {"final_loss": float(loss.detach()), "seconds": time.perf_counter() - started}


def accuracy(model: nn.Module, data: TensorDataset) -> float:
    with torch.no_grad():
        model.eval()
        device = next(model.parameters()).device
        z = torch.cat([model(data.features(torch.arange(s, min(s + 2000, len(data)))).to(device)) for s in range(0, len(data), 2000)])
    return float((z.argmax(dim=1).cpu() == data.labels).float().mean())


__all__ = ["DistillSettings", "accuracy", "distill_into_one", "predict"]
