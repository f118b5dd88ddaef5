"""``mnist100``: real handwriting with a large, confusable label space (the specialists of §5).

Each image is two MNIST digits side by side (28 × 56 pixels) and its class is the two-digit
number they read, "00" to "99" (class ``10·left + right``). Pairs are drawn with a fixed seed,
stratified so that every class has exactly ``PER_CLASS[split]`` images: the training pairs from
MNIST's training digits (60,000 images, 600 per class), the test pairs from its test digits
(10,000, 100 per class), so no test digit was ever seen in training. Confusable groups arise by
themselves: "38" is confused with "88", "35" and "33" far more than with "71".

Built from the MNIST files the ``mnist`` dataset fetches (no other download) and cached as
safetensors under ``<cache>/mnist100/``, named by the MNIST split's fingerprint and the seed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from darkknowledge.data.cache import atomic_write_bytes, cache_dir
from darkknowledge.data.mnist import fetch_mnist, load_mnist
from darkknowledge.data.sources import datasets, fetchers
from darkknowledge.data.tensors import TensorDataset
from darkknowledge.errors import DKError

NUM_CLASSES = 100
PER_CLASS = {"train": 600, "test": 100}
SEEDS = {"train": 100, "test": 101}  # the pairs' draw; part of the cache file's name


def build_pairs(
    digits: TensorDataset, per_class: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (100·per_class, 28, 56) and labels: for each class ``10a + b``, ``per_class`` pairs
    of a random digit-``a`` image (left) and a random digit-``b`` image (right), drawn with
    replacement from ``digits``; classes in order, images shuffled once at the end."""
    g = torch.Generator().manual_seed(seed)
    by_digit = [torch.nonzero(digits.labels == d).flatten() for d in range(10)]
    left, right = [], []
    for a in range(10):
        for b in range(10):
            left.append(by_digit[a][torch.randint(len(by_digit[a]), (per_class,), generator=g)])
            right.append(by_digit[b][torch.randint(len(by_digit[b]), (per_class,), generator=g)])
    left_idx, right_idx = torch.cat(left), torch.cat(right)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
    perm = torch.randperm(len(labels), generator=g)
    left_idx, right_idx, labels = left_idx[perm], right_idx[perm], labels[perm]
    images = torch.cat([digits.images[left_idx], digits.images[right_idx]], dim=2)
    return images.contiguous(), labels


def _cache_file(split: str, digits: TensorDataset) -> Path:
    return (
        cache_dir()
        / "mnist100"
        / f"{split}-{digits.fingerprint()[:16]}-seed{SEEDS[split]}.safetensors"
    )


@datasets.register("mnist100")
def load_mnist100(split: str) -> TensorDataset:
    """``mnist100`` ``split`` ("train": 60,000 pairs from MNIST's training digits, "test": 10,000
    from its test digits): images (N, 28, 56) uint8, labels 0–99 = ``10·left + right``."""
    if split not in PER_CLASS:
        raise DKError(
            f"unknown mnist100 split {split!r}", "use 'train' (60,000 pairs) or 'test' (10,000)"
        )
    digits = load_mnist(split)
    path = _cache_file(split, digits)
    n = NUM_CLASSES * PER_CLASS[split]
    arrays = None
    if path.is_file():
        try:
            arrays = st_load(path.read_bytes())
        except (OSError, SafetensorError):
            arrays = (
                None  # a damaged cache file is rebuilt: it holds nothing that cannot be made again
            )
        if arrays is not None and (
            tuple(arrays.get("images", torch.empty(0)).shape) != (n, 28, 56)
            or tuple(arrays.get("labels", torch.empty(0)).shape) != (n,)
        ):
            arrays = None
    if arrays is None:
        images, labels = build_pairs(digits, PER_CLASS[split], SEEDS[split])
        arrays = {"images": images, "labels": labels}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(
            path,
            st_save(
                arrays, metadata={"sha256": hashlib.sha256(images.numpy().tobytes()).hexdigest()}
            ),
        )
    return TensorDataset(
        images=arrays["images"],
        labels=arrays["labels"].long(),
        index=torch.arange(n),
        num_classes=NUM_CLASSES,
        name=f"mnist100/{split}",
    )


@fetchers.register("mnist100")
def fetch_mnist100() -> Path:
    """Fetch MNIST (the digits) and build both splits' pairs."""
    fetch_mnist()
    for split in PER_CLASS:
        load_mnist100(split)
    return cache_dir() / "mnist100"
