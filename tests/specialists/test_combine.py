"""Combining a generalist with specialists (Hinton et al. 2015, §5): the objective against
hand values and a naive loop, the minimizer against an independent L-BFGS on the logits and the
KKT conditions, the paper's properties, the active-specialist rule, batching, and the errors."""

from __future__ import annotations

import math

import pytest
import torch

from darkknowledge.errors import DKError
from darkknowledge.specialists.combine import (
    active_specialists,
    combine,
    combine_detailed,
    dense_specialist_probs,
    objective,
)

F64 = torch.float64


# ------------------------------------------------------------------------------- helpers


def _clusters(seed: int, classes: int, specialists: int, overlap: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if overlap:
        clusters = torch.rand(specialists, classes, generator=g) < 0.4
        for m in range(specialists):
            clusters[m, m % classes] = True  # never empty
            clusters[m, (m + 1) % classes] = False  # never full
        return clusters
    # disjoint: consecutive chunks of a permutation, some classes left to no specialist
    perm = torch.randperm(classes, generator=g)
    size = classes // (specialists + 1)
    clusters = torch.zeros(specialists, classes, dtype=torch.bool)
    for m in range(specialists):
        clusters[m, perm[m * size : (m + 1) * size]] = True
    return clusters


def _case(
    seed: int,
    batch: int,
    classes: int,
    specialists: int,
    overlap: bool,
    scale: float = 2.0,
    dtype=F64,
):
    """Random generalist/specialist distributions in the (B, M, C + 1) layout and random active."""
    clusters = _clusters(seed, classes, specialists, overlap)
    g = torch.Generator().manual_seed(seed + 1000)
    p_general = torch.softmax(scale * torch.randn(batch, classes, generator=g, dtype=F64), dim=1)
    logits = scale * torch.randn(batch, specialists, classes + 1, generator=g, dtype=F64)
    allowed = torch.cat([clusters, torch.ones(specialists, 1, dtype=torch.bool)], dim=1)
    p_specialists = torch.softmax(logits.masked_fill(~allowed, -math.inf), dim=2)
    active = torch.rand(batch, specialists, generator=g) < 0.6
    return p_general.to(dtype), p_specialists.to(dtype), clusters, active


def _naive_objective(q, p_general, p_specialists, clusters, active):
    """KL(p_g ‖ q) + Σ_{m active} KL(p_m ‖ q_m) for one image, written out specialist by
    specialist.
    """
    classes = q.shape[0]
    keep = p_general > 0
    total = (p_general[keep] * (p_general[keep] / q[keep]).log()).sum()
    for m in range(clusters.shape[0]):
        if not active[m]:
            continue
        inside = clusters[m]
        p_m = torch.cat([p_specialists[m, :classes][inside], p_specialists[m, classes:]])
        q_m = torch.cat([q[inside], q[~inside].sum().reshape(1)])
        keep = p_m > 0
        total = total + (p_m[keep] * (p_m[keep] / q_m[keep]).log()).sum()
    return total


def _lbfgs_reference(p_general, p_specialists, clusters, active):
    """Minimize the naive objective over logits z (q = softmax z) for one image with L-BFGS."""
    z = p_general.log().clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [z],
        lr=1,
        max_iter=500,
        tolerance_grad=1e-12,
        tolerance_change=1e-16,
        history_size=30,
        line_search_fn="strong_wolfe",
    )

    def closure():
        optimizer.zero_grad()
        loss = _naive_objective(torch.softmax(z, dim=0), p_general, p_specialists, clusters, active)
        loss.backward()
        return loss

    optimizer.step(closure)
    return torch.softmax(z.detach(), dim=0)


def _kkt_residual(q, p_general, p_specialists, clusters, active):
    """max_c |w_c/q_c + Σ_{m active, c ∉ S_m} d_m/Q_m − (1 + #active)| for one image: zero at the
    minimizer over the simplex when q > 0 (stationarity with the multiplier 1 + #active)."""
    classes = q.shape[0]
    pull = p_general / q
    for m in range(clusters.shape[0]):
        if active[m]:
            inside = clusters[m]
            pull = pull + torch.where(
                inside, p_specialists[m, :classes] / q, p_specialists[m, classes] / q[~inside].sum()
            )
    return (pull - (1 + int(active.sum()))).abs().max().item()


