import pytest
import torch

from darkknowledge.data import train_validation_split
from darkknowledge.data.splits import sample_per_class
from darkknowledge.errors import DKError


def test_deterministic_and_independent_of_global_rng(mnist_train):
    torch.manual_seed(1)
    _, a = train_validation_split(mnist_train, 10_000, seed=3)
    torch.manual_seed(2)
    torch.rand(5)
    _, b = train_validation_split(mnist_train, 10_000, seed=3)
    _, c = train_validation_split(mnist_train, 10_000, seed=4)
    assert torch.equal(a.index, b.index)
    assert not torch.equal(a.index, c.index)


def test_stratified_disjoint_and_complete(mnist_train):
    train, val = train_validation_split(mnist_train, 10_000)
    assert len(val) == 10_000 and len(train) == 50_000
    assert torch.all(val.index[1:] > val.index[:-1]) and torch.all(
        train.index[1:] > train.index[:-1]
    )
    assert torch.equal(torch.sort(torch.cat([train.index, val.index])).values, torch.arange(60_000))
    for c, (n_val, n_all) in enumerate(
        zip(val.class_counts(), mnist_train.class_counts(), strict=True)
    ):
        assert abs(n_val - n_all / 6) < 1, c
    # Subsets keep the source's index, so labels still line up with the source.
    assert torch.equal(mnist_train.labels[val.index], val.labels)
    assert torch.equal(mnist_train.images[val.index], val.images)
    assert val.name == "mnist/train" and val.num_classes == 10


def test_sizes_sum_exactly_with_uneven_classes(make_dataset):
    ds = make_dataset([0] * 5 + [1] * 3 + [2] * 1, num_classes=4)
    for size in range(1, 9):
        _, val = train_validation_split(ds, size, seed=size)
        counts = val.class_counts()
        assert sum(counts) == size and counts[3] == 0
        assert all(
            abs(k - size * n / 9) < 1 for k, n in zip(counts, ds.class_counts(), strict=True)
        )


@pytest.mark.parametrize("size", [0, -1, 9, 100, 2.5, True])
def test_size_out_of_range(make_dataset, size):
    with pytest.raises(DKError, match="validation size"):
        train_validation_split(make_dataset([0, 1, 2] * 3), size)


def test_needs_labels(make_dataset):
    from darkknowledge.data import unlabelled

    with pytest.raises(DKError, match="needs labels"):
        train_validation_split(unlabelled(make_dataset([0, 1, 0])), 1)


def test_sample_per_class_is_uniform_within_class():
    labels = torch.tensor([0, 1] * 10)
    hits = torch.zeros(20)
    for seed in range(400):
        picked = sample_per_class(labels, torch.tensor([1, 0]), seed)
        assert len(picked) == 1 and labels[picked].item() == 0
        hits[picked] += 1
    assert torch.all(hits[1::2] == 0) and torch.all(hits[0::2] > 15)  # all ten 0s drawn, ~40 each
