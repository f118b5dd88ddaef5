"""``synthetic_jft``: a generated task with the label space of the paper's JFT experiment (§5:
15,000 classes, 61 specialists of 300 classes), made to measure scale, not accuracy.

Nothing about it is JFT but the number of classes. Its classes are hierarchical so that
confusable groups exist for the specialists to find: 50 families × 10 groups × 30 classes. A
class's prototype is its family's centre plus its group's offset plus its own (pixel standard
deviations 30 for a group, 8 for a class), and an example is its prototype plus noise (standard
deviation 12), rounded to 8 × 8 uint8 "images". Classes of one group are therefore far more
alike than classes of different groups, as "husky" and "malamute" are in a real label space.
The prototypes are shared by both splits (seed 199); the examples are drawn per split ("train":
10 per class, 150,000; "test": 2 per class, 30,000), classes in order then shuffled once. It is
generated in about a second and never cached or downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch

from darkknowledge.data.cache import cache_dir
from darkknowledge.data.sources import datasets, fetchers
from darkknowledge.data.tensors import TensorDataset
from darkknowledge.errors import DKError

FAMILIES, GROUPS, CLASSES_PER_GROUP = 50, 10, 30
NUM_CLASSES = FAMILIES * GROUPS * CLASSES_PER_GROUP  # 15,000
SIDE = 8  # 8 × 8 = 64 features
PER_CLASS = {"train": 10, "test": 2}
SEEDS = {"prototypes": 199, "train": 200, "test": 201}
SPREAD = {"family": 40.0, "group": 30.0, "class": 8.0, "example": 12.0}


def prototypes() -> torch.Tensor:
    """(15,000, 64) float32 class prototypes, class c in group c // 30, family c // 300."""
    g = torch.Generator().manual_seed(SEEDS["prototypes"])
    d = SIDE * SIDE
    family = 128.0 + SPREAD["family"] * torch.randn(FAMILIES, d, generator=g)
    group = family.repeat_interleave(GROUPS, dim=0) + SPREAD["group"] * torch.randn(
        FAMILIES * GROUPS, d, generator=g
    )
    return group.repeat_interleave(CLASSES_PER_GROUP, dim=0) + SPREAD["class"] * torch.randn(
        NUM_CLASSES, d, generator=g
    )


def group_of(classes: torch.Tensor) -> torch.Tensor:
    """The group (of 30 confusable classes) each class id belongs to."""
    return classes // CLASSES_PER_GROUP


@datasets.register("synthetic_jft")
def load_synthetic_jft(split: str) -> TensorDataset:
    """``synthetic_jft`` ``split``: "train" (150,000 examples) or "test" (30,000), 15,000
    classes.
    """
    if split not in PER_CLASS:
        raise DKError(
            f"unknown synthetic_jft split {split!r}",
            "use 'train' (150,000 examples) or 'test' (30,000)",
        )
    g = torch.Generator().manual_seed(SEEDS[split])
    per = PER_CLASS[split]
    labels = torch.arange(NUM_CLASSES).repeat_interleave(per)
    x = prototypes()[labels] + SPREAD["example"] * torch.randn(
        len(labels), SIDE * SIDE, generator=g
    )
    perm = torch.randperm(len(labels), generator=g)
    images = x[perm].round().clamp(0, 255).to(torch.uint8).view(-1, SIDE, SIDE)
    return TensorDataset(
        images=images,
        labels=labels[perm],
        index=torch.arange(len(labels)),
        num_classes=NUM_CLASSES,
        name=f"synthetic_jft/{split}",
    )


@fetchers.register("synthetic_jft")
def fetch_synthetic_jft() -> Path:
    """Nothing to fetch: the data is generated on load."""
    return cache_dir()