# ----------------------------------------------------------------------------- objective


def test_objective_hand_computed():
    # p_g = (0.5, 0.3, 0.2), q = (0.25, 0.25, 0.5); specialist over {0} says (0.6 | dustbin 0.4),
    # so q_m = (0.25 | 0.75).
    p_general = torch.tensor([[0.5, 0.3, 0.2]], dtype=F64)
    q = torch.tensor([[0.25, 0.25, 0.5]], dtype=F64)
    clusters = torch.tensor([[True, False, False]])
    p_specialists = torch.tensor([[[0.6, 0.0, 0.0, 0.4]]], dtype=F64)
    general = 0.5 * math.log(2) + 0.3 * math.log(1.2) + 0.2 * math.log(0.4)
    special = 0.6 * math.log(0.6 / 0.25) + 0.4 * math.log(0.4 / 0.75)
    on = objective(q, p_general, p_specialists, clusters, torch.tensor([[True]]))
    off = objective(q, p_general, p_specialists, clusters, torch.tensor([[False]]))
    assert on.shape == (1,) and on.dtype == F64
    assert on.item() == pytest.approx(general + special, rel=1e-12)
    assert off.item() == pytest.approx(general, rel=1e-12)


def test_objective_matches_a_naive_loop():
    p_general, p_specialists, clusters, active = _case(0, 6, 8, 3, overlap=True)
    q = torch.softmax(
        torch.randn(6, 8, generator=torch.Generator().manual_seed(5), dtype=F64), dim=1
    )
    got = objective(q, p_general, p_specialists, clusters, active)
    want = torch.stack(
        [
            _naive_objective(q[b], p_general[b], p_specialists[b], clusters, active[b])
            for b in range(6)
        ]
    )
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- minimizer


@pytest.mark.parametrize(
    ("seed", "classes", "specialists", "overlap"),
    [(1, 6, 2, True), (2, 8, 3, True), (3, 10, 4, True), (4, 9, 2, False), (5, 10, 4, False)],
)
def test_matches_independent_lbfgs_and_kkt(seed, classes, specialists, overlap):
    p_general, p_specialists, clusters, active = _case(seed, 6, classes, specialists, overlap)
    result = combine_detailed(p_general, p_specialists, clusters, active)
    assert result.q.dtype == F64 and bool(result.converged.all())
    torch.testing.assert_close(result.q.sum(dim=1), torch.ones(6, dtype=F64), rtol=0, atol=1e-12)
    for b in range(6):
        args = (p_general[b], p_specialists[b], clusters, active[b])
        reference = _lbfgs_reference(*args)
        torch.testing.assert_close(result.q[b], reference, rtol=0, atol=1e-6)
        # never worse than the independent optimizer, and stationary
        assert _naive_objective(result.q[b], *args) <= _naive_objective(reference, *args) + 1e-12
        if active[b].any():
            assert _kkt_residual(result.q[b], *args) < 1e-9


def test_gradient_vanishes_and_perturbations_do_not_improve():
    p_general, p_specialists, clusters, active = _case(7, 10, 8, 3, overlap=True)
    active[:, 0] = True
    q = combine(p_general, p_specialists, clusters, active)
    z = q.log().requires_grad_(True)
    value = objective(torch.softmax(z, dim=1), p_general, p_specialists, clusters, active)
    value.sum().backward()
    assert z.grad.abs().max().item() < 1e-10
    g = torch.Generator().manual_seed(8)
    for _ in range(20):
        nudged = torch.softmax(q.log() + 1e-3 * torch.randn(q.shape, generator=g, dtype=F64), dim=1)
        assert bool(
            (
                objective(nudged, p_general, p_specialists, clusters, active)
                >= value.detach() - 1e-14
            ).all()
        )


