"""Batch sources for the loop.

Every source answers ``epoch_order()`` (the state to draw an epoch from, or None) and
``batch(order, step)`` → ``(positions or None, inputs, labels or None)``, and holds its RNG state
(``get_state``/``set_state``) for exact resume.

``IndexedBatches`` is the fast path: the dataset lives on the device, an epoch is one random
permutation drawn on the device, a batch is an index slice, and jitter runs vectorized on the
device, so no per-sample Python runs per step. ``ReplicaBatches`` is the same for K models trained
as one batched computation, each with its own generator (its own order and jitter draws).
``IterableBatches`` is the generic path for any re-iterable of ``(inputs, labels)`` batches
(teacher outputs are then computed live).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch

from darkknowledge.data import TensorDataset, jitter
from darkknowledge.errors import DKError


class IndexedBatches:
    """Shuffled batches of positions into an in-memory dataset, augmentation on the device."""

    def __init__(self, dataset: TensorDataset, batch_size: int, generator: torch.Generator, max_shift: int = 0) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.generator = generator
        self.max_shift = max_shift
        self.steps_per_epoch = math.ceil(len(dataset) / batch_size)
        self.order_shape: tuple[int, ...] | None = (len(dataset),)

    def epoch_order(self) -> torch.Tensor:
        return torch.randperm(len(self.dataset), generator=self.generator, device=self.dataset.images.device)

    def batch(self, order: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(positions, inputs (B, D) float32, labels (B,) or None) for step ``step`` of the epoch."""
        pos = order[step * self.batch_size : (step + 1) * self.batch_size]
        images = self.dataset.images.index_select(0, pos)  # several times faster than images[pos] on CPU
        if self.max_shift:
            images = jitter(images, self.max_shift, self.generator)
        labels = self.dataset.labels.index_select(0, pos) if self.dataset.labels is not None else None
        return pos, self.dataset.features(images=images), labels

    def get_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


class ReplicaBatches:
    """K independent shuffles of one in-memory dataset, drawn side by side.

    Replica ``k`` draws its permutation and its jitter from ``generators[k]`` exactly as an
    :class:`IndexedBatches` with that generator would, so its batches equal the stand-alone run's.
    Positions ``(K, B)`` are gathered in one index operation.
    """

    def __init__(self, dataset: TensorDataset, batch_size: int, generators: Sequence[torch.Generator], max_shift: int = 0) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.generators = list(generators)
        self.max_shift = max_shift
        self.steps_per_epoch = math.ceil(len(dataset) / batch_size)
        self.order_shape: tuple[int, ...] | None = (len(self.generators), len(dataset))

    def epoch_order(self) -> torch.Tensor:
        device = self.dataset.images.device
        return torch.stack([torch.randperm(len(self.dataset), generator=g, device=device) for g in self.generators])

    def batch(self, order: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(positions (K, B), inputs (K, B, D) float32, labels (K, B) or None)."""
        pos = order[:, step * self.batch_size : (step + 1) * self.batch_size]
        k, b = pos.shape
        images = self.dataset.images.index_select(0, pos.reshape(-1)).reshape(k, b, *self.dataset.images.shape[1:])
        if self.max_shift:
            images = torch.stack([jitter(images[i], self.max_shift, g) for i, g in enumerate(self.generators)])
        labels = self.dataset.labels.index_select(0, pos.reshape(-1)).reshape(k, b) if self.dataset.labels is not None else None
        x = self.dataset.features(images=images.reshape(k * b, *images.shape[2:])).reshape(k, b, -1)
        return pos, x, labels

    def get_state(self) -> torch.Tensor:
        return torch.stack([g.get_state() for g in self.generators])

    def set_state(self, state: torch.Tensor) -> None:
        for g, s in zip(self.generators, state, strict=True):
            g.set_state(s.clone())


class IterableBatches:
    """Any re-iterable source of ``(inputs, labels)`` batches; ``make()`` starts a new epoch.

    ``make`` is called once per epoch and must yield the same batches each time it is called for
    the same epoch if runs are to resume exactly: a resumed epoch restarts ``make()`` and skips the
    batches already trained on. There are no dataset positions, so teacher outputs are computed
    live and nothing is jittered here (augment inside ``make`` if needed).
    """

    def __init__(self, make: Callable[[], Iterable], steps_per_epoch: int, device: torch.device | str | None = None) -> None:
        if steps_per_epoch < 1:
            raise DKError(f"a batch source with {steps_per_epoch} batches per epoch cannot be trained on", "give at least one batch")
        self.make = make
        self.steps_per_epoch = steps_per_epoch
        self.device = None if device is None else torch.device(device)
        self.order_shape: tuple[int, ...] | None = None
        self._it: Iterator | None = None
        self._next = 0

    @classmethod
    def of(cls, batches: Iterable | Callable[[], Iterable], device: torch.device | str | None = None, steps_per_epoch: int | None = None) -> IterableBatches:
        """From a sized re-iterable (a list of batches, a DataLoader) or a zero-argument factory."""
        make = batches if callable(batches) and not hasattr(batches, "__iter__") else (lambda: batches)
        if steps_per_epoch is None:
            try:
                steps_per_epoch = len(batches)  # type: ignore[arg-type]
            except TypeError:
                raise DKError("the batches have no len()", "pass steps_per_epoch, or a list / DataLoader of batches") from None
        return cls(make, steps_per_epoch, device)

    def __iter__(self) -> Iterator:
        return iter(self.make())

    def epoch_order(self) -> None:
        self._it = None
        return None

    def batch(self, order: object, step: int) -> tuple[None, torch.Tensor, torch.Tensor | None]:
        if self._it is None or step != self._next:  # a new epoch, or resuming inside one
            self._it, self._next = iter(self.make()), 0
            for _ in range(step):
                self._take()
        x, y = self._take()
        return None, x, y

    def _take(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        try:
            item = next(self._it)
        except StopIteration:
            raise DKError(f"the batch source ended after {self._next} batches but promised {self.steps_per_epoch} per epoch", "make every epoch yield steps_per_epoch batches") from None
        self._next += 1
        if isinstance(item, torch.Tensor):
            x, y = item, None
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            x, y = item
        else:
            raise DKError(f"a batch must be inputs or (inputs, labels), got {type(item).__name__}", "yield (x, y) tuples of tensors")
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise DKError(f"batch inputs must be a floating-point tensor, got {x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}", "convert inputs to float32")
        if self.device is not None:
            x = x.to(self.device, non_blocking=True)
            y = None if y is None else y.to(self.device, non_blocking=True)
        return x, y

    def get_state(self) -> None:
        return None

    def set_state(self, state: object) -> None:
        return None
