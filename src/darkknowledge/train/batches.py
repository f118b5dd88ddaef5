"""Batch sources for the loop.

Every source answers ``epoch_order()`` (the state to draw an epoch from, or None) and
``batch(order, step)`` → ``(positions or None, inputs, labels or None)``, and holds its RNG state
(``get_state``/``set_state``) for exact resume.

``IndexedBatches`` is the fast path: the dataset lives on the device, an epoch is one plan drawn
on the device (a permutation and, with jitter, every presentation's shift), the epoch's examples
are gathered and shifted in one vectorized pass, and a step only slices them: no per-sample
Python and no data kernels per step (on CUDA, fewer launches per step). ``ReplicaBatches`` is the
same for K models trained
as one batched computation, each with its own generator (its own order and jitter draws).
``IterableBatches`` is the generic path for any re-iterable of ``(inputs, labels)`` batches
(teacher outputs are then computed live).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch

from darkknowledge.data import TensorDataset
from darkknowledge.data.augment import shift_images
from darkknowledge.errors import DKError


def draw_plan(
    n: int, max_shift: int, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """One epoch's plan, drawn from ``generator``: a permutation of the ``n`` positions, (n,), or
    with jitter the permutation and each presentation's shift, (n, 3) rows ``(position, dx,
    dy)``."""
    perm = torch.randperm(n, generator=generator, device=device)
    if not max_shift:
        return perm
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator, device=device)
    return torch.cat([perm[:, None], shifts], dim=1)


def plan_positions(plan: torch.Tensor, jittered: bool) -> torch.Tensor:
    """The dataset positions of a plan (or of a slice of its rows, any leading dims)."""
    return plan[..., 0] if jittered else plan


def epoch_examples(
    dataset: TensorDataset, plan: torch.Tensor, max_shift: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The epoch's images (jittered as planned) and labels, in plan order: gathered once per epoch,
    so that a step only slices them (no gather, no jitter kernels per step)."""
    pos = plan_positions(plan, bool(max_shift))
    images = dataset.images.index_select(0, pos)
    if max_shift:
        images = shift_images(images, plan[:, 1:], max_shift)
    labels = dataset.labels.index_select(0, pos) if dataset.labels is not None else None
    return images, labels


