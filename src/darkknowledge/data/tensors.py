"""An in-memory image dataset small enough to live on the training device in one piece."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import torch

from darkknowledge.errors import DKError


@dataclass(frozen=True, eq=False, repr=False)
class TensorDataset:
    """Images, labels and source positions as three aligned tensors.

    The tensors are treated as immutable: operations return new datasets, which is what makes
    caching the fingerprint safe.

    Attributes:
        images: (N, H, W) uint8 pixels.
        labels: (N,) int64 class ids in [0, num_classes), or None for an unlabelled set.
        index: (N,) int64 position of each example in its source split (``name``); together with
            ``name`` it is the key under which teacher outputs are cached, so subsets keep it.
        num_classes: classes the student predicts, unchanged when a transfer set drops some.
        name: the source split, e.g. ``"mnist/train"``.
    """

    images: torch.Tensor
    labels: torch.Tensor | None
    index: torch.Tensor
    num_classes: int
    name: str
    _fingerprint: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        where = f"dataset {self.name!r}"
        if (
            not isinstance(self.images, torch.Tensor)
            or self.images.dtype != torch.uint8
            or self.images.dim() != 3
        ):
            raise DKError(
                f"{where}: images must be a uint8 tensor of shape (N, H, W), got "
                f"{_describe(self.images)}",
                "convert pixels to uint8 in [0, 255] and drop any channel dimension",
            )
        n = self.images.shape[0]
        if (
            isinstance(self.num_classes, bool)
            or not isinstance(self.num_classes, int)
            or self.num_classes < 1
        ):
            raise DKError(
                f"{where}: num_classes={self.num_classes!r} is not a positive int",
                "pass the number of classes, e.g. 10",
            )
        if (
            not isinstance(self.index, torch.Tensor)
            or self.index.dtype != torch.int64
            or tuple(self.index.shape) != (n,)
        ):
            raise DKError(
                f"{where}: index must be an int64 tensor of shape ({n},), got "
                f"{_describe(self.index)}",
                "use torch.arange(N) for a whole split, or keep the source index when subsetting",
            )
        if self.index.device != self.images.device:
            raise DKError(
                f"{where}: index is on {self.index.device} but images on {self.images.device}",
                "move the dataset with .to(device)",
            )
        if self.labels is None:
            return
        if (
            not isinstance(self.labels, torch.Tensor)
            or self.labels.dtype != torch.int64
            or tuple(self.labels.shape) != (n,)
        ):
            raise DKError(
                f"{where}: labels must be an int64 tensor of shape ({n},), got "
                f"{_describe(self.labels)}",
                "pass one int64 class id per image, or None for an unlabelled set",
            )
        if self.labels.device != self.images.device:
            raise DKError(
                f"{where}: labels are on {self.labels.device} but images on {self.images.device}",
                "move the dataset with .to(device)",
            )
        bad = ((self.labels < 0) | (self.labels >= self.num_classes)).nonzero()
        if len(bad):
            p = int(bad[0, 0])
            raise DKError(
                f"{where}: label {int(self.labels[p])} at position {p} (source index "
                f"{int(self.index[p])}) "
                f"is outside [0, {self.num_classes}) ({len(bad)} bad labels in all)",
                "fix the source labels or raise num_classes",
            )

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:
        kind = "labelled" if self.labels is not None else "unlabelled"
        return (
            f"TensorDataset(name={self.name!r}, n={len(self)}, "
            f"image={tuple(self.images.shape[1:])}, "
            f"num_classes={self.num_classes}, {kind}, device={self.images.device})"
        )

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: torch.device | str) -> TensorDataset:
        """The same dataset on ``device`` (the fingerprint carries over: the content is
        unchanged).
        """
        moved = replace(
            self,
            images=self.images.to(device),
            labels=None if self.labels is None else self.labels.to(device),
            index=self.index.to(device),
        )
        object.__setattr__(moved, "_fingerprint", self._fingerprint)
        return moved

    def subset(self, positions: torch.Tensor) -> TensorDataset:
        """The examples at ``positions`` (B,) int, in that order; labels and index follow along."""
        positions = self._check_positions(positions)
        return replace(
            self,
            images=self.images[positions],
            labels=None if self.labels is None else self.labels[positions],
            index=self.index[positions],
        )

    def features(
        self, positions: torch.Tensor | None = None, images: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Model inputs ``images / 255`` flattened to float32 (B, H*W).

        Args:
            positions: (B,) which examples to take; None takes all.
            images: (B, H, W) uint8 pixels to use instead (e.g. jittered copies of a batch).
        """
        if images is not None and positions is not None:
            raise DKError(
                "features() got both positions and images",
                "pass positions to gather, or images already gathered",
            )
        if images is not None:
            if (
                images.dtype != torch.uint8
                or images.dim() != 3
                or images.shape[1:] != self.images.shape[1:]
            ):
                raise DKError(
                    f"features() images must be uint8 (B, {self.images.shape[1]}, "
                    f"{self.images.shape[2]}), got {_describe(images)}",
                    "pass a batch gathered from this dataset",
                )
        elif positions is not None:
            images = self.images[self._check_positions(positions)]
        else:
            images = self.images
        return images.reshape(images.shape[0], -1).to(torch.float32).div_(255)

    def fingerprint(self) -> str:
        """sha256 hex over name, shape, pixels, labels (or "unlabelled") and index;
        device-independent.
        """
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(f"{self.name}\0{tuple(self.images.shape)}\0".encode())
            # Tag each part so that, e.g., moving bytes from one part to the next changes the hash.
            for tag, t in (("images", self.images), ("labels", self.labels), ("index", self.index)):
                h.update(f"{tag}\0".encode())
                if t is None:
                    h.update(b"unlabelled")
                else:
                    h.update(memoryview(t.detach().cpu().contiguous().numpy()).cast("B"))
            object.__setattr__(self, "_fingerprint", h.hexdigest())
        return self._fingerprint

    def class_counts(self) -> list[int]:
        """Examples per class, length ``num_classes``."""
        labels = self.require_labels("class_counts()")
        return torch.bincount(labels, minlength=self.num_classes).tolist()

    def require_labels(self, operation: str) -> torch.Tensor:
        """The labels, or a DKError saying ``operation`` needs a labelled dataset."""
        if self.labels is None:
            raise DKError(
                f"{operation} needs labels but dataset {self.name!r} is unlabelled",
                "apply it before making the set unlabelled",
            )
        return self.labels

    def _check_positions(self, positions: torch.Tensor) -> torch.Tensor:
        if (
            not isinstance(positions, torch.Tensor)
            or positions.dim() != 1
            or positions.dtype == torch.bool
            or positions.is_floating_point()
            or positions.is_complex()
        ):
            raise DKError(
                f"positions must be a 1-D integer tensor, got {_describe(positions)}",
                "for a boolean mask use mask.nonzero().squeeze(1)",
            )
        positions = positions.to(device=self.images.device, dtype=torch.int64)
        if len(positions) and (int(positions.min()) < 0 or int(positions.max()) >= len(self)):
            raise DKError(
                f"positions range [{int(positions.min())}, {int(positions.max())}] is outside "
                f"dataset {self.name!r} of {len(self)} examples",
                f"use positions in [0, {len(self)})",
            )
        return positions


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__
