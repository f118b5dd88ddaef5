"""Batch sources for the loop.

``IndexedBatches`` is the fast path: the dataset lives on the device, an epoch is one random
permutation drawn on the device, a batch is an index slice, and jitter runs vectorized on the
device, so no per-sample Python runs per step. ``IterableBatches`` is the generic path for any
re-iterable of ``(inputs, labels)`` batches (teacher outputs are then computed live).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator

import torch

from darkknowledge.data import TensorDataset, jitter


class IndexedBatches:
    """Shuffled batches of positions into an in-memory dataset, augmentation on the device."""

    def __init__(self, dataset: TensorDataset, batch_size: int, generator: torch.Generator, max_shift: int = 0) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.generator = generator
        self.max_shift = max_shift
        self.steps_per_epoch = math.ceil(len(dataset) / batch_size)

    def epoch_order(self) -> torch.Tensor:
        return torch.randperm(len(self.dataset), generator=self.generator, device=self.dataset.images.device)

    def batch(self, order: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(positions, inputs (B, D) float32, labels (B,) or None) for step ``step`` of the epoch."""
        pos = order[step * self.batch_size : (step + 1) * self.batch_size]
        images = self.dataset.images[pos]
        if self.max_shift:
            images = jitter(images, self.max_shift, self.generator)
        labels = self.dataset.labels[pos] if self.dataset.labels is not None else None
        return pos, self.dataset.features(images=images), labels


class IterableBatches:
    """Any re-iterable source of ``(inputs, labels)`` batches; ``make()`` starts a new epoch."""

    def __init__(self, make: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor | None]]], steps_per_epoch: int) -> None:
        self.make = make
        self.steps_per_epoch = steps_per_epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        return iter(self.make())