def test_one_active_specialist_has_a_closed_form():
    # With one active specialist over S, the minimizer is q_c = (p_g[c] + p_m[c]) / 2 on S and
    # p_g rescaled to mass (p_g(outside) + dustbin) / 2 outside S.
    p_general = torch.tensor([[0.3, 0.25, 0.05, 0.2, 0.1, 0.1]], dtype=F64)
    clusters = torch.tensor(
        [[True, True, True, False, False, False], [False, False, False, True, True, False]]
    )
    p_specialists = torch.zeros(1, 2, 7, dtype=F64)
    p_specialists[0, 0, [0, 1, 2, 6]] = torch.tensor([0.05, 0.9, 0.02, 0.03], dtype=F64)
    active = torch.tensor([[True, False]])
    q = combine(p_general, p_specialists, clusters, active)[0]
    inside = torch.tensor([0.35, 1.15, 0.07], dtype=F64) / 2
    outside = p_general[0, 3:] * (0.4 + 0.03) / 2 / 0.4
    torch.testing.assert_close(q, torch.cat([inside, outside]), rtol=0, atol=1e-14)
    # the specialist's confidence in class 1 raises it above the generalist's 0.25
    assert q[1] > p_general[0, 1]


def test_agreeing_specialist_leaves_the_generalist_unchanged():
    p_general, _, clusters, _ = _case(9, 5, 8, 3, overlap=True)
    # each specialist's output is the generalist collapsed onto its outputs
    inside = p_general[:, None, :] * clusters[None]
    dustbin = (p_general[:, None, :] * ~clusters[None]).sum(dim=2, keepdim=True)
    p_specialists = torch.cat([inside, dustbin], dim=2)
    active = torch.ones(5, 3, dtype=torch.bool)
    q = combine(p_general, p_specialists, clusters, active)
    torch.testing.assert_close(q, p_general, rtol=0, atol=1e-14)


def test_no_active_specialist_returns_the_generalist_exactly():
    for dtype in (torch.float32, F64):
        p_general, p_specialists, clusters, active = _case(10, 6, 8, 3, overlap=True, dtype=dtype)
        active[::2] = False  # rows 0, 2, 4 have no active specialist
        p_specialists[0::2] = math.nan  # inactive outputs are ignored, whatever they hold
        result = combine_detailed(p_general, p_specialists, clusters, active)
        assert result.q.dtype == dtype
        assert torch.equal(result.q[::2], p_general[::2])
        assert result.steps[::2].eq(0).all() and result.converged.all()
        assert not torch.equal(result.q[1::2], p_general[1::2])
        nothing = torch.zeros_like(active)
        assert torch.equal(combine(p_general, p_specialists, clusters, nothing), p_general)


def test_confident_specialist_raises_its_class_and_outside_proportions_are_kept():
    p_general, p_specialists, clusters, active = _case(11, 12, 10, 3, overlap=True)
    # specialist 0, active everywhere, is 90% sure of the first class c of its cluster, against
    # the same specialist spreading that mass evenly over its cluster (same dustbin)
    c = int(clusters[0].nonzero()[0, 0])
    members = clusters[0].nonzero()[:, 0]
    active[:, 0] = True
    even = p_specialists.clone()
    even[:, 0] = 0
    even[:, 0, members] = 0.95 / len(members)
    even[:, 0, -1] = 0.05
    sure = even.clone()
    sure[:, 0, members] = 0.05 / len(members)
    sure[:, 0, c] += 0.9
    q_sure = combine(p_general, sure, clusters, active)
    q_even = combine(p_general, even, clusters, active)
    assert bool((q_sure[:, c] > q_even[:, c]).all())
    # alone, it lifts c above the generalist's probability (q_c = (p_g[c] + 0.905) / 2 here)
    alone = torch.zeros_like(active)
    alone[:, 0] = True
    q_alone = combine(p_general, sure, clusters, alone)
    assert bool((q_alone[:, c] > p_general[:, c]).all())
    # classes outside every active cluster keep their proportions among themselves
    checked = 0
    for q, act in ((q_sure, active), (q_even, active), (q_alone, alone)):
        for b in range(12):
            out = ~(clusters[act[b]].any(dim=0))
            if int(out.sum()) >= 2:
                checked += 1
                torch.testing.assert_close(
                    q[b, out] / q[b, out].sum(),
                    p_general[b, out] / p_general[b, out].sum(),
                    rtol=1e-12,
                    atol=0,
                )
    assert checked >= 12


