"""Transfer sets: which training examples the student sees (Hinton et al. 2015, §3).

The paper distils on MNIST with classes omitted (e.g. no 3s, §3), on a small fraction of the
data (3% of the speech data as soft targets, §6) and without labels. ``num_classes`` never changes:
the
student still predicts every class.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from darkknowledge.data.splits import sample_per_class
from darkknowledge.data.tensors import TensorDataset
from darkknowledge.errors import DKError


def omit_classes(ds: TensorDataset, classes: Iterable[int]) -> TensorDataset:
    """``ds`` without any example whose label is in ``classes``."""
    labels = ds.require_labels("omit_classes")
    drop = _class_ids(ds, classes, "omit_classes")
    return _nonempty(ds, ~torch.isin(labels, drop), f"omit_classes({drop.tolist()})")


def keep_classes(ds: TensorDataset, classes: Iterable[int]) -> TensorDataset:
    """Only the examples of ``ds`` whose label is in ``classes``."""
    labels = ds.require_labels("keep_classes")
    keep = _class_ids(ds, classes, "keep_classes")
    return _nonempty(ds, torch.isin(labels, keep), f"keep_classes({keep.tolist()})")


def stratified_fraction(ds: TensorDataset, fraction: float, seed: int = 0) -> TensorDataset:
    """A random ``fraction`` of each class of ``ds`` (rounded, at least one example per class
    present).

    Deterministic in ``seed``; positions stay in ascending source order.
    """
    labels = ds.require_labels("stratified_fraction")
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, (int, float))
        or not 0.0 < fraction <= 1.0
    ):
        raise DKError(
            f"fraction {fraction!r} is out of range", "use a fraction in (0, 1], e.g. 0.03 for 3%"
        )
    if fraction == 1.0:
        return ds
    counts = torch.bincount(labels.cpu(), minlength=ds.num_classes)
    # Round half up per class; floor(x + 0.5) avoids Python's round-half-to-even surprises.
    wanted = torch.tensor([math.floor(int(c) * fraction + 0.5) for c in counts], dtype=torch.int64)
    per_class = torch.minimum(torch.clamp(wanted, min=1), counts)
    return ds.subset(sample_per_class(labels, per_class, seed))


def unlabelled(ds: TensorDataset) -> TensorDataset:
    """``ds`` with its labels removed (the student learns from the teacher's soft targets only)."""
    return TensorDataset(
        images=ds.images, labels=None, index=ds.index, num_classes=ds.num_classes, name=ds.name
    )


def _class_ids(ds: TensorDataset, classes: Iterable[int], operation: str) -> torch.Tensor:
    if isinstance(classes, (int, str)):
        raise DKError(
            f"{operation} expects a list of class ids, got {classes!r}", f"write [{classes}]"
        )
    ids = list(classes)
    bad = [
        c
        for c in ids
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < ds.num_classes
    ]
    if bad:
        raise DKError(
            f"{operation}: classes {bad} are not class ids of dataset {ds.name!r}",
            f"use integers in [0, {ds.num_classes})",
        )
    return torch.tensor(sorted(set(ids)), dtype=torch.int64, device=ds.images.device)


def _nonempty(ds: TensorDataset, mask: torch.Tensor, operation: str) -> TensorDataset:
    positions = mask.nonzero().squeeze(1)
    if len(positions) == 0:
        raise DKError(
            f"{operation} leaves no examples of dataset {ds.name!r} ({len(ds)} examples, class "
            f"counts {ds.class_counts()})",
            "keep at least one class that is present",
        )
    return ds.subset(positions)
