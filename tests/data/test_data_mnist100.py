"""mnist100: two real MNIST digits side by side, class = the number they read, exactly balanced,
test pairs from test digits only, built once from the MNIST files and cached."""

from __future__ import annotations

import pytest
import torch

from darkknowledge.data import datasets, load_mnist100
from darkknowledge.data.mnist100 import build_pairs
from darkknowledge.errors import DKError


@pytest.fixture
def private_cache(tmp_path, monkeypatch, mnist_train):
    from darkknowledge.data.mnist import mnist_cache_dir

    mnist = mnist_cache_dir()
    monkeypatch.setenv("DARKKNOWLEDGE_CACHE", str(tmp_path))
    (tmp_path / "mnist").symlink_to(mnist, target_is_directory=True)
    return tmp_path


def _found_in(half: torch.Tensor, digits, digit: int) -> bool:
    pool = digits.images[digits.labels == digit]
    return bool((pool == half).flatten(1).all(dim=1).any())


def test_test_split_is_balanced_pairs_of_test_digits_read_as_their_number(
    private_cache, mnist_test, mnist_train
):
    ds = datasets.get("mnist100")("test")
    assert tuple(ds.images.shape) == (10_000, 28, 56) and ds.images.dtype == torch.uint8
    assert ds.num_classes == 100 and ds.name == "mnist100/test"
    assert torch.bincount(ds.labels, minlength=100).tolist() == [100] * 100
    for i in (0, 17, 4242):
        label = int(ds.labels[i])
        left, right = ds.images[i, :, :28], ds.images[i, :, 28:]
        assert _found_in(left, mnist_test, label // 10) and _found_in(right, mnist_test, label % 10)
    # deterministic, and cached: a second load reads the same pairs from the cache file
    files = list((private_cache / "mnist100").glob("test-*.safetensors"))
    assert len(files) == 1
    again = load_mnist100("test")
    assert torch.equal(again.images, ds.images) and torch.equal(again.labels, ds.labels)


def test_train_pairs_are_drawn_from_training_digits_only(mnist_train, mnist_test):
    images, labels = build_pairs(mnist_train, per_class=3, seed=100)
    assert tuple(images.shape) == (300, 28, 56) and torch.bincount(labels).tolist() == [3] * 100
    for i in range(0, 300, 37):
        assert _found_in(images[i, :, :28], mnist_train, int(labels[i]) // 10)


def test_a_damaged_cache_file_is_rebuilt_and_an_unknown_split_refused(private_cache):
    first = load_mnist100("test")
    (f,) = (private_cache / "mnist100").glob("test-*.safetensors")
    f.write_bytes(b"not a safetensors file")
    assert torch.equal(load_mnist100("test").images, first.images)
    with pytest.raises(DKError, match="unknown mnist100 split"):
        load_mnist100("valid")
