import pytest
import torch

from darkknowledge.data import keep_classes, omit_classes, stratified_fraction, unlabelled
from darkknowledge.errors import DKError


def test_omit_classes_drops_only_those(mnist_train):
    no_threes = omit_classes(mnist_train, [3])
    assert len(no_threes) == 60_000 - 6131
    assert no_threes.class_counts()[3] == 0 and no_threes.num_classes == 10
    assert torch.equal(mnist_train.labels[no_threes.index], no_threes.labels)


def test_keep_classes(mnist_train):
    sevens_eights = keep_classes(mnist_train, [7, 8])
    counts = sevens_eights.class_counts()
    assert counts == [0] * 7 + [6265, 5851, 0] and sevens_eights.num_classes == 10


def test_omit_nothing_keeps_all(make_dataset):
    ds = make_dataset([0, 1, 2])
    assert len(omit_classes(ds, [])) == 3


@pytest.mark.parametrize("classes", [[10], [-1], [1.0], 3, [True]])
def test_bad_classes(make_dataset, classes):
    with pytest.raises(DKError, match="class"):
        omit_classes(make_dataset([0, 1, 2]), classes)


def test_empty_result_is_an_error(make_dataset):
    ds = make_dataset([0, 1, 0])
    with pytest.raises(DKError, match="leaves no examples"):
        omit_classes(ds, [0, 1])
    with pytest.raises(DKError, match="leaves no examples"):
        keep_classes(ds, [5])
    with pytest.raises(DKError, match="leaves no examples"):
        keep_classes(ds, [])


def test_stratified_fraction(mnist_train):
    small = stratified_fraction(mnist_train, 0.03, seed=1)
    assert small.class_counts() == [round(n * 0.03) for n in mnist_train.class_counts()]
    assert torch.equal(small.index, stratified_fraction(mnist_train, 0.03, seed=1).index)
    assert not torch.equal(small.index, stratified_fraction(mnist_train, 0.03, seed=2).index)
    assert torch.all(small.index[1:] > small.index[:-1])
    assert torch.equal(mnist_train.labels[small.index], small.labels)
    assert stratified_fraction(mnist_train, 1.0) is mnist_train


def test_fraction_keeps_one_of_each_present_class(make_dataset):
    ds = make_dataset([0] * 50 + [1] * 2 + [3], num_classes=5)
    assert stratified_fraction(ds, 0.01).class_counts() == [1, 1, 0, 1, 0]
    assert stratified_fraction(ds, 0.5).class_counts() == [25, 1, 0, 1, 0]


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, float("nan"), True])
def test_fraction_out_of_range(make_dataset, fraction):
    with pytest.raises(DKError, match="fraction"):
        stratified_fraction(make_dataset([0, 1]), fraction)


def test_unlabelled(make_dataset):
    ds = make_dataset([0, 1, 2])
    bare = unlabelled(ds)
    assert (
        bare.labels is None
        and torch.equal(bare.images, ds.images)
        and torch.equal(bare.index, ds.index)
    )
    assert bare.num_classes == ds.num_classes and bare.name == ds.name
    for op in (
        lambda d: omit_classes(d, [0]),
        lambda d: keep_classes(d, [0]),
        lambda d: stratified_fraction(d, 0.5),
    ):
        with pytest.raises(DKError, match="needs labels"):
            op(bare)
