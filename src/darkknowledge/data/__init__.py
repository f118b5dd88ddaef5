"""Data: sources (MNIST, Fashion-MNIST, mnist100, synthetic_jft), transfer sets, splits and jitter,
as on-device tensors.
"""

from darkknowledge.data.augment import jitter
from darkknowledge.data.cache import atomic_write_bytes, cache_dir
from darkknowledge.data.fashion_mnist import load_fashion_mnist
from darkknowledge.data.idx import read_idx
from darkknowledge.data.mnist import load_mnist
from darkknowledge.data.mnist100 import load_mnist100
from darkknowledge.data.sources import datasets, fetch_dataset
from darkknowledge.data.splits import train_validation_split
from darkknowledge.data.synthetic_jft import load_synthetic_jft
from darkknowledge.data.tensors import TensorDataset
from darkknowledge.data.transfer import keep_classes, omit_classes, stratified_fraction, unlabelled

__all__ = [
    "TensorDataset",
    "atomic_write_bytes",
    "cache_dir",
    "datasets",
    "fetch_dataset",
    "jitter",
    "keep_classes",
    "load_fashion_mnist",
    "load_mnist",
    "load_mnist100",
    "load_synthetic_jft",
    "omit_classes",
    "read_idx",
    "stratified_fraction",
    "train_validation_split",
    "unlabelled",
]
