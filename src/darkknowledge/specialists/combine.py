"""Combining a generalist with specialists (Hinton, Vinyals & Dean 2015, §5).

A generalist gives ``p_g`` over C classes. Specialist m covers a subset ``S_m`` of the classes
(its cluster) plus one *dustbin* output standing for every class outside ``S_m``. For an image,
the specialists whose clusters hold one of the generalist's top-n classes are *active*
(:func:`active_specialists`), and the combined prediction ``q`` over all C classes minimizes

    F(q) = KL(p_g ‖ q) + Σ_{m active} KL(p_m ‖ q_m),

where ``q_m`` is ``q`` collapsed onto specialist m's outputs: ``q_m[c] = q[c]`` for c in ``S_m``
and ``q_m[dustbin] = Σ_{c ∉ S_m} q[c]`` (:func:`objective`). With no active specialist, q = p_g.

Layouts (B images, M specialists, C classes):

- ``clusters``: (M, C) bool, ``clusters[m, c]`` is True when specialist m covers class c. Every
  row holds at least one class and leaves at least one out (else there is no dustbin).
- ``p_specialists``: (B, M, C + 1) "per-class" layout: ``p_specialists[b, m, c]`` is specialist
  m's probability of class c for image b when c is in its cluster and exactly 0 when it is not;
  ``p_specialists[b, m, C]`` (the last column) is its dustbin probability. Rows of active
  specialists sum to 1; rows of inactive ones are ignored (zeros, NaN: anything).
  :func:`dense_specialist_probs` builds it from each specialist's own (B, |S_m| + 1) outputs.
- ``active``: (B, M) bool, from :func:`active_specialists` or chosen freely.

How :func:`combine` minimizes F. Write ``w = p_g + Σ_{m active} p_m[S_m]`` (each class's
in-cluster weight), ``d_m`` the active specialists' dustbin probabilities (0 for inactive ones)
and ``Q_m = Σ_{c ∉ S_m} q_c``. Up to a constant, ``F(q) = −Σ_c w_c log q_c − Σ_m d_m log Q_m``
on the simplex: a sum of −log of linear functions, convex in q. Its KKT conditions give the
simplex multiplier in closed form, ``λ = Σ w + Σ d`` (= 1 + the number of active specialists),
so the minimizer is also the unconstrained minimizer over q > 0 of

    G(q) = −Σ_c w_c log q_c − Σ_m d_m log Q_m + λ Σ_c q_c.

Classes held by the same active clusters (among those with d_m > 0) form an *atom*; G sees how
an atom's mass is split only through ``−Σ w log q``, so at the minimizer q ∝ w within every
atom, and the unknowns are the K atom masses μ (K ≤ C, and K ≤ 2^A with A active specialists:
small under the paper's top-1 rule). From μ ∝ W (the atoms' weights) and one EM step, each
step of :func:`combine` is

1. a Frank–Wolfe step towards the atom of smallest gradient, with exact line search (bisection
   on the derivative): it moves mass at once onto an atom that the generalist gives ~0 but
   that the dustbins push mass into, which Newton steps would grow only a few-fold per step;
2. a damped Newton step: the K × K Hessian ``diag(W / μ²) + Pᵀ diag(d / Q²) P`` (P: which atoms
   lie outside which active cluster) solved by a Jacobi-scaled Cholesky, with Levenberg–
   Marquardt damping where it is numerically singular, backtracked to keep μ > 0 and to meet
   Armijo's condition; Newton converges quadratically near the minimizer;
3. a rescaling to Σμ = 1 (the exact minimizer of G along that ray).

An image stops when its Frank–Wolfe gap ``gᵀμ − min_a g_a`` is at most ``tol``: by convexity
this bounds F(q) − min F, a certificate (a Newton-decrement estimate is not one: it misjudges
atoms of tiny weight). Everything is batched over images and specialists (images leave the
batch as they converge); a step costs O(B·(M·K² + K³)). Typical images need 1–6 steps;
extreme ones (probabilities down to 1e-26 that dustbins must fill) up to about 40.

The optimization runs in float64 whatever the inputs (q is returned in the inputs' dtype): a
class that receives much more than its weight (q_c ≫ w_c) is determined only to a relative
precision of about eps · q_c / w_c, which float32 cannot afford. Zeros in w are raised to
``FLOOR`` (1e-30).

Why not gradient descent on the logits z (q = softmax z), starting from log p_g? The dustbin
terms −log Σ_{c ∉ S} softmax(z)_c are not convex in z, so F need not be (each stationary point
is still the minimizer, F being convex in q); and first-order steps crawl when a dustbin must
fill classes that the generalist gives ~0 (their logits must rise by tens of nats), besides
needing a step size. The atom Newton method needs no step size and is exact within atoms.

Reference: Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network", §5.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import torch

from darkknowledge.errors import DKError

SUM_TOL = 1e-4
"""How far from 1 a distribution's sum may be (float rounding of a softmax)."""

