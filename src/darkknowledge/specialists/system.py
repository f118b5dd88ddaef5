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
from pathlib import Path

import torch
from torch import nn

from darkknowledge.data import TensorDataset
from darkknowledge.errors import DKError
from darkknowledge.losses import hard_target_loss, soft_target_loss
from darkknowledge.models import BatchedMLP
from darkknowledge.specialists.combine import combine, dense_specialist_probs
from darkknowledge.specialists.resume import TrainingCheckpoints, fingerprint


@torch.no_grad()
def predict(
    generalist: nn.Module,
    specialists: BatchedMLP,
    clusters: torch.Tensor,
    data: TensorDataset,
    top_n: int = 1,
    *,
    keep_probs: bool = True,
    budget: int = 20_000_000,
) -> dict[str, torch.Tensor]:
    """The whole system over ``data``: ``active`` (N, M), and either the distributions
    ``p_general`` and ``q`` (N, C) or, with ``keep_probs=False``, only their argmaxes
    ``pred_general`` and ``pred`` (N,) (what a 15,000-class label space can afford to keep).

    The images are taken in order of the generalist's top class, so that a chunk's images share
    few active specialists, and each chunk combines over those specialists only (an inactive
    specialist adds nothing to the objective, so this is exact); a chunk holds as many images as
    keep its dense (images × specialists × classes) layout within ``budget`` elements.
    """
    generalist.eval()
    specialists.eval()
    device = next(generalist.parameters()).device
    clusters = clusters.to(device)
    n, classes = len(data), clusters.shape[1]
    top = (
        torch.cat(
            [
                generalist(data.features(torch.arange(s, min(s + 2000, n))).to(device))
                .topk(top_n, dim=1)
                .indices.cpu()
                for s in range(0, n, 2000)
            ]
        )
        if n
        else torch.zeros(0, top_n, dtype=torch.long)
    )
    order = torch.argsort(top[:, 0], stable=True)
    covering = clusters.T.cpu()  # (C, M)
    active = covering[top].any(dim=1)  # (N, M)
    out: dict[str, torch.Tensor] = {"active": active}
    if keep_probs:
        out["p_general"], out["q"] = torch.zeros(n, classes), torch.zeros(n, classes)
    else:
        out["pred_general"], out["pred"] = (
            torch.zeros(n, dtype=torch.long),
            torch.zeros(n, dtype=torch.long),
        )
    start = 0
    while start < n:
        stop = _chunk_end(active[order], start, classes, budget)
        pos = order[start:stop]
        x = data.features(pos).to(device)
        p_g = generalist(x).double().softmax(dim=1)
        used = torch.nonzero(active[pos].any(dim=0)).flatten()
        q = p_g
        if len(used):
            per = (
                specialists(x.unsqueeze(0).expand(specialists.replicas, -1, -1))[used.to(device)]
                .double()
                .softmax(dim=-1)
            )
            p_s = dense_specialist_probs(list(per), clusters[used.to(device)])
            q = combine(p_g, p_s, clusters[used.to(device)], active[pos][:, used].to(device))
        if keep_probs:
            out["p_general"][pos], out["q"][pos] = p_g.float().cpu(), q.float().cpu()
        else:
            out["pred_general"][pos], out["pred"][pos] = (
                p_g.argmax(dim=1).cpu(),
                q.argmax(dim=1).cpu(),
            )
        start = stop
    return out


def _chunk_end(active: torch.Tensor, start: int, classes: int, budget: int) -> int:
    """The end of the chunk that starts at ``start`` (rows of ``active`` in processing order):
    as many rows as keep rows × (their specialists in use) × classes within ``budget``, at
    least one and at most 2,000."""
    union = torch.cumsum(active[start : start + 2000].int(), dim=0) > 0  # specialists used so far
    cost = torch.arange(1, len(union) + 1) * union.sum(dim=1).clamp_min(1) * classes
    fits = int((cost <= budget).sum())
    return start + max(1, fits)


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


def distill_into_one(
    student: nn.Module,
    q_train: torch.Tensor,
    train: TensorDataset,
    settings: DistillSettings,
    *,
    checkpoints: str | Path | None = None,
) -> dict[str, float]:
    """Train ``student`` (in place) on the system's combined distributions ``q_train`` (N, C)
    over ``train``: ``T²·KL(q_T ‖ student_T) + hard_weight · CE(labels)``, with ``log q`` serving
    as the teacher's logits (softmax(log q / T) is q softened at T).

    With ``checkpoints`` (a directory) the state is saved after every epoch and a call that finds
    a checkpoint of the same student, targets and settings continues from it, to the same bits
    as an uninterrupted run; ``seconds`` then counts the interrupted run's time too."""
    if q_train.shape[0] != len(train):
        raise DKError(
            f"{q_train.shape[0]} target distributions for {len(train)} training images",
            "compute q over the same training images",
        )
    device = next(student.parameters()).device
    g = torch.Generator().manual_seed(settings.seed)
    teacher_logits = q_train.clamp_min(1e-12).log().to(device)
    steps_per_epoch = math.ceil(len(train) / settings.batch_size)
    opt = torch.optim.SGD(student.parameters(), lr=settings.lr, momentum=settings.momentum)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, settings.epochs * steps_per_epoch)
    run = TrainingCheckpoints(
        checkpoints,
        1,
        fingerprint(settings, q_train, *student.state_dict().values()),
        "distilled network (another student, other targets or settings)",
    )
    first, earlier_seconds = run.resume(student, opt, sched, g)
    started = time.perf_counter()
    student.train()
    loss = torch.zeros(())
    for epoch in range(first, settings.epochs):
        order = torch.randperm(len(train), generator=g)
        for start in range(0, len(train), settings.batch_size):
            pos = order[start : start + settings.batch_size]
            x = train.features(pos).to(device)
            z = student(x)
            loss = soft_target_loss(z, teacher_logits[pos.to(device)], settings.temperature)
            if settings.hard_weight and train.labels is not None:
                loss = loss + settings.hard_weight * hard_target_loss(
                    z, train.labels[pos].to(device)
                )
            if not torch.isfinite(loss):
                raise DKError(
                    f"the student's loss is not finite ({float(loss)})", "lower the step size"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if run.due(epoch + 1, settings.epochs):
            run.save(
                epoch + 1, student, opt, sched, g, earlier_seconds + time.perf_counter() - started
            )
    student.eval()
    return {
        "final_loss": float(loss.detach()),
        "seconds": earlier_seconds + time.perf_counter() - started,
    }


def accuracy(model: nn.Module, data: TensorDataset) -> float:
    with torch.no_grad():
        model.eval()
        device = next(model.parameters()).device
        z = torch.cat(
            [
                model(data.features(torch.arange(s, min(s + 2000, len(data)))).to(device))
                for s in range(0, len(data), 2000)
            ]
        )
    return float((z.argmax(dim=1).cpu() == data.labels).float().mean())


__all__ = ["DistillSettings", "accuracy", "distill_into_one", "predict"]
