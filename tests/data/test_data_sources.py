import pytest

from darkknowledge.data import datasets, fetch_dataset
from darkknowledge.data.sources import fetchers
from darkknowledge.errors import DKError


def test_every_dataset_has_a_fetcher():
    assert {"mnist", "fashion_mnist"} <= set(datasets.names())
    assert datasets.names() == fetchers.names()


def test_unknown_dataset_suggests_a_name():
    with pytest.raises(DKError, match="did you mean 'mnist'"):
        fetch_dataset("mnsit")