def test_dustbins_can_fill_a_class_the_generalist_rules_out():
    # Both specialists are sure the image is not theirs; the only class outside both clusters
    # has generalist probability 1e-30 (0 in the second image), yet the minimizer gives it a
    # third of the mass: with w = (0.51, 0.51, ~0), d = (0.99, 0.99) and λ = 3, the KKT
    # conditions give r = d / Q = 1.5 for both dustbins, q_0 = q_1 = 0.51 / (3 − 1.5) = 0.34 and
    # q_2 = 0.32 (its logit rises by ~68 nats from log p_g).
    p_general = torch.tensor([[0.5, 0.5 - 1e-30, 1e-30], [0.5, 0.5, 0.0]], dtype=F64)
    clusters = torch.tensor([[True, False, False], [False, True, False]])
    p_specialists = torch.tensor([[[0.01, 0.0, 0.0, 0.99], [0.0, 0.01, 0.0, 0.99]]] * 2, dtype=F64)
    active = torch.ones(2, 2, dtype=torch.bool)
    result = combine_detailed(p_general, p_specialists, clusters, active)
    # the Frank–Wolfe step moves the mass at once
    assert bool(result.converged.all()) and int(result.steps.max()) <= 2
    torch.testing.assert_close(
        result.q, torch.tensor([[0.34, 0.34, 0.32]] * 2, dtype=F64), rtol=0, atol=1e-12
    )
    args = (p_general[0], p_specialists[0], clusters, active[0])
    best = _naive_objective(result.q[0], *args)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):  # no point of the simplex nearby does better
        other = result.q[0] * torch.exp(0.05 * torch.randn(3, generator=g, dtype=F64))
        assert _naive_objective(other / other.sum(), *args) >= best - 1e-14


def test_batched_call_equals_per_image_calls():
    p_general, p_specialists, clusters, active = _case(12, 16, 9, 4, overlap=True)
    batched = combine(p_general, p_specialists, clusters, active)
    single = torch.cat(
        [
            combine(p_general[b : b + 1], p_specialists[b : b + 1], clusters, active[b : b + 1])
            for b in range(16)
        ]
    )
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-13)


def test_float32_gives_float32_close_to_float64():
    p_general, p_specialists, clusters, active = _case(13, 10, 10, 3, overlap=True)
    q64 = combine(p_general, p_specialists, clusters, active)
    q32 = combine(p_general.float(), p_specialists.float(), clusters, active)
    assert q32.dtype == torch.float32
    torch.testing.assert_close(q32.double(), q64, rtol=0, atol=1e-6)


def test_steps_and_warning_when_not_converged():
    p_general, p_specialists, clusters, active = _case(14, 8, 10, 4, overlap=True, scale=4.0)
    active[:] = True
    result = combine_detailed(p_general, p_specialists, clusters, active)
    assert bool(result.converged.all()) and int(result.steps.max()) <= 20
    with pytest.warns(UserWarning, match="did not converge"):
        combine(p_general, p_specialists, clusters, active, max_steps=0)


# ------------------------------------------------------------------------ active, layout


def test_active_specialists_top1_and_top2():
    clusters = torch.tensor(
        [
            [True, True, False, False, False],
            [False, True, True, False, False],
            [False, False, False, True, False],
        ]
    )
    p_general = torch.tensor(
        [[0.5, 0.3, 0.1, 0.05, 0.05], [0.1, 0.2, 0.6, 0.05, 0.05], [0.05, 0.05, 0.1, 0.2, 0.6]],
        dtype=F64,
    )
    top1 = active_specialists(p_general, clusters)
    assert top1.tolist() == [[True, False, False], [False, True, False], [False, False, False]]
    top2 = active_specialists(p_general, clusters, top_n=2)
    assert top2.tolist() == [[True, True, False], [True, True, False], [False, False, True]]
    assert active_specialists(p_general, clusters, top_n=5).all(dim=1).tolist() == [True] * 3