FLOOR = 1e-30
"""Zero in-cluster weights are raised to this in the optimization (q must stay > 0)."""

DEFAULT_TOL = 1e-12
"""Default ``tol``: an image stops when its certified objective gap is at most this (nats)."""


class Combination(NamedTuple):
    """What :func:`combine_detailed` returns.

    Attributes:
        q: (B, C) combined distribution.
        steps: (B,) int64 steps (Frank–Wolfe + Newton) taken per image; 0 where no specialist
            is active or the start already meets ``tol``.
        converged: (B,) bool, the Frank–Wolfe gap reached ``tol`` (True where none is active).
    """

    q: torch.Tensor
    steps: torch.Tensor
    converged: torch.Tensor


# ----------------------------------------------------------------------------------- checks


def _float(value: object, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise DKError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise DKError(f"{name} must hold floating-point probabilities, got dtype {value.dtype}")
    return value.float() if value.dtype in (torch.float16, torch.bfloat16) else value


def _check_clusters(clusters: object) -> torch.Tensor:
    if not isinstance(clusters, torch.Tensor) or clusters.dtype != torch.bool:
        got = clusters.dtype if isinstance(clusters, torch.Tensor) else type(clusters).__name__
        raise DKError(
            f"clusters must be a bool tensor (specialists, classes), got {got}",
            "use e.g. clusters = membership != 0",
        )
    if clusters.dim() != 2 or clusters.shape[0] < 1 or clusters.shape[1] < 2:
        raise DKError(
            "clusters must be (specialists, classes) with at least 1 specialist and 2 classes, "
            f"got shape {tuple(clusters.shape)}"
        )
    sizes = clusters.sum(dim=1)
    if bool((sizes == 0).any()):
        m = int((sizes == 0).nonzero()[0, 0])
        raise DKError(
            f"specialist {m}'s cluster is empty", "give every specialist at least one class"
        )
    classes = clusters.shape[1]
    if bool((sizes == classes).any()):
        m = int((sizes == classes).nonzero()[0, 0])
        raise DKError(
            f"specialist {m}'s cluster covers all {classes} classes, leaving its dustbin nothing",
            "leave at least one class out of every cluster (a specialist over all classes is a "
            "generalist)",
        )
    return clusters


def _check_distributions(p: torch.Tensor, name: str, where: str) -> None:
    """Rows of ``p`` (..., K) must be finite, ≥ 0 and sum to 1 within SUM_TOL."""
    if p.numel() == 0:
        return
    if not bool(torch.isfinite(p).all()):
        raise DKError(
            f"{name} holds NaN or Inf{where}",
            "pass probabilities (softmax outputs), not raw scores",
        )
    low = p.min()
    if bool(low < 0):
        raise DKError(
            f"{name} holds a negative probability ({float(low):.3g}){where}",
            "pass probabilities (softmax outputs), not logits",
        )
    error = (p.sum(dim=-1) - 1).abs()
    worst = error.max()
    if bool(worst > SUM_TOL):
        total = float(p.sum(dim=-1).flatten()[error.flatten().argmax()])
        raise DKError(
            f"{name} has a row summing to {total:.6g}, not 1 (tolerance {SUM_TOL:g}){where}",
            "normalize each distribution (e.g. a softmax over its last dimension)",
        )


def _check_general(p_general: object, classes: int | None = None) -> torch.Tensor:
    p = _float(p_general, "p_general")
    if p.dim() != 2 or p.shape[0] == 0:
        raise DKError(f"p_general must be a non-empty (batch, classes), got shape {tuple(p.shape)}")
    if classes is not None and p.shape[1] != classes:
        raise DKError(
            f"p_general has {p.shape[1]} classes but clusters has {classes} columns",
            "use the generalist's label set, in the same order, for the clusters' columns",
        )
    _check_distributions(p, "p_general", "")
    return p


def _check_active(active: object, batch: int, specialists: int) -> torch.Tensor:
    if not isinstance(active, torch.Tensor) or active.dtype != torch.bool:
        got = active.dtype if isinstance(active, torch.Tensor) else type(active).__name__
        raise DKError(
            f"active must be a bool tensor (batch, specialists), got {got}",
            "use active_specialists(p_general, clusters)",
        )
    if tuple(active.shape) != (batch, specialists):
        raise DKError(
            f"active must be (batch, specialists) = {(batch, specialists)}, got shape "
            f"{tuple(active.shape)}"
        )
    return active


def _check_specialists(
    p_specialists: object, clusters: torch.Tensor, active: torch.Tensor
) -> torch.Tensor:
    p = _float(p_specialists, "p_specialists")
    batch, specialists = active.shape
    classes = clusters.shape[1]
    want = (batch, specialists, classes + 1)
    if tuple(p.shape) != want:
        raise DKError(
            f"p_specialists must be (batch, specialists, classes + 1) = {want}, got shape "
            f"{tuple(p.shape)}",
            "put specialist m's class probabilities at their class indices and its dustbin last "
            "(see dense_specialist_probs)",
        )
    clusters, active = clusters.to(p.device), active.to(p.device)
    rows = p[active]  # (K, C + 1), the active specialists' outputs
    _check_distributions(rows, "p_specialists", " (in an active specialist's output)")
    outside = ~clusters.expand(batch, specialists, classes)[active]  # (K, C)
    stray = rows[:, :classes] * outside
    if bool((stray != 0).any()):
        k, c = (stray != 0).nonzero()[0].tolist()
        b, m = active.nonzero()[k].tolist()
        raise DKError(
            f"p_specialists[{b}, {m}] puts probability {float(rows[k, c]):.3g} on class {c}, "
            f"outside specialist {m}'s cluster",
            "entries outside a cluster must be 0; the dustbin goes in the last column (index "
            f"{classes})",
        )
    return p


def _dtype(*tensors: torch.Tensor) -> torch.dtype:
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


# ----------------------------------------------------------------------------------- public


def dense_specialist_probs(outputs: Sequence[torch.Tensor], clusters: torch.Tensor) -> torch.Tensor:
    """The (B, M, C + 1) layout from each specialist's own outputs.

    Args:
        outputs: M tensors; ``outputs[m]`` is (B, |S_m| + 1): specialist m's probabilities of its
            cluster's classes in increasing class order, then its dustbin.
        clusters: (M, C) bool.

    Returns:
        (B, M, C + 1), zeros outside each cluster, dtype of the outputs (promoted to ≥ float32).
    """
    clusters = _check_clusters(clusters)
    specialists, classes = clusters.shape
    if isinstance(outputs, torch.Tensor) or len(outputs) != specialists:
        raise DKError(
            f"outputs must be a sequence of {specialists} tensors (one per specialist), got "
            f"{type(outputs).__name__} of length {len(outputs)}"
        )
    outputs = [_float(o, f"outputs[{m}]") for m, o in enumerate(outputs)]
    if outputs[0].dim() != 2:
        raise DKError(
            f"outputs[0] must be (batch, cluster size + 1), got shape {tuple(outputs[0].shape)}"
        )
    batch = outputs[0].shape[0]
    dense = torch.zeros(
        batch, specialists, classes + 1, dtype=_dtype(*outputs), device=outputs[0].device
    )
    for m, out in enumerate(outputs):
        size = int(clusters[m].sum())
        if tuple(out.shape) != (batch, size + 1):
            raise DKError(
                f"outputs[{m}] must be (batch, cluster size + 1) = {(batch, size + 1)}, got shape "
                f"{tuple(out.shape)}"
            )
        index = torch.cat([clusters[m].nonzero()[:, 0].cpu(), torch.tensor([classes])]).to(
            out.device
        )
        dense[:, m, index] = out.to(dense.dtype)
    return dense


def active_specialists(
    p_general: torch.Tensor, clusters: torch.Tensor, top_n: int = 1
) -> torch.Tensor:
    """(B, M) bool: specialist m is active for image b when its cluster holds one of the
    generalist's ``top_n`` most probable classes (the paper uses top_n = 1).

    Ties are broken by ``torch.topk``.
    """
    clusters = _check_clusters(clusters)
    classes = clusters.shape[1]
    p = _check_general(p_general, classes)
    if isinstance(top_n, bool) or not isinstance(top_n, int) or not 1 <= top_n <= classes:
        raise DKError(
            f"top_n must be an integer in [1, {classes}] (the class count), got {top_n!r}",
            "use top_n=1 as in the paper",
        )
    top = p.topk(top_n, dim=1).indices  # (B, n)
    return clusters.to(p.device).T[top].any(dim=1)


def objective(
    q: torch.Tensor,
    p_general: torch.Tensor,
    p_specialists: torch.Tensor,
    clusters: torch.Tensor,
    active: torch.Tensor,
) -> torch.Tensor:
    """Per-image ``KL(p_g ‖ q) + Σ_{m active} KL(p_m ‖ q_m)``, (B,), differentiable in q.

    ``0 · log 0 = 0``; inactive specialists' entries are ignored. Inputs are validated like
    :func:`combine`'s; q is (B, C), ≥ 0 (a zero where the targets are not gives +inf).
    """
    clusters = _check_clusters(clusters)
    p_g = _check_general(p_general, clusters.shape[1])
    active = _check_active(active, p_g.shape[0], clusters.shape[0])
    p_s = _check_specialists(p_specialists, clusters, active)
    q = _float(q, "q")
    if tuple(q.shape) != tuple(p_g.shape):
        raise DKError(
            f"q must be (batch, classes) = {tuple(p_g.shape)} like p_general, got shape "
            f"{tuple(q.shape)}"
        )
    dtype = _dtype(q, p_g, p_s)
    q, p_g = q.to(dtype), p_g.to(dtype)
    clusters = clusters.to(q.device)
    p_s = torch.where(active.to(q.device)[..., None], p_s.to(dtype), 0)
    outside = (~clusters).to(dtype)
    dustbin_q = q @ outside.T  # (B, M)
    collapsed = torch.cat(
        [q[:, None, :].expand(-1, clusters.shape[0], -1), dustbin_q[..., None]], dim=2
    )
    general = (torch.xlogy(p_g, p_g) - torch.xlogy(p_g, q)).sum(dim=1)
    special = (torch.xlogy(p_s, p_s) - torch.xlogy(p_s, collapsed)).sum(dim=(1, 2))
    return general + special


def combine(
    p_general: torch.Tensor,
    p_specialists: torch.Tensor,
    clusters: torch.Tensor,
    active: torch.Tensor,
    *,
    max_steps: int = 100,
    tol: float | None = None,
) -> torch.Tensor:
    """The combined (B, C) distribution q minimizing :func:`objective` for every image.

    See the module docstring for the layouts and the method; :func:`combine_detailed` also
    returns the steps taken and whether each image converged. Warns when one did not.

    Args:
        p_general: (B, C) generalist probabilities.
        p_specialists: (B, M, C + 1) specialist probabilities (per-class layout, dustbin last).
        clusters: (M, C) bool cluster membership.
        active: (B, M) bool active specialists, e.g. :func:`active_specialists`.
        max_steps: steps at most per image (typically 1–6 are needed).
        tol: stop an image once F(q) − min F is certainly ≤ tol nats (its Frank–Wolfe gap);
            default ``DEFAULT_TOL`` = 1e-12. The float64 rounding floor is about 1e-14.

    Returns:
        q (B, C), float32 (float64 when an input is float64); rows with no active specialist
        are p_general itself.
    """
    result = combine_detailed(
        p_general, p_specialists, clusters, active, max_steps=max_steps, tol=tol
    )
    missed = int((~result.converged).sum())
    if missed:
        warnings.warn(
            f"specialist combination: {missed} of {result.q.shape[0]} image(s) did not converge in "
            f"{max_steps} steps (their q is the best found)",
            stacklevel=2,
        )
    return result.q


def combine_detailed(
    p_general: torch.Tensor,
    p_specialists: torch.Tensor,
    clusters: torch.Tensor,
    active: torch.Tensor,
    *,
    max_steps: int = 100,
    tol: float | None = None,
) -> Combination:
    """:func:`combine`, returning :class:`Combination` (q, steps, converged); never warns."""
    clusters = _check_clusters(clusters)
    p_g = _check_general(p_general, clusters.shape[1])
    active = _check_active(active, p_g.shape[0], clusters.shape[0])
    p_s = _check_specialists(p_specialists, clusters, active)
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 0:
        raise DKError(f"max_steps must be an integer ≥ 0, got {max_steps!r}")
    dtype = _dtype(p_g, p_s)
    if tol is None:
        tol = DEFAULT_TOL
    if (
        isinstance(tol, bool)
        or not isinstance(tol, (int, float))
        or not math.isfinite(tol)
        or tol < 0
    ):
        raise DKError(f"tol must be a finite number ≥ 0, got {tol!r}")
    device = p_g.device
    clusters, active = clusters.to(device), active.to(device)
    p_g = p_g.to(dtype)

    # The optimization runs in float64 whatever the inputs: where a specialist's dustbin is large
    # and the generalist gives the classes outside its cluster almost nothing, the Newton system
    # is too ill-conditioned for float32 (see the module docstring).
    work = torch.float64
    classes = clusters.shape[1]
    p_s = torch.where(active[..., None], p_s.to(device=device, dtype=work), 0)
    w = p_g.to(work) + p_s[..., :classes].sum(dim=1)  # (B, C) in-cluster weight of each class
    d = p_s[..., classes]  # (B, M) dustbin probabilities, 0 for inactive specialists
    outside = ~clusters  # (M, C)

    has_active = active.any(dim=1)
    steps = torch.zeros(p_g.shape[0], dtype=torch.int64, device=device)
    converged = ~has_active
    q = p_g.clone()
    rows = has_active.nonzero()[:, 0]
    if rows.numel():
        w_rows = w[rows].clamp_min(FLOOR)
        lam = w_rows.sum(dim=1) + d[rows].sum(dim=1)  # the simplex multiplier, ≈ 1 + #active
        q_rows, steps_rows, conv_rows = _minimize(
            w_rows, d[rows], lam, outside, max_steps, float(tol)
        )
        q[rows] = (q_rows / q_rows.sum(dim=1, keepdim=True)).to(dtype)
        steps[rows] = steps_rows
        converged[rows] = conv_rows
    return Combination(q, steps, converged)


# -------------------------------------------------------------------------------- optimizer


class _Atoms(NamedTuple):
    """Classes grouped by the active clusters (with a dustbin probability > 0) that hold them.

    The objective depends on q only through ``w·log q`` and the dustbin masses, so at the
    minimizer q is proportional to w within every atom; only the K atoms' masses are unknown.
    Rows have different atom counts: padding atoms have weight λ, no pattern and mass 1, which
    is their own optimum, so they never move.
    """

    of: torch.Tensor  # (R, C) int64, the atom of each class
    weight: torch.Tensor  # (R, K) W_a = Σ_{c in a} w_c (λ for padding)
    # (R, M, K) 1 where atom a lies outside specialist m's cluster and d_m > 0
    pattern: torch.Tensor
    valid: torch.Tensor  # (R, K) bool, False for padding


def _atoms(w: torch.Tensor, d: torch.Tensor, lam: torch.Tensor, outside: torch.Tensor) -> _Atoms:
    rows, classes = w.shape
    specialists = outside.shape[0]
    member = outside[None] & (d > 0)[:, :, None]  # (R, M, C) bool
    # Pack each class's pattern into int64 words of 62 bits, then group equal patterns by
    # stable sorts (one per word): equal patterns end up next to each other.
    words = []
    for start in range(0, specialists, 62):
        block = member[:, start : start + 62].to(torch.int64)
        shifts = torch.arange(block.shape[1], device=w.device)
        words.append((block << shifts[None, :, None]).sum(dim=1))  # (R, C)
    order = torch.arange(classes, device=w.device).expand(rows, classes)
    for word in words:
        order = order.gather(1, torch.sort(word.gather(1, order), dim=1, stable=True).indices)
    change = torch.zeros(rows, classes, dtype=torch.bool, device=w.device)
    for word in words:
        ranked = word.gather(1, order)
        change[:, 1:] |= ranked[:, 1:] != ranked[:, :-1]
    ranked_atom = change.cumsum(dim=1)
    of = torch.empty_like(ranked_atom).scatter_(1, order, ranked_atom)
    count = ranked_atom[:, -1] + 1
    atoms = int(count.max())
    valid = torch.arange(atoms, device=w.device)[None] < count[:, None]
    weight = torch.zeros(rows, atoms, dtype=w.dtype, device=w.device).scatter_add_(1, of, w)
    weight = torch.where(valid, weight, lam[:, None])
    pattern = torch.zeros(rows, specialists, atoms, dtype=w.dtype, device=w.device)
    pattern = pattern.scatter_reduce_(
        2, of[:, None, :].expand(-1, specialists, -1), member.to(w.dtype), "amax"
    )
    return _Atoms(of, weight, pattern, valid)


def _dustbins(mu: torch.Tensor, d: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """Q_m = Σ_a pattern[m, a] μ_a; 1 where d_m = 0 (that term is absent)."""
    mass = torch.einsum("rmk,rk->rm", pattern, mu)
    return torch.where(d > 0, mass, torch.ones_like(mass))


def _value(
    mu: torch.Tensor,
    weight: torch.Tensor,
    d: torch.Tensor,
    lam: torch.Tensor,
    pattern: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """G(μ) = −Σ W log μ − Σ d log Q + λ Σ μ per row, and the size of its terms."""
    log_mu = weight * mu.log()
    log_q = torch.xlogy(d, _dustbins(mu, d, pattern))
    total = lam * mu.sum(dim=1)
    value = -log_mu.sum(dim=1) - log_q.sum(dim=1) + total
    return value, log_mu.abs().sum(dim=1) + log_q.abs().sum(dim=1) + total


def _gradient(
    mu: torch.Tensor,
    weight: torch.Tensor,
    d: torch.Tensor,
    lam: torch.Tensor,
    pattern: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    dustbin = _dustbins(mu, d, pattern)
    return lam[:, None] - weight / mu - torch.einsum("rm,rmk->rk", d / dustbin, pattern), dustbin


def _newton_direction(
    mu: torch.Tensor,
    grad: torch.Tensor,
    dustbin: torch.Tensor,
    weight: torch.Tensor,
    d: torch.Tensor,
    pattern: torch.Tensor,
) -> torch.Tensor:
    """−H⁻¹g with H = diag(W/μ²) + Pᵀ diag(d/Q²) P, by a Jacobi-scaled Cholesky; rows whose
    matrix is numerically singular get Levenberg–Marquardt damping (still a descent step)."""
    hessian = (pattern * (d / dustbin**2)[:, :, None]).transpose(1, 2) @ pattern
    hessian = hessian + torch.diag_embed(weight / mu**2)
    scale = hessian.diagonal(dim1=1, dim2=2).rsqrt()
    scaled = hessian * scale[:, :, None] * scale[:, None, :]
    rhs = (-grad * scale)[..., None]
    eye = torch.eye(mu.shape[1], dtype=mu.dtype, device=mu.device)
    step = torch.zeros_like(mu)
    todo = torch.ones(mu.shape[0], dtype=torch.bool, device=mu.device)
    for damping in (0.0, 1e-12, 1e-9, 1e-6, 1e-3, 1.0):
        factor, info = torch.linalg.cholesky_ex(scaled[todo] + damping * eye)
        solved = torch.cholesky_solve(rhs[todo], factor)[..., 0]
        ok = (info == 0) & torch.isfinite(solved).all(dim=1)
        index = todo.nonzero()[:, 0]
        step[index[ok]] = solved[ok]
        todo[index[ok]] = False
        if not bool(todo.any()):
            break
    return step * scale  # rows still failing (NaN inputs) get no step


def _frank_wolfe(
    mu: torch.Tensor,
    grad: torch.Tensor,
    dustbin: torch.Tensor,
    valid: torch.Tensor,
    weight: torch.Tensor,
    d: torch.Tensor,
    pattern: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One Frank–Wolfe step towards the atom of smallest gradient, with exact line search.

    Newton's steps can grow an atom's mass only a few-fold each (its −W log μ term is a
    barrier), so an atom that the generalist gives ~0 but that must absorb the dustbins' mass
    would take dozens of steps; this step moves the mass at once. Returns (μ, γ).
    """
    target = torch.where(valid, grad, torch.full_like(grad, math.inf)).argmin(dim=1)
    direction = (torch.nn.functional.one_hot(target, mu.shape[1]).to(mu.dtype) - mu) * valid
    moved = torch.einsum("rmk,rk->rm", pattern, direction)
    dustbin_weight = torch.where(d > 0, d, torch.zeros_like(d))

    def slope(gamma: torch.Tensor) -> torch.Tensor:  # φ'(γ) for φ(γ) = G(μ + γ u), Σu = 0
        g = gamma[:, None]
        return -(weight * direction / (mu + g * direction)).sum(dim=1) - (
            dustbin_weight * moved / (dustbin + g * moved)
        ).sum(dim=1)

    low = torch.zeros(mu.shape[0], dtype=mu.dtype, device=mu.device)
    high = torch.ones_like(low)  # φ'(γ) → +∞ as γ → 1: the other atoms' mass vanishes
    for _ in range(60):  # φ is convex: bisect on the sign of φ'
        middle = (low + high) / 2
        below = slope(middle) < 0
        low = torch.where(below, middle, low)
        high = torch.where(below, high, middle)
    return mu + low[:, None] * direction, low


def _minimize(
    w: torch.Tensor,
    d: torch.Tensor,
    lam: torch.Tensor,
    outside: torch.Tensor,
    max_steps: int,
    tol: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Minimize G for R rows at once; returns q (R, C), steps (R,), converged (R,).

    Start: μ ∝ W, then one EM step μ ← (W + μ ⊙ Pᵀ(d / Q)) / λ (which moves each dustbin's mass
    onto the atoms outside its cluster). Each step: a Frank–Wolfe step, then a damped Newton
    step (backtracking from the full step, or 99% of the way to μ = 0, until Armijo's
    condition holds within rounding), then a rescaling to Σμ = 1 (the exact minimizer of G
    along that ray, since λ = Σw + Σd). A row converges when its Frank–Wolfe gap
    ``gᵀμ − min_a g_a`` (an upper bound on F(q) − min F, by convexity) is ≤ tol; a row whose
    steps stop decreasing G (rounding) leaves, not converged.
    """
    rows = w.shape[0]
    eps = torch.finfo(w.dtype).eps
    atoms = _atoms(w, d, lam, outside)
    valid = atoms.valid
    mu = torch.where(
        valid, atoms.weight / (lam - d.sum(dim=1))[:, None], torch.ones_like(atoms.weight)
    )
    r = d / _dustbins(mu, d, atoms.pattern)
    mu = (atoms.weight + mu * torch.einsum("rm,rmk->rk", r, atoms.pattern)) / lam[:, None]

    steps = torch.zeros(rows, dtype=torch.int64, device=w.device)
    converged = torch.zeros(rows, dtype=torch.bool, device=w.device)
    work = torch.arange(rows, device=w.device)
    for iteration in range(max_steps + 1):
        if work.numel() == 0:
            break
        m, wt, dw, lw, pw, vw = (
            mu[work],
            atoms.weight[work],
            d[work],
            lam[work],
            atoms.pattern[work],
            valid[work],
        )
        m = torch.where(vw, m / (m * vw).sum(dim=1, keepdim=True), m)
        grad, dustbin = _gradient(m, wt, dw, lw, pw)
        gap = (m * grad * vw).sum(dim=1) - torch.where(
            vw, grad, torch.full_like(grad, math.inf)
        ).amin(dim=1)
        mu[work] = m
        done = gap <= tol
        converged[work[done]] = True
        keep = ~done
        if iteration == max_steps or not bool(keep.any()):
            break
        work, m, wt, dw, lw, pw, vw = (
            work[keep],
            m[keep],
            wt[keep],
            dw[keep],
            lw[keep],
            pw[keep],
            vw[keep],
        )
        grad, dustbin = grad[keep], dustbin[keep]

        m, gamma = _frank_wolfe(m, grad, dustbin, vw, wt, dw, pw)
        grad, dustbin = _gradient(m, wt, dw, lw, pw)
        direction = _newton_direction(m, grad, dustbin, wt, dw, pw)
        slope = (grad * direction).sum(dim=1)  # < 0 for a descent direction
        shrink = torch.where(direction < 0, -m / direction, torch.full_like(m, math.inf)).amin(
            dim=1
        )
        t = (0.99 * shrink).clamp(max=1.0)
        value, size = _value(m, wt, dw, lw, pw)
        slack = 16 * eps * size
        searching = slope < 0  # rows without a descent direction have nothing to search
        moved = torch.zeros_like(searching)
        new_m = m.clone()
        for _ in range(60):
            trial = m + t[:, None] * direction
            positive = (trial > 0).all(dim=1)
            trial_value, _ = _value(torch.where(positive[:, None], trial, m), wt, dw, lw, pw)
            ok = positive & (trial_value <= value + 0.25 * t * slope + slack) & searching
            new_m = torch.where(ok[:, None], trial, new_m)
            moved |= ok
            searching &= ~ok
            if not bool(searching.any()):
                break
            t = torch.where(searching, t / 2, t)
        mu[work] = new_m
        steps[work] += 1
        work = work[moved | (gamma > 0)]  # rows where neither step moves are stuck at rounding
    mu = torch.where(valid, mu / (mu * valid).sum(dim=1, keepdim=True), mu)
    q = mu.gather(1, atoms.of) * w / atoms.weight.gather(1, atoms.of)
    return q, steps, converged
