"""Clusters of confusable classes, found from the generalist alone (Hinton et al. 2015, §5).

The generalist's predicted distributions over a dataset (no true labels needed) give a class ×
class covariance matrix: two classes the generalist often hesitates between rise and fall
together. K-means on its columns (an online, mini-batch K-means, as in the paper) groups such
classes. The columns are first scaled to unit variance (the correlation matrix): on raw
covariance columns the hardest classes, whose columns are longest, draw every centre and the
clusters collapse onto them (measured on mnist100: 10 clusters of 20 covered 57 classes, and
held only 29 % of the generalist's validation errors within one cluster; on correlation columns
20 clusters of 20 cover all 100 and hold 92 %). ``normalize=False`` keeps the paper's raw
covariance.

Two changes to the paper's K-means make it hold at 15,000 classes, where far more groups of
confusable classes exist than clusters (measured on ``synthetic_jft``: 500 groups of 30 into 61
clusters of 300; "held" is the share of the generalist's errors whose true and predicted classes
share a cluster, read from labels for this measurement only):

- **Equal partitions.** After the mini-batch K-means, ``refine`` balanced Lloyd steps assign the
  classes to centres with at most ⌈C / k⌉ classes each (nearest pairs first,
  :func:`balanced_assignment`) and move each centre to the mean of its classes. Without them
  a centre that has absorbed many groups becomes diffuse and nearest to every class that
  correlates with no centre; one giant cluster swallows the rest and the partition cells
  larger than ``size`` are cut (Euclidean, each class to its nearest centre: 2,408 of 15,000
  classes covered, 14 % held; one balanced assignment of the same centres, ``refine=0``: all
  covered, 42 % held; with 10 balanced steps, 96 %).
- **Angles** (``metric="cosine"``, the default: spherical K-means, columns and centres scaled
  to unit length) rather than Euclidean distances: with 10 balanced steps every group of 30
  stays whole and 100 % of the errors are held (Euclidean: 97 % of each group, 96 %; cosine
  with ``refine=0``: 94 %). On
  mnist100 (10 clusters of 20, validation images) Euclidean holds more, 90 % against 84 %, and
  its cell sets it. ``metric="euclidean"`` is the paper's.

Each cluster is its partition cell filled up to ``size`` with the classes nearest its centre
outside it, which is where overlaps come from (the paper's specialists overlap too: Table 4).
When ``k · size`` < C some classes fit no cluster (the generalist alone predicts them).

Everything is torch on the device of the inputs; nothing here reads labels.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from darkknowledge.errors import DKError

METRICS = ("cosine", "euclidean")


def prediction_covariance(probs: torch.Tensor) -> torch.Tensor:
    """The (C, C) covariance of the generalist's predicted distributions ``probs`` (N, C)."""
    if probs.dim() != 2 or probs.shape[0] < 2:
        raise DKError(
            f"probs must be (N ≥ 2, classes), got shape {tuple(probs.shape)}",
            "pass the generalist's softmax outputs over a dataset",
        )
    p = probs.float() if probs.dtype != torch.float64 else probs
    centred = p - p.mean(dim=0, keepdim=True)
    return centred.T @ centred / (p.shape[0] - 1)


def streamed_covariance(chunks: Iterable[torch.Tensor]) -> torch.Tensor:
    """The (C, C) covariance of distributions that arrive in chunks (each (n_i, C)), never
    holding them all at once (15,000 classes over 100,000 images would be 6 GB).

    Accumulates ``Σ (p − s)ᵀ(p − s)`` about the first chunk's mean ``s`` (which keeps float32
    from cancelling) and corrects it to the overall mean at the end; equals
    :func:`prediction_covariance` of the concatenated chunks up to rounding.
    """
    total, shift, n = None, None, 0
    sums = None
    for chunk in chunks:
        p = chunk.float() if chunk.dtype != torch.float64 else chunk
        if shift is None:
            shift = p.mean(dim=0, keepdim=True)
            total = torch.zeros(p.shape[1], p.shape[1], dtype=p.dtype, device=p.device)
            sums = torch.zeros(1, p.shape[1], dtype=p.dtype, device=p.device)
        d = p - shift
        total.addmm_(d.T, d)
        sums += d.sum(dim=0, keepdim=True)
        n += p.shape[0]
    if total is None or n < 2:
        raise DKError(
            f"the covariance needs at least 2 distributions, got {n}",
            "pass the generalist's softmax outputs over a dataset",
        )
    return (total - sums.T @ sums / n) / (n - 1)