class IndexedBatches:
    """Shuffled batches of an in-memory dataset, augmentation on the device.

    An epoch is a *plan* (``epoch_order``): the permutation and, with jitter, every presentation's
    shift, drawn at the epoch's start. The epoch's examples are gathered and shifted once; a step
    slices them. The plan is the state a checkpoint keeps to resume mid-epoch exactly.
    """

    def __init__(
        self,
        dataset: TensorDataset,
        batch_size: int,
        generator: torch.Generator,
        max_shift: int = 0,
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.generator = generator
        self.max_shift = max_shift
        self.steps_per_epoch = math.ceil(len(dataset) / batch_size)
        self.order_shape: tuple[int, ...] | None = (
            (len(dataset), 3) if max_shift else (len(dataset),)
        )
        self._epoch: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = (
            None  # (plan, images, labels)
        )

    def epoch_order(self) -> torch.Tensor:
        return draw_plan(
            len(self.dataset), self.max_shift, self.generator, self.dataset.images.device
        )

    def _examples(self, plan: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self._epoch is None or self._epoch[0] is not plan:
            self._epoch = (plan, *epoch_examples(self.dataset, plan, self.max_shift))
        return self._epoch[1], self._epoch[2]

    def batch(
        self, order: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(positions, inputs (B, D) float32, labels (B,) or None) for step ``step`` of the
        epoch.
        """
        rows = slice(step * self.batch_size, (step + 1) * self.batch_size)
        images, labels = self._examples(order)
        pos = plan_positions(order[rows], bool(self.max_shift))
        return (
            pos,
            self.dataset.features(images=images[rows]),
            None if labels is None else labels[rows],
        )

    def get_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


class ReplicaBatches:
    """K independent shuffles of one in-memory dataset, drawn side by side.

    Replica ``k`` draws its plan (permutation and jitter) from ``generators[k]`` exactly as an
    :class:`IndexedBatches` with that generator would, so its batches equal the stand-alone run's.
    """

    def __init__(
        self,
        dataset: TensorDataset,
        batch_size: int,
        generators: Sequence[torch.Generator],
        max_shift: int = 0,
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.generators = list(generators)
        self.max_shift = max_shift
        self.steps_per_epoch = math.ceil(len(dataset) / batch_size)
        k, n = len(self.generators), len(dataset)
        self.order_shape: tuple[int, ...] | None = (k, n, 3) if max_shift else (k, n)
        self._epoch: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None

    def epoch_order(self) -> torch.Tensor:
        device = self.dataset.images.device
        return torch.stack(
            [draw_plan(len(self.dataset), self.max_shift, g, device) for g in self.generators]
        )

    def _examples(self, plan: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self._epoch is None or self._epoch[0] is not plan:
            per = [epoch_examples(self.dataset, p, self.max_shift) for p in plan]
            labels = None if per[0][1] is None else torch.stack([lab for _, lab in per])
            self._epoch = (plan, torch.stack([img for img, _ in per]), labels)
        return self._epoch[1], self._epoch[2]

    def batch(
        self, order: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(positions (K, B), inputs (K, B, D) float32, labels (K, B) or None)."""
        rows = slice(step * self.batch_size, (step + 1) * self.batch_size)
        images, labels = self._examples(order)
        images = images[:, rows]
        k, b = images.shape[:2]
        x = self.dataset.features(images=images.reshape(k * b, *images.shape[2:])).reshape(k, b, -1)
        return (
            plan_positions(order[:, rows], bool(self.max_shift)),
            x,
            None if labels is None else labels[:, rows],
        )

    def get_state(self) -> torch.Tensor:
        return torch.stack([g.get_state() for g in self.generators])

    def set_state(self, state: torch.Tensor) -> None:
        for g, s in zip(self.generators, state, strict=True):
            g.set_state(s.clone())


def split_batch(item: object) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(inputs, labels)`` of one user batch: ``x``, ``(x, y)``, ``(x, None)`` (unlabelled) or
    ``[x]`` (what ``DataLoader(TensorDataset(X))`` yields); a :class:`DKError` for anything else."""
    if isinstance(item, torch.Tensor):
        x, y = item, None
    elif isinstance(item, (tuple, list)) and len(item) in (1, 2):
        x, y = item[0], (item[1] if len(item) == 2 else None)
    else:
        what = (
            f"a {type(item).__name__} of {len(item)} items"
            if isinstance(item, (tuple, list))
            else type(item).__name__
        )
        raise DKError(
            f"a batch must be x, (x,) or (x, y) (inputs and labels), got {what}",
            "yield (inputs, labels), or inputs alone for unlabelled data, e.g. "
            "DataLoader(TensorDataset(X, Y))",
        )
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise DKError(
            "batch inputs must be a floating-point tensor, got "
            f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}",
            "convert inputs to float32",
        )
    if y is not None and (
        not isinstance(y, torch.Tensor) or y.is_floating_point() or y.dim() != 1 or len(y) != len(x)
    ):
        got = (
            f"{y.dtype} of shape {tuple(y.shape)}"
            if isinstance(y, torch.Tensor)
            else type(y).__name__
        )
        raise DKError(
            f"batch labels must be an integer tensor of shape ({len(x)},), got {got}",
            "give class ids (torch.long), one per input, or None for unlabelled data",
        )
    return x, y


class IterableBatches:
    """Any re-iterable source of ``(inputs, labels)`` batches; ``make()`` starts a new epoch.

    ``make`` is called once per epoch and must yield the same batches each time it is called for
    the same epoch if runs are to resume exactly: a resumed epoch restarts ``make()`` and skips the
    batches already trained on. There are no dataset positions, so teacher outputs are computed
    live and nothing is jittered here (augment inside ``make`` if needed).
    """

    def __init__(
        self,
        make: Callable[[], Iterable],
        steps_per_epoch: int,
        device: torch.device | str | None = None,
    ) -> None:
        if steps_per_epoch < 1:
            raise DKError(
                f"a batch source with {steps_per_epoch} batches per epoch cannot be trained on",
                "give at least one batch",
            )
        self.make = make
        self.steps_per_epoch = steps_per_epoch
        self.device = None if device is None else torch.device(device)
        self.order_shape: tuple[int, ...] | None = None
        self._it: Iterator | None = None
        self._next = 0

    @classmethod
    def of(
        cls,
        batches: Iterable | Callable[[], Iterable],
        device: torch.device | str | None = None,
        steps_per_epoch: int | None = None,
    ) -> IterableBatches:
        """From a sized re-iterable (a list of batches, a DataLoader) or a zero-argument factory."""
        make = (
            batches if callable(batches) and not hasattr(batches, "__iter__") else (lambda: batches)
        )
        if steps_per_epoch is None:
            try:
                steps_per_epoch = len(batches)  # type: ignore[arg-type]
            except TypeError:
                raise DKError(
                    "the batches have no len()",
                    "pass steps_per_epoch, or a list / DataLoader of batches",
                ) from None
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
            raise DKError(
                f"the batch source ended after {self._next} batches but promised "
                f"{self.steps_per_epoch} per epoch",
                "make every epoch yield steps_per_epoch batches",
            ) from None
        self._next += 1
        x, y = split_batch(item)
        if self.device is not None:
            x = x.to(self.device, non_blocking=True)
            y = None if y is None else y.to(self.device, non_blocking=True)
        return x, y

    def get_state(self) -> None:
        return None

    def set_state(self, state: object) -> None:
        return None
