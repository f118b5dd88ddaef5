"""Specialists tests: real MNIST digits, loaded once."""

import pytest

from darkknowledge.data import load_mnist


@pytest.fixture(scope="session")
def mnist_train():
    return load_mnist("train")
