"""Optimizers and schedules, including the dropout paper's recipe (Hinton et al. 2012, App. A.1)."""

from __future__ import annotations

import math

import pytest
import torch

from darkknowledge.config import OptimConfig
from darkknowledge.train.optim import PaperDropoutSGD, build_optimizer, hyperparams_at


def _paper(**kw):
    return OptimConfig(
        name="paper_dropout",
        lr=10.0,
        lr_decay=0.998,
        initial_momentum=0.5,
        final_momentum=0.99,
        momentum_epochs=500,
        **kw,
    )


@pytest.mark.parametrize(
    ("epoch", "effective"), [(0, 5.0), (250, 1.545), (500, 0.0367), (1000, 0.0135)]
)
def test_paper_effective_step(epoch, effective):
    """lr_t (1 − m_t) with ε0 = 10, decay 0.998, momentum 0.5 → 0.99 over 500 epochs."""
    hp = hyperparams_at(_paper(), epoch, step=0, total_steps=1)
    assert hp["lr"] * (1 - hp["momentum"]) == pytest.approx(effective, rel=3e-3)


def test_paper_schedule_values():
    cfg = _paper()
    assert hyperparams_at(cfg, 0, 0, 1) == {"lr": 10.0, "momentum": 0.5}
    assert hyperparams_at(cfg, 250, 0, 1)["momentum"] == pytest.approx(0.745)
    assert hyperparams_at(cfg, 10_000, 0, 1)["momentum"] == 0.99
    assert hyperparams_at(cfg, 3, 0, 1)["lr"] == pytest.approx(10.0 * 0.998**3)


def test_paper_step_matches_the_hand_formula():
    """v ← m v − (1 − m) ε g,  w ← w + v, over two steps with different m and ε."""
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = PaperDropoutSGD([w], lr=0.3, momentum=0.5)
    w0 = w.detach().clone()
    g1 = torch.tensor([0.2, -0.4, 1.0])
    w.grad = g1.clone()
    opt.step()
    v1 = -(1 - 0.5) * 0.3 * g1
    assert torch.allclose(w.detach(), w0 + v1, rtol=0, atol=1e-7)
    for group in opt.param_groups:
        group.update(lr=0.1, momentum=0.9)
    g2 = torch.tensor([-1.0, 0.5, 0.25])
    w.grad = g2.clone()
    opt.step()
    v2 = 0.9 * v1 - (1 - 0.9) * 0.1 * g2
    assert torch.allclose(w.detach(), w0 + v1 + v2, rtol=0, atol=1e-7)
    assert torch.allclose(opt.state[w]["velocity"], v2, rtol=0, atol=1e-7)


def test_paper_step_skips_parameters_without_gradient():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = PaperDropoutSGD([a, b], lr=1.0, momentum=0.5)
    a.grad = torch.ones(2)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(2)) and b not in opt.state


def test_cosine_and_constant_schedules():
    cfg = OptimConfig(lr=0.2, schedule="cosine")
    assert hyperparams_at(cfg, 0, 0, 100)["lr"] == pytest.approx(0.2)
    assert hyperparams_at(cfg, 0, 50, 100)["lr"] == pytest.approx(0.1)
    assert hyperparams_at(cfg, 0, 100, 100)["lr"] == pytest.approx(0.0, abs=1e-12)
    assert hyperparams_at(cfg, 0, 25, 100)["lr"] == pytest.approx(0.1 * (1 + math.cos(math.pi / 4)))
    assert hyperparams_at(OptimConfig(lr=0.2, schedule="constant"), 3, 70, 100) == {"lr": 0.2}


def test_build_optimizer_kinds():
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert isinstance(
        build_optimizer(OptimConfig(name="sgd", momentum=0.8, weight_decay=1e-4), params),
        torch.optim.SGD,
    )
    assert isinstance(build_optimizer(OptimConfig(name="adam", lr=1e-3), params), torch.optim.Adam)
    opt = build_optimizer(_paper(), params)
    assert isinstance(opt, PaperDropoutSGD) and opt.param_groups[0]["momentum"] == 0.5
