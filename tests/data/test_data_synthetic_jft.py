"""synthetic_jft: the paper's 15,000-class label space, generated, with confusable groups."""

from __future__ import annotations

import pytest
import torch

from darkknowledge.data import datasets, load_synthetic_jft
from darkknowledge.data.synthetic_jft import NUM_CLASSES, group_of, prototypes
from darkknowledge.errors import DKError


@pytest.fixture(scope="module")
def test_split():
    return load_synthetic_jft("test")


def test_sizes_classes_and_determinism(test_split):
    assert NUM_CLASSES == 15_000
    assert test_split.images.shape == (30_000, 8, 8) and test_split.images.dtype == torch.uint8
    assert torch.equal(
        torch.bincount(test_split.labels, minlength=NUM_CLASSES), torch.full((NUM_CLASSES,), 2)
    )
    again = datasets.get("synthetic_jft")("test")
    assert torch.equal(again.images, test_split.images) and torch.equal(
        again.labels, test_split.labels
    )


def test_classes_of_a_group_are_confusable_and_splits_share_prototypes(test_split):
    protos = prototypes()
    d_within = (protos[0:30] - protos[0]).norm(dim=1)[1:].mean()
    d_between = (protos[30:3000:30] - protos[0]).norm(dim=1).mean()
    assert d_within < 0.5 * d_between
    # a test example is nearer its own class's prototype than most, and nearest its own group
    x = test_split.images[:500].reshape(500, -1).float()
    nearest = torch.cdist(x, protos).argmin(dim=1)
    assert (group_of(nearest) == group_of(test_split.labels[:500])).float().mean() > 0.9


def test_unknown_split_is_refused():
    with pytest.raises(DKError, match="unknown synthetic_jft split"):
        load_synthetic_jft("valid")
