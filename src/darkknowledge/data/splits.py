"""Deterministic, stratified selection of examples: validation splits and per-class samples."""

from __future__ import annotations

import torch

from darkknowledge.data.tensors import TensorDataset
from darkknowledge.errors import DKError


def train_validation_split(
    ds: TensorDataset, size: int, seed: int = 0
) -> tuple[TensorDataset, TensorDataset]:
    """Hold out ``size`` examples of ``ds`` as a validation set, stratified by label.

    Each class gets ``size * count_c / len(ds)`` places, rounded by largest remainder so the
    total is exactly ``size``. The draw uses its own generator, so it depends on ``seed`` only,
    never on the global torch RNG or the device.

    Returns:
        (train, validation): both in ascending source order, keeping ``ds.index``.
    """
    labels = ds.require_labels("train_validation_split")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size < len(ds):
        raise DKError(
            f"validation size {size!r} is out of range for dataset {ds.name!r} of {len(ds)} "
            "examples",
            f"use a size in [1, {len(ds) - 1}]",
        )
    counts = torch.bincount(labels.cpu(), minlength=ds.num_classes)
    per_class = _largest_remainder(counts, size)
    validation = sample_per_class(labels, per_class, seed)
    keep = torch.ones(len(ds), dtype=torch.bool)
    keep[validation] = False
    return ds.subset(keep.nonzero().squeeze(1)), ds.subset(validation)


def sample_per_class(labels: torch.Tensor, per_class: torch.Tensor, seed: int) -> torch.Tensor:
    """Positions of ``per_class[c]`` random examples of each class c, sorted ascending.

    Args:
        labels: (N,) int64 class ids.
        per_class: (C,) int64 how many to take per class; at most that class's count.
        seed: seeds a private CPU generator, so the result is the same on every device.
    Returns:
        (sum(per_class),) int64 positions into ``labels``, on the CPU.
    """
    labels = labels.cpu()
    per_class = per_class.cpu().to(torch.int64)
    generator = torch.Generator().manual_seed(seed)
    # One shuffle, then a stable sort by label: each class's positions end up in random order,
    # contiguous, so "the first k of class c" is a uniform random k-subset of class c.
    shuffled = torch.randperm(len(labels), generator=generator)
    order = torch.sort(labels[shuffled], stable=True).indices
    grouped, grouped_labels = shuffled[order], labels[shuffled][order]
    counts = torch.bincount(labels, minlength=len(per_class))
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(labels)) - starts[grouped_labels]
    return torch.sort(grouped[rank < per_class[grouped_labels]]).values


def _largest_remainder(counts: torch.Tensor, total: int) -> torch.Tensor:
    """Integer shares of ``total`` proportional to ``counts`` that sum exactly to ``total``."""
    n = int(counts.sum())
    exact = counts * total
    shares = exact // n
    remainders = exact % n
    short = total - int(shares.sum())
    # Biggest remainders first; ties go to the lower class id so the result is deterministic.
    order = sorted(range(len(counts)), key=lambda c: (-int(remainders[c]), c))
    shares[order[:short]] += 1
    return shares