def test_dense_specialist_probs_layout():
    clusters = torch.tensor([[False, True, False, True], [True, False, False, False]])
    outputs = [torch.tensor([[0.2, 0.3, 0.5]]), torch.tensor([[0.9, 0.1]])]
    dense = dense_specialist_probs(outputs, clusters)
    assert torch.equal(
        dense, torch.tensor([[[0.0, 0.2, 0.0, 0.3, 0.5], [0.9, 0.0, 0.0, 0.0, 0.1]]])
    )
    with pytest.raises(DKError, match="outputs\\[1\\] must be"):
        dense_specialist_probs([outputs[0], torch.tensor([[0.5, 0.3, 0.2]])], clusters)


# --------------------------------------------------------------------------------- errors


def _valid():
    p_general, p_specialists, clusters, active = _case(15, 3, 5, 2, overlap=True)
    active[:] = True
    return p_general, p_specialists, clusters, active


def _with(**changes):
    args = dict(zip(("p_general", "p_specialists", "clusters", "active"), _valid(), strict=True))
    for name, change in changes.items():
        args[name] = change(args[name])
    return args


def _set(index, value):
    def change(p):
        p = p.clone()
        p[index] = value
        return p

    return change


def _ps_outside(p):
    p = p.clone()
    c = int((~_valid()[2][0]).nonzero()[0, 0])
    p[0, 0, c] = 0.1
    p[0, 0] /= p[0, 0].sum()
    return p


def _cluster_empty(c):
    c = c.clone()
    c[1] = False
    return c


def _cluster_full(c):
    c = c.clone()
    c[0] = True
    return c


ERRORS = {
    "p_general 1-D": (dict(p_general=lambda p: p[0]), "p_general must be a non-empty"),
    "p_general classes": (
        dict(p_general=lambda p: torch.softmax(torch.zeros(3, 4, dtype=F64), 1)),
        "4 classes but clusters has 5",
    ),
    "p_general integer": (dict(p_general=lambda p: (p > 0.5).long()), "floating-point"),
    "p_general negative": (dict(p_general=_set((0, 1), -0.05)), "negative probability"),
    "p_general sum": (dict(p_general=lambda p: p * 1.01), "summing to 1.01"),
    "p_general nan": (
        dict(p_general=lambda p: p.index_fill(1, torch.tensor([0]), math.nan)),
        "NaN or Inf",
    ),
    "clusters dtype": (dict(clusters=lambda c: c.long()), "bool tensor"),
    "clusters shape": (dict(clusters=lambda c: c[0]), "clusters must be (specialists, classes)"),
    "cluster empty": (dict(clusters=_cluster_empty), "specialist 1's cluster is empty"),
    "cluster full": (dict(clusters=_cluster_full), "specialist 0's cluster covers all 5 classes"),
    "p_specialists shape": (dict(p_specialists=lambda p: p[..., :-1]), "classes + 1) = (3, 2, 6)"),
    "p_specialists sum": (
        dict(p_specialists=lambda p: p * 0.9),
        "summing to 0.9, not 1 (tolerance 0.0001) (in an active specialist's output)",
    ),
    "p_specialists negative": (dict(p_specialists=_set((1, 1, -1), -0.05)), "negative probability"),
    "p_specialists outside": (dict(p_specialists=_ps_outside), "outside specialist 0's cluster"),
    "active shape": (
        dict(active=lambda a: a[:, :1]),
        "active must be (batch, specialists) = (3, 2)",
    ),
    "active dtype": (dict(active=lambda a: a.long()), "active must be a bool tensor"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_are_one_line_dkerrors(case):
    changes, message = ERRORS[case]
    args = _with(**changes)
    q = torch.full((3, 5), 0.2, dtype=F64)
    for call in (lambda: combine(**args), lambda: objective(q, **args)):
        with pytest.raises(DKError) as info:
            call()
        assert message in str(info.value)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("top_n", [0, 6, True, 1.0])
def test_top_n_errors(top_n):
    p_general, _, clusters, _ = _valid()
    with pytest.raises(DKError, match="top_n must be an integer in \\[1, 5\\]"):
        active_specialists(p_general, clusters, top_n=top_n)


@pytest.mark.parametrize(
    ("option", "value"), [("max_steps", -1), ("max_steps", 2.0), ("tol", -1.0), ("tol", math.nan)]
)
def test_option_errors(option, value):
    with pytest.raises(DKError, match=f"{option} must be"):
        combine(*_valid(), **{option: value})
