"""Clusters of confusable classes from the generalist's predictions alone (no labels)."""

from __future__ import annotations

import pytest
import torch

from darkknowledge.errors import DKError
from darkknowledge.specialists.clusters import (
    balanced_assignment,
    clusters_from_covariance,
    confusable_clusters,
    correlation,
    kmeans,
    prediction_covariance,
    streamed_covariance,
)


def _confused_generalist(
    groups: list[list[int]], classes: int, n: int = 3000, seed: int = 0
) -> torch.Tensor:
    """Predictions that hesitate within planted groups: each image's mass spread over one group."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.full((n, classes), 1e-3)
    which = torch.randint(len(groups), (n,), generator=g)
    for i in range(n):
        members = groups[int(which[i])]
        probs[i, members] += torch.distributions.Dirichlet(torch.ones(len(members))).sample()
    return probs / probs.sum(dim=1, keepdim=True)


def test_planted_groups_of_confusable_classes_are_found():
    groups = [[0, 5, 9, 2], [1, 3, 11, 7], [4, 6, 8, 10]]
    torch.manual_seed(0)
    members = confusable_clusters(_confused_generalist(groups, 12), k=3, size=4, seed=1)
    found = sorted(sorted(torch.nonzero(row).flatten().tolist()) for row in members)
    assert found == sorted(sorted(gr) for gr in groups)


def test_larger_clusters_overlap_and_are_deterministic():
    groups = [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    torch.manual_seed(0)
    probs = _confused_generalist(groups, 12)
    a = confusable_clusters(probs, k=4, size=5, seed=3)
    assert a.sum(dim=1).tolist() == [5] * 4
    assert (a.sum(dim=0) > 1).any()  # 20 places for 12 classes: some class is in two clusters
    assert torch.equal(a, confusable_clusters(probs, k=4, size=5, seed=3))


def test_covariance_and_kmeans_basics_and_refusals():
    p = torch.softmax(torch.randn(50, 6), dim=1)
    cov = prediction_covariance(p)
    torch.testing.assert_close(cov, torch.cov(p.T), rtol=1e-5, atol=1e-7)
    pts = torch.cat([torch.randn(20, 2) * 0.05, torch.randn(20, 2) * 0.05 + 5])
    centres = kmeans(pts, 2, seed=0, steps=50, batch_size=8)  # mini-batch steps find both blobs
    assert sorted(round(float(c[0])) for c in centres) == [0, 5]
    with pytest.raises(DKError, match="cluster size"):
        confusable_clusters(p, k=2, size=6)
    with pytest.raises(DKError, match="clusters from"):
        kmeans(pts, 41)
    with pytest.raises(DKError, match="probs must be"):
        prediction_covariance(torch.ones(6))


def test_weakly_confused_groups_are_found_beside_strongly_confused_ones():
    """Groups the generalist hesitates over only a little still get their own cluster: the
    columns are compared as correlations, so long columns (hard classes) do not draw every centre,
    and every class belongs to the cluster of its nearest centre."""
    groups = [[0, 5, 9], [1, 3, 11], [4, 6, 8], [2, 7, 10]]
    g = torch.Generator().manual_seed(0)
    n, classes = 4000, 12
    probs = torch.full((n, classes), 1e-4)
    which = torch.randint(len(groups), (n,), generator=g)
    for i in range(n):
        gi = int(which[i])
        members = groups[gi]
        spread = 1.0 if gi < 2 else 0.05  # groups 2 and 3: nearly confident predictions
        w = torch.distributions.Dirichlet(torch.ones(len(members))).sample()
        top = members[int(torch.randint(len(members), (1,), generator=g))]
        probs[i, members] += spread * w
        probs[i, top] += 1 - spread
    probs = probs / probs.sum(dim=1, keepdim=True)
    torch.manual_seed(0)
    members = confusable_clusters(probs, k=4, size=3, seed=0)
    assert int(members.any(dim=0).sum()) == classes
    found = sorted(sorted(torch.nonzero(row).flatten().tolist()) for row in members)
    assert found == sorted(sorted(gr) for gr in groups)


def test_correlation_has_unit_diagonal_and_zero_for_a_class_never_predicted():
    p = torch.softmax(torch.randn(200, 5), dim=1)
    p = torch.cat([p, torch.zeros(200, 1)], dim=1)  # class 5 never predicted
    corr = correlation(prediction_covariance(p))
    torch.testing.assert_close(corr.diagonal()[:5], torch.ones(5))
    assert torch.equal(corr[5], torch.zeros(6)) and torch.equal(corr[:, 5], torch.zeros(6))


def test_streamed_covariance_equals_the_whole_and_gives_the_same_clusters():
    groups = [[0, 5, 9, 2], [1, 3, 11, 7], [4, 6, 8, 10]]
    torch.manual_seed(0)
    probs = _confused_generalist(groups, 12)
    whole = prediction_covariance(probs)
    chunked = streamed_covariance(probs[i : i + 700] for i in range(0, len(probs), 700))
    torch.testing.assert_close(chunked, whole, rtol=1e-4, atol=1e-7)
    exact = streamed_covariance(probs.double()[i : i + 7] for i in range(0, len(probs), 7))
    torch.testing.assert_close(exact, torch.cov(probs.double().T), rtol=1e-10, atol=1e-13)
    assert torch.equal(
        clusters_from_covariance(chunked, 3, 4, seed=1), confusable_clusters(probs, 3, 4, seed=1)
    )
    with pytest.raises(DKError, match="at least 2"):
        streamed_covariance(iter([probs[:1]]))


def test_many_groups_in_few_clusters_stay_whole_in_equal_partitions():
    """Far more confusable groups than clusters (synthetic_jft: 500 groups, 61 clusters): the
    balanced Lloyd steps on angles keep every group whole and cover every class; the plain
    K-means centres, by Euclidean distance, split most groups."""
    groups = [list(range(5 * i, 5 * i + 5)) for i in range(40)]
    torch.manual_seed(0)
    probs = _confused_generalist(groups, 200, n=8000)
    cov = prediction_covariance(probs)

    def quality(members):
        whole = sum(bool(members[:, gr].all(dim=1).any()) for gr in groups)
        return int(members.any(dim=0).sum()), whole

    for seed in range(3):
        assert quality(clusters_from_covariance(cov, 5, 40, seed=seed)) == (200, 40)
        plain = clusters_from_covariance(cov, 5, 40, seed=seed, metric="euclidean", refine=0)
        assert quality(plain)[1] <= 10


def test_balanced_assignment_takes_nearest_pairs_first_within_capacity():
    distance = torch.tensor(
        [
            [0.1, 0.2, 0.3, 0.9, 0.8],
            [0.5, 0.6, 0.4, 0.2, 0.7],
        ]
    )
    # every class to its nearest centre while there is room
    assert balanced_assignment(distance, 3).tolist() == [0, 0, 0, 1, 1]
    # centre 0 takes its 2 nearest (classes 0 and 1) of the 3 it is nearest to; class 2 then
    # finds centre 1 full too: 2 · 2 places for 5 classes leave one class out
    assert balanced_assignment(distance, 2).tolist() == [0, 0, -1, 1, 1]
    # room 1: classes 0 and 3 first; class 1 would go to centre 0 (full), then centre 1 (full)
    assert balanced_assignment(distance, 1).tolist() == [0, -1, -1, 1, -1]
    far = torch.tensor([[0.1, 0.2, 0.3], [0.9, 0.8, 0.7]])
    # class 2 is nearer centre 0, which is full after classes 0 and 1: it goes to centre 1
    assert balanced_assignment(far, 2).tolist() == [0, 0, 1]


def test_unknown_metric_is_refused():
    with pytest.raises(
        DKError, match="clusters metric 'manhattan' is unknown; use one of cosine, euclidean"
    ):
        clusters_from_covariance(torch.eye(4), 2, 2, metric="manhattan")