def _init_centres(points: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """k-means++: each next centre drawn with probability ∝ squared distance to the nearest one."""
    n = points.shape[0]
    norms = points.square().sum(dim=1)

    def squared_distance(i: int) -> torch.Tensor:  # |x − p_i|² for every x, as one product
        return (norms - 2 * (points @ points[i]) + norms[i]).clamp_min(0)

    centres = [int(torch.randint(n, (1,), generator=g))]
    nearest = squared_distance(centres[0])
    for _ in range(1, k):
        weights = nearest.cpu().double()
        i = (
            int(torch.multinomial(weights / weights.sum(), 1, generator=g))
            if weights.sum() > 0
            else int(torch.randint(n, (1,), generator=g))
        )
        centres.append(i)
        nearest = torch.minimum(nearest, squared_distance(i))
    return points[centres].clone()


def kmeans(
    points: torch.Tensor,
    k: int,
    *,
    seed: int = 0,
    steps: int = 100,
    batch_size: int = 1024,
    spherical: bool = False,
) -> torch.Tensor:
    """Mini-batch (online) K-means of ``points`` (n, d): the (k, d) centres.

    Each step draws ``batch_size`` points, assigns them to their nearest centre and moves each
    centre towards its points with a per-centre rate 1 / (points it has absorbed so far) (Sculley
    2010); with ``batch_size ≥ n`` every step is a full Lloyd step. Deterministic for a seed.
    ``spherical``: the points are unit vectors and each centre is scaled back to unit length
    after every move, so the nearest centre is the one at the smallest angle.
    """
    n = points.shape[0]
    if not 1 <= k <= n:
        raise DKError(f"k={k} clusters from {n} classes", f"use between 1 and {n} clusters")
    g = torch.Generator().manual_seed(seed)
    centres = _init_centres(points, k, g)
    counts = torch.zeros(k, dtype=points.dtype, device=points.device)
    for _ in range(steps):
        idx = torch.randperm(n, generator=g)[: min(batch_size, n)].to(points.device)
        batch = points[idx]
        assign = torch.cdist(batch, centres).argmin(dim=1)
        sums = torch.zeros_like(centres).index_add_(0, assign, batch)
        hits = torch.bincount(assign, minlength=k).to(points.dtype)
        counts += hits
        moved = hits > 0
        rate = (hits[moved] / counts[moved]).unsqueeze(1)
        centres[moved] = (1 - rate) * centres[moved] + rate * sums[moved] / hits[moved].unsqueeze(1)
        if spherical:
            centres[moved] = F.normalize(centres[moved], dim=1)
    return centres


def balanced_assignment(distance: torch.Tensor, capacity: int) -> torch.Tensor:
    """Each class's centre (C,) from ``distance`` (k, C), at most ``capacity`` classes per
    centre: the nearest (class, centre) pairs are taken first; a class whose nearer centres are
    full goes to the nearest with room. −1 for a class left over when every centre is full
    (``k · capacity`` < C)."""
    k, c = distance.shape
    assign = torch.full((c,), -1, dtype=torch.long, device=distance.device)
    room = torch.full((k,), capacity, dtype=torch.long, device=distance.device)
    while (assign < 0).any() and (room > 0).any():
        free = (assign < 0).nonzero().flatten()
        d = distance[:, free].masked_fill((room == 0)[:, None], float("inf"))
        best, choice = d.min(dim=0)
        # proposals grouped by centre, nearest first; each centre takes as many as it has room
        order = torch.argsort(best, stable=True)
        order = order[torch.argsort(choice[order], stable=True)]
        wanted = choice[order]
        rank = torch.arange(len(order), device=distance.device) - torch.searchsorted(wanted, wanted)
        taken = rank < room[wanted]
        assign[free[order[taken]]] = wanted[taken]
        room -= torch.bincount(wanted[taken], minlength=k)
    return assign


def correlation(cov: torch.Tensor) -> torch.Tensor:
    """The correlation matrix of a covariance matrix; a class never predicted (zero variance)
    gets a zero column."""
    sd = cov.diagonal().clamp_min(0).sqrt()
    scale = torch.where(sd > 0, 1 / sd.clamp_min(torch.finfo(cov.dtype).tiny), torch.zeros_like(sd))
    return cov * scale[:, None] * scale[None, :]


def confusable_clusters(
    probs: torch.Tensor,
    k: int,
    size: int,
    *,
    seed: int = 0,
    steps: int = 100,
    batch_size: int = 1024,
    normalize: bool = True,
    metric: str = "cosine",
    refine: int = 10,
) -> torch.Tensor:
    """``k`` clusters of ``size`` confusable classes each, from the generalist's predictions.

    Returns a (k, C) bool membership matrix: row m holds centre m's partition cell (at most
    ⌈C / k⌉ classes, see :func:`balanced_assignment`), filled up to ``size`` with the classes
    nearest centre m.
    Overlaps come from the filling (see the module docstring); clusters that came out identical
    are kept (the caller may drop duplicates with ``unique(dim=0)``).
    """
    return clusters_from_covariance(
        prediction_covariance(probs),
        k,
        size,
        seed=seed,
        steps=steps,
        batch_size=batch_size,
        normalize=normalize,
        metric=metric,
        refine=refine,
    )


def clusters_from_covariance(
    cov: torch.Tensor,
    k: int,
    size: int,
    *,
    seed: int = 0,
    steps: int = 100,
    batch_size: int = 1024,
    normalize: bool = True,
    metric: str = "cosine",
    refine: int = 10,
) -> torch.Tensor:
    """:func:`confusable_clusters` from the (C, C) prediction covariance itself (e.g. a
    :func:`streamed_covariance`)."""
    if metric not in METRICS:
        raise DKError(f"clusters metric {metric!r} is unknown", f"use one of {', '.join(METRICS)}")
    c = cov.shape[-1]
    if not 2 <= size < c:
        raise DKError(
            f"cluster size {size} for {c} classes",
            f"use a size between 2 and {c - 1} (a specialist keeps a dustbin class for the rest)",
        )
    points = correlation(cov) if normalize else cov
    spherical = metric == "cosine"
    if spherical:
        points = F.normalize(points, dim=1)  # a class never predicted stays a zero column
    centres = kmeans(points, k, seed=seed, steps=steps, batch_size=batch_size, spherical=spherical)
    capacity = min(size, -(-c // k))  # ⌈C / k⌉ classes per partition cell
    distance = torch.cdist(centres, points)  # (k, C)
    assign = balanced_assignment(distance, capacity)
    for _ in range(refine):  # balanced Lloyd steps: each centre to the mean of its cell
        cell = assign >= 0
        sums = torch.zeros_like(centres).index_add_(0, assign[cell], points[cell])
        counts = torch.bincount(assign[cell], minlength=k).to(points.dtype)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
        if spherical:
            centres[filled] = F.normalize(centres[filled], dim=1)
        distance = torch.cdist(centres, points)
        assign = balanced_assignment(distance, capacity)
    own = assign[None, :] == torch.arange(k, device=distance.device)[:, None]
    # own classes first (shifted below every other distance), then the nearest others
    ranked = torch.where(own, distance - distance.max() - 1, distance)
    nearest = ranked.topk(size, dim=1, largest=False).indices
    members = torch.zeros(k, c, dtype=torch.bool, device=cov.device)
    members.scatter_(1, nearest, True)
    return members
