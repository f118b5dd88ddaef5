"""The specialists' evaluation in the paper's shape (Hinton et al. 2015, Tables 3 and 4).

Table 3: top-1 accuracy of the generalist alone and with the specialists, and the conditional
accuracy: the same on the images where at least one specialist is active (the only images the
specialists can change [I]: the paper does not define its conditional accuracy further).
Table 4: the images grouped by how many specialists cover their true class (how many clusters
hold it), each group's accuracy without and with the specialists and the relative gain.
"""

from __future__ import annotations

import torch


def specialist_tables(
    p_general: torch.Tensor,
    q: torch.Tensor,
    labels: torch.Tensor,
    clusters: torch.Tensor,
    active: torch.Tensor,
) -> dict:
    """Table 3 and Table 4 numbers from the generalist's distributions ``p_general`` (N, C), the
    combined ones ``q`` (N, C), the true ``labels`` (N,), the (M, C) cluster membership and the
    (N, M) active specialists. ``p_general`` and ``q`` may also be the predicted classes (N,)."""
    labels = labels.to(q.device)
    gen_right = (p_general if p_general.dim() == 1 else p_general.argmax(dim=1)) == labels
    comb_right = (q if q.dim() == 1 else q.argmax(dim=1)) == labels
    touched = active.any(dim=1)

    def acc(mask: torch.Tensor) -> tuple[float, float, int]:
        n = int(mask.sum())
        return (
            float(gen_right[mask].float().mean()) if n else float("nan"),
            float(comb_right[mask].float().mean()) if n else float("nan"),
            n,
        )

    everything = torch.ones_like(labels, dtype=torch.bool)
    top1, top1_spec, n = acc(everything)
    cond, cond_spec, n_cond = acc(touched)
    covering = clusters.to(q.device)[:, labels].sum(dim=0)  # (N,) clusters holding the true class
    by_cover = []
    for k in sorted(set(covering.tolist())):
        g, c, count = acc(covering == k)
        by_cover.append(
            {
                "covering": int(k),
                "n": count,
                "generalist": g,
                "with_specialists": c,
                "relative_gain": (c - g) / g if g > 0 else float("nan"),
                "changed_right": int((comb_right & ~gen_right & (covering == k)).sum()),
                "changed_wrong": int((~comb_right & gen_right & (covering == k)).sum()),
            }
        )
    return {
        "n": n,
        "top1": top1,
        "top1_with_specialists": top1_spec,
        "relative_gain": (top1_spec - top1) / top1 if top1 > 0 else float("nan"),
        "conditional_n": n_cond,
        "conditional": cond,
        "conditional_with_specialists": cond_spec,
        "by_covering": by_cover,
    }
