"""Specialists (Hinton et al. 2015, §5): one model per cluster of confusable classes, trained
together as one batched computation.

Specialist ``m`` predicts its cluster's classes (in class order) plus one dustbin class that
stands for every other class. It starts as the generalist (every hidden layer copied; the output
rows of its classes copied, the dustbin row the mean of the other classes' rows with their
log-sum-exp bias), trains on batches half from its cluster's images and half from the rest, and
afterwards its dustbin logit is raised to undo that oversampling (:func:`dustbin_offset`). All
specialists share the generalist's architecture and one cluster size, so they are one
:class:`~darkknowledge.models.BatchedMLP`: one batched step trains them all, each on its own
batch, and each gets exactly its stand-alone gradient. Optionally the generalist's soft targets
(collapsed onto the specialist's classes + dustbin) regularize them (§6: specialists overfit fast).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from darkknowledge.data import TensorDataset
from darkknowledge.data.augment import jitter
from darkknowledge.errors import DKError
from darkknowledge.models import MLP, BatchedMLP
from darkknowledge.specialists.resume import TrainingCheckpoints, fingerprint


def label_maps(clusters: torch.Tensor) -> torch.Tensor:
    """(M, C) long: class c's label for specialist m: its rank within the cluster, or the dustbin
    (the cluster's size) for a class outside it. Every cluster has the same size."""
    sizes = clusters.sum(dim=1)
    if clusters.dim() != 2 or clusters.dtype != torch.bool or len(set(sizes.tolist())) != 1:
        raise DKError(
            f"clusters must be an (M, C) bool matrix of equal-size rows, got {clusters.dtype} "
            f"{tuple(clusters.shape)} sizes {sorted(set(sizes.tolist()))}",
            "build them with confusable_clusters(probs, k, size)",
        )
    size = int(sizes[0])
    if not 1 <= size < clusters.shape[1]:
        raise DKError(
            f"cluster size {size} of {clusters.shape[1]} classes leaves no dustbin",
            "use clusters smaller than the class set",
        )
    ranks = clusters.long().cumsum(dim=1) - 1
    return torch.where(clusters, ranks, torch.full_like(ranks, size))


def collapse(probs: torch.Tensor, clusters: torch.Tensor) -> torch.Tensor:
    """Distributions over C classes (N, C) seen by each specialist: (M, N, size + 1), the cluster's
    classes in order and the dustbin holding the rest of the mass."""
    maps = label_maps(clusters)
    size = int(clusters[0].sum())
    out = torch.zeros(
        clusters.shape[0], probs.shape[0], size + 1, dtype=probs.dtype, device=probs.device
    )
    return out.scatter_add_(
        2,
        maps.unsqueeze(1).expand(-1, probs.shape[0], -1),
        probs.unsqueeze(0).expand(clusters.shape[0], -1, -1),
    )


def from_generalist(generalist: MLP, clusters: torch.Tensor) -> BatchedMLP:
    """The specialists at their start: the generalist with its output layer mapped to each
    cluster's classes + a dustbin (mean weight row of the other classes, log-sum-exp bias)."""
    if not isinstance(generalist, MLP):
        raise DKError(
            f"specialists start from a registered MLP generalist, got {type(generalist).__name__}",
            "train the generalist with model.name=mlp",
        )
    if clusters.shape[1] != generalist.num_classes:
        raise DKError(
            f"clusters cover {clusters.shape[1]} classes, the generalist predicts "
            f"{generalist.num_classes}",
            "find the clusters from this generalist's predictions",
        )
    size = int(clusters[0].sum())
    label_maps(clusters)  # checks the clusters
    out_layer = generalist.layers[-1]
    members = []
    for row in clusters.to(out_layer.weight.device):
        m = MLP(generalist.spec, generalist.in_features, size + 1).to(out_layer.weight.device)
        with torch.no_grad():
            for mine, theirs in zip(m.layers[:-1], generalist.layers[:-1], strict=True):
                mine.weight.copy_(theirs.weight)
                mine.bias.copy_(theirs.bias)
            rest = ~row
            m.layers[-1].weight.copy_(
                torch.cat([out_layer.weight[row], out_layer.weight[rest].mean(dim=0, keepdim=True)])
            )
            m.layers[-1].bias.copy_(
                torch.cat(
                    [
                        out_layer.bias[row],
                        torch.logsumexp(out_layer.bias[rest], dim=0, keepdim=True),
                    ]
                )
            )
        members.append(m)
    return BatchedMLP.from_models(members)


def dustbin_offset(
    clusters: torch.Tensor, labels: torch.Tensor, cluster_share: float = 0.5
) -> torch.Tensor:
    """(M,) the amount to add to each specialist's dustbin logit after training on batches whose
    ``cluster_share`` comes from its cluster: ``log((1 − π)/π) − log((1 − s)/s)`` with π the
    cluster's share of the training labels and s the batches'. It restores the true odds of
    dustbin against cluster (the paper raises the dustbin "by the log of the proportion by which
    the specialist class is oversampled", log(s/π), which this approaches when π is small)."""
    in_cluster = clusters[:, labels].float().mean(dim=1).clamp(1e-6, 1 - 1e-6)
    return torch.log((1 - in_cluster) / in_cluster) - math.log((1 - cluster_share) / cluster_share)


@dataclass(frozen=True)
class SpecialistSettings:
    """How the specialists train: SGD with momentum, a cosine schedule over ``steps`` batched
    steps of ``batch_size`` images each (``cluster_share`` of them from the cluster), each image
    shifted by up to ``jitter`` pixels (fresh per draw; 0 = none), and optionally the
    generalist's soft targets at ``temperature`` with weight ``soft_weight`` (0 = hard labels
    only)."""

    steps: int = 1000
    batch_size: int = 100
    lr: float = 0.01
    momentum: float = 0.9
    cluster_share: float = 0.5
    soft_weight: float = 0.0
    temperature: float = 2.0
    jitter: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if (
            self.steps < 1
            or self.batch_size < 2
            or not self.lr > 0
            or not 0 < self.cluster_share < 1
            or self.soft_weight < 0
            or not self.temperature > 0
            or not 0 <= self.jitter <= 8
        ):
            raise DKError(
                f"specialist settings out of range: {self}",
                "use steps ≥ 1, batch_size ≥ 2, lr > 0, 0 < cluster_share < 1, soft_weight ≥ 0, "
                "temperature > 0, 0 ≤ jitter ≤ 8",
            )


def _draw(pools: list[torch.Tensor], count: int, g: torch.Generator) -> torch.Tensor:
    """(M, count) dataset positions, each row drawn uniformly (with replacement) from its pool."""
    return torch.stack([pool[torch.randint(len(pool), (count,), generator=g)] for pool in pools])


def train_specialists(
    generalist: MLP,
    clusters: torch.Tensor,
    train: TensorDataset,
    settings: SpecialistSettings,
    generalist_probs: torch.Tensor | None = None,
    *,
    checkpoints: str | Path | None = None,
    checkpoint_every: int = 500,
) -> tuple[BatchedMLP, dict[str, float]]:
    """Train one specialist per cluster as one batched model; returns it with its dustbin logits
    already corrected, and a few numbers (final loss, seconds). ``generalist_probs`` (N, C), the
    generalist's distributions at ``settings.temperature`` over ``train``, enable the soft term.

    With ``checkpoints`` (a directory) the training state (weights, optimizer, schedule, random
    generator) is saved every ``checkpoint_every`` steps, and a call that finds a checkpoint of
    the same clusters, settings and generalist continues from it: the result is the same, bit
    for bit, as an uninterrupted run's. ``seconds`` then counts the interrupted run's time too."""
    if train.labels is None:
        raise DKError(
            "specialists train on labelled images; the transfer set is unlabelled",
            "use a labelled training split",
        )
    if settings.soft_weight and generalist_probs is None:
        raise DKError(
            "soft_weight > 0 needs the generalist's distributions over the training images",
            "pass generalist_probs, or soft_weight=0",
        )
    started = time.perf_counter()
    model = from_generalist(generalist, clusters)
    device = model.layers[0].weight.device
    maps = label_maps(clusters).to(device)
    labels = train.labels.to(device)
    member = clusters.to(device)[:, labels]  # (M, N): image n is in cluster m
    inside = [torch.nonzero(r).flatten().cpu() for r in member]
    outside = [torch.nonzero(~r).flatten().cpu() for r in member]
    if any(len(p) == 0 for p in inside + outside):
        raise DKError(
            "a cluster has no training image inside it or none outside it",
            "check the clusters against the training labels",
        )
    soft_targets = (
        collapse(generalist_probs.to(device), clusters.to(device)).log()
        if settings.soft_weight
        else None
    )
    g = torch.Generator().manual_seed(settings.seed)
    half = int(round(settings.batch_size * settings.cluster_share))
    opt = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, settings.steps)
    run = TrainingCheckpoints(
        checkpoints,
        checkpoint_every,
        fingerprint(settings, clusters, *generalist.state_dict().values()),
        "specialists (other clusters, settings or generalist)",
    )
    first, earlier_seconds = run.resume(model, opt, sched, g)
    model.train()
    loss = torch.zeros(())
    m_idx = torch.arange(clusters.shape[0], device=device).unsqueeze(1)
    for step in range(first, settings.steps):
        pos = torch.cat(
            [_draw(inside, half, g), _draw(outside, settings.batch_size - half, g)], dim=1
        ).to(device)  # (M, B)
        flat = pos.flatten().cpu()
        images = jitter(train.images[flat], settings.jitter, g) if settings.jitter else None
        x = (
            (train.features(images=images) if images is not None else train.features(flat))
            .to(device)
            .view(*pos.shape, -1)
        )
        y = maps[m_idx, labels[pos]]  # (M, B): each specialist's own labels
        logits = model(x)
        per = (
            F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
            .view(y.shape)
            .mean(dim=1)
        )
        if soft_targets is not None:
            t = soft_targets[m_idx, pos]  # (M, B, size + 1) log-probabilities
            per = per + settings.soft_weight * _soft(logits, t, settings.temperature)
        loss = per.sum()
        if not torch.isfinite(loss):
            raise DKError(
                f"the specialists' loss is not finite ({float(loss)})",
                "lower the step size (settings.lr)",
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if run.due(step + 1, settings.steps):
            run.save(
                step + 1, model, opt, sched, g, earlier_seconds + time.perf_counter() - started
            )
    model.eval()
    with torch.no_grad():
        model.layers[-1].bias[:, -1] += dustbin_offset(
            clusters, train.labels, settings.cluster_share
        ).to(device)
    return model, {
        "final_loss": float(loss.detach()) / clusters.shape[0],
        "seconds": earlier_seconds + time.perf_counter() - started,
    }


def _soft(logits: torch.Tensor, target_log_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """(M,) T²·KL(p_T ‖ q_T) per specialist, batch mean; targets given as log-probabilities at T."""
    log_q = F.log_softmax(logits / temperature, dim=-1)
    p = target_log_probs.exp()
    return temperature**2 * (p * (target_log_probs - log_q)).sum(dim=-1).mean(dim=-1)
