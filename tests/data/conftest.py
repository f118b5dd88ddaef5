"""Fixtures for the data tests: real MNIST (loaded once; cached on disk after the first run)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from darkknowledge.data import TensorDataset, load_mnist


@pytest.fixture(scope="session")
def mnist_train() -> TensorDataset:
    return load_mnist("train")


@pytest.fixture(scope="session")
def mnist_test() -> TensorDataset:
    return load_mnist("test")


@pytest.fixture
def make_dataset() -> Callable[..., TensorDataset]:
    """A factory of small random labelled datasets: ``make_dataset(labels, num_classes=..)``."""

    def make(
        labels: list[int], num_classes: int = 10, size: int = 4, name: str = "toy/train"
    ) -> TensorDataset:
        n = len(labels)
        g = torch.Generator().manual_seed(n)
        return TensorDataset(
            images=torch.randint(0, 256, (n, size, size), dtype=torch.uint8, generator=g),
            labels=torch.tensor(labels, dtype=torch.int64),
            index=torch.arange(n),
            num_classes=num_classes,
            name=name,
        )

    return make
