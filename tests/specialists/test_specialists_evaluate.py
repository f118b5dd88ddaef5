"""Table 3 / Table 4 arithmetic on hand-made cases."""

from __future__ import annotations

import pytest
import torch

from darkknowledge.specialists.evaluate import specialist_tables


def test_tables_count_what_changed_and_where():
    # 4 classes; specialist 0 covers {0, 1}, specialist 1 covers {1, 2}
    clusters = torch.tensor([[True, True, False, False], [False, True, True, False]])
    labels = torch.tensor([0, 1, 2, 3])
    p = (
        torch.tensor([[0.4, 0.6, 0, 0], [0.1, 0.8, 0.1, 0], [0.5, 0, 0.5, 0], [0, 0, 0, 1.0]])
        + 1e-3
    )
    q = p.clone()
    q[0] = torch.tensor([0.7, 0.3, 0, 0])  # fixed by the specialists
    q[2] = torch.tensor([0.1, 0, 0.9, 0])  # fixed too
    active = torch.tensor([[True, False], [True, True], [True, False], [False, False]])
    t = specialist_tables(p, q, labels, clusters, active)
    assert t["top1"] == pytest.approx(0.5) and t["top1_with_specialists"] == pytest.approx(1.0)
    assert t["relative_gain"] == pytest.approx(1.0)
    assert (
        t["conditional_n"] == 3
        and t["conditional"] == pytest.approx(1 / 3)
        and t["conditional_with_specialists"] == pytest.approx(1.0)
    )
    by = {row["covering"]: row for row in t["by_covering"]}
    assert set(by) == {0, 1, 2}  # class 3: none; classes 0 and 2: one; class 1: two
    assert (
        by[1]["n"] == 2
        and by[1]["changed_right"] == 2
        and by[1]["generalist"] == pytest.approx(0.0)
    )
    assert by[2]["with_specialists"] == pytest.approx(1.0) and by[0][
        "relative_gain"
    ] == pytest.approx(0.0)
