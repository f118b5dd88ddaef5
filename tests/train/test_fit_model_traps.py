"""The traps a user met bringing their own model and data to fit_model (issue: the user's side):
each test failed before its fix."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from darkknowledge.errors import DKError
from darkknowledge.train import fit_model

torch.manual_seed(0)
X = torch.randn(64, 8)
Y = (X[:, 0] > 0).long() + 2 * (X[:, 1] > 0).long()
BATCHES = [(X[i : i + 16], Y[i : i + 16]) for i in range(0, 64, 16)]


class Recorder(nn.Module):
    """A teacher with dropout that records its training flag at every forward pass."""

    def __init__(self, seed: int = 1) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 4))
        self.seen: list[bool] = []

    def forward(self, x):
        self.seen.append(self.training)
        return self.net(x)


def _student(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 4))


def _distil(teacher, **kw):
    return fit_model(
        _student(),
        BATCHES,
        "soft_targets",
        {"epochs": 2, "lr": 0.1},
        method_params={"temperature": 4.0},
        teacher=teacher,
        device="cpu",
        progress=False,
        **kw,
    )


def test_a_teacher_module_is_frozen_during_the_distillation_and_given_back_as_it_was():
    teacher = Recorder()
    teacher.train()
    _distil(teacher)
    assert teacher.seen and not any(teacher.seen)  # eval mode (no dropout) on every batch
    # given back in train mode
    assert teacher.training and all(m.training for m in teacher.modules())
    assert all(p.requires_grad for p in teacher.parameters())
    teacher.eval()
    teacher.train()  # .train() works again
    assert teacher.training
    loss = nn.functional.cross_entropy(teacher(X), Y)  # and it trains again
    loss.backward()
    assert teacher.net[0].weight.grad is not None


def test_a_teacher_in_eval_mode_stays_in_eval_mode():
    teacher = Recorder().eval()
    _distil(teacher)
    assert not teacher.training


def test_a_callable_teacher_over_modules_gets_the_same_guarantees():
    members = [Recorder(1), Recorder(2)]
    for m in members:
        m.train()
    _distil(lambda x: torch.stack([t(x) for t in members]))  # the natural way to write an ensemble
    for m in members:
        assert m.seen and not any(m.seen)
        assert m.training and all(p.requires_grad for p in m.parameters())


def test_an_ensemble_as_a_list_of_modules_and_its_combination():
    members = [Recorder(1), Recorder(2)]
    arithmetic = _distil(members)
    geometric = _distil(members, combine="geometric")
    assert all(m.seen and not any(m.seen) for m in members)
    assert arithmetic["eval"] == geometric["eval"] == {}  # no eval batches given
    with pytest.raises(DKError, match="teacher.combine='median' is unknown"):
        _distil(members, combine="median")


def test_how_often_one_evaluates_does_not_change_the_trained_weights():
    """Iterating an eval DataLoader draws from the global RNG that dropout uses."""
    weights = []
    for every in (1, 3):
        student = _student()
        loader = DataLoader(TensorDataset(X, Y), batch_size=32)
        fit_model(
            student,
            BATCHES,
            "hard_targets",
            {"epochs": 3, "lr": 0.1},
            eval_batches={"valid": loader},
            eval_every=every,
            device="cpu",
            progress=False,
        )
        weights.append([p.detach().clone() for p in student.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights, strict=True))


def test_unlabelled_batches_work_wherever_labelled_ones_do():
    teacher = Recorder()
    unlabelled = DataLoader(TensorDataset(X), batch_size=16)  # yields [x]: one-element lists
    out = fit_model(
        _student(),
        unlabelled,
        "soft_targets",
        {"epochs": 2, "lr": 0.1},
        method_params={"temperature": 4.0, "hard_weight": 0.0},
        teacher=teacher,
        eval_batches={
            "unlabelled": [(x, None) for x, _ in BATCHES],
            "loader": unlabelled,
            "labelled": BATCHES,
        },
        device="cpu",
        progress=False,
    )
    assert (
        set(out["eval"]["unlabelled"]) == {"n", "agreement"}
        and out["eval"]["unlabelled"]["n"] == 64
    )
    assert out["eval"]["loader"] == out["eval"]["unlabelled"]
    assert "errors" in out["eval"]["labelled"]


def test_a_batch_of_another_shape_is_refused_saying_what_to_yield():
    with pytest.raises(
        DKError,
        match=r"a batch must be x, \(x,\) or \(x, y\) \(inputs and labels\), got a tuple of 3 "
        r"items",
    ):
        fit_model(
            _student(), [(X, Y, Y)], "hard_targets", {"epochs": 1}, device="cpu", progress=False
        )
    with pytest.raises(DKError, match=r"batch labels must be an integer tensor of shape \(64,\)"):
        fit_model(
            _student(),
            [(X, Y.float())],
            "hard_targets",
            {"epochs": 1},
            device="cpu",
            progress=False,
        )


def test_a_batch_size_that_would_be_ignored_is_refused():
    with pytest.raises(DKError, match="optim batch_size=32 has no effect here"):
        fit_model(
            _student(),
            BATCHES,
            "hard_targets",
            {"epochs": 1, "batch_size": 32},
            device="cpu",
            progress=False,
        )


def test_selecting_on_unlabelled_batches_is_refused():
    with pytest.raises(DKError, match="select_best_on=valid needs labelled valid batches"):
        fit_model(
            _student(),
            BATCHES,
            "hard_targets",
            {"epochs": 1},
            eval_batches={"valid": [(X, None)]},
            select_best_on="valid",
            device="cpu",
            progress=False,
        )
