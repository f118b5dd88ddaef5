"""The dataset registry: each source registers a loader (``split -> TensorDataset``) and a fetcher.

Sources register themselves where they are defined (``mnist.py``, ``fashion_mnist.py``); importing
``darkknowledge.data`` imports them all.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from darkknowledge.data.tensors import TensorDataset
from darkknowledge.registry import Registry

datasets: Registry[Callable[[str], TensorDataset]] = Registry("dataset")
# Same names as ``datasets``: fetching is a separate step so `dk data fetch` can run before any
# training (e.g. on a login node with network access).
fetchers: Registry[Callable[[], Path]] = Registry("dataset")


def fetch_dataset(name: str) -> Path:
    """Make dataset ``name`` available offline; returns the directory that holds its files."""
    datasets.get(name)  # the unknown-name error, with suggestions, comes from the main registry
    return fetchers.get(name)()
