"""fit_model: a user's own nn.Module trained from a plain Python list of batches, by the one
loop.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from darkknowledge.errors import DKError, NonFiniteLossError
from darkknowledge.models import build_model, load_model
from darkknowledge.train import Interrupted, fit_model, prepare_data, run
from darkknowledge.train.metrics import read_metrics


class TinyConvNet(nn.Module):
    """Not one of ours: a user's model with a conv layer, taking (B, 1, 8, 8) images."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 * 8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).flatten(1))


def _toy_batches(n=240, batch=30, seed=0):
    """Three classes of 8×8 images told apart by which third of the image is bright."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.rand(n, 1, 8, 8, generator=g) * 0.3
    for c in range(3):
        x[y == c, :, :, c * 2 : c * 2 + 3] += 0.7
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def test_a_users_module_trains_from_a_list_of_batches(tmp_path):
    torch.manual_seed(0)
    batches, held_out = _toy_batches(), _toy_batches(seed=1)
    net = TinyConvNet()
    history = fit_model(
        net,
        batches,
        "hard_targets",
        {"lr": 0.2, "epochs": 4},
        eval_batches={"valid": held_out},
        device="cpu",
        run_dir=tmp_path / "r",
        progress=False,
    )
    assert history["steps"] == 4 * len(batches) and history["epochs"] == 4
    assert history["eval"]["valid"]["errors"] <= 12  # 240 held-out images, 3 easy classes
    losses = [r["loss"] for r in read_metrics(tmp_path / "r" / "metrics.jsonl") if "loss" in r]
    assert len(losses) == 32 and losses[-1] < losses[0]


def test_distilling_from_a_users_teacher_module():
    torch.manual_seed(0)
    batches = _toy_batches()
    teacher = TinyConvNet()
    fit_model(
        teacher, batches, "hard_targets", {"lr": 0.2, "epochs": 4}, device="cpu", progress=False
    )
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3))
    unlabelled = [(x, None) for x, _ in batches]  # soft targets only: no labels needed
    history = fit_model(
        student,
        unlabelled,
        "soft_targets",
        {"name": "adam", "lr": 0.01, "epochs": 6},
        method_params={"temperature": 4.0, "hard_weight": 0.0},
        teacher=teacher,
        eval_batches={"valid": _toy_batches(seed=1)},
        device="cpu",
        progress=False,
    )
    assert history["eval"]["valid"]["agreement"] >= 0.9
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())  # never trained
    # given back as it was
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())


def test_the_dataset_path_and_the_generic_path_are_one_loop(make_cfg):
    """``dk train`` on MNIST equals fit_model fed the very same batches in the same order:
    bitwise.
    """
    cfg = make_cfg("optim.name=sgd", "optim.lr=0.2")
    run(cfg)
    train = prepare_data(cfg.data).train
    order_gen = torch.Generator().manual_seed(cfg.seed + 1)  # the loop's data generator

    def epoch():
        order = torch.randperm(len(train), generator=order_gen)
        for i in range(0, len(train), cfg.optim.batch_size):
            pos = order[i : i + cfg.optim.batch_size]
            yield train.features(pos), train.labels[pos]

    torch.manual_seed(cfg.seed)
    model = build_model("mlp", {"hidden": [32]}, 784, 10)
    fit_model(
        model,
        epoch,
        "hard_targets",
        cfg.optim,
        steps_per_epoch=math.ceil(len(train) / cfg.optim.batch_size),
        device="cpu",
        progress=False,
    )
    ref = load_model(cfg.run_dir).state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref[k]), k


def test_fit_model_resumes_exactly_from_its_run_dir(tmp_path):
    batches = _toy_batches()
    common = {
        "optim": {"lr": 0.2, "epochs": 3},
        "device": "cpu",
        "progress": False,
        "checkpoint_every_steps": 5,
    }

    def net():
        torch.manual_seed(0)
        return TinyConvNet()

    ref = net()
    fit_model(ref, batches, "hard_targets", run_dir=tmp_path / "ref", **common)
    cut = net()
    with pytest.raises(Interrupted):
        fit_model(
            cut, batches, "hard_targets", run_dir=tmp_path / "cut", stop_after_steps=11, **common
        )
    with pytest.raises(DKError, match="already holds checkpoints"):
        fit_model(net(), batches, "hard_targets", run_dir=tmp_path / "cut", **common)
    resumed = net()
    fit_model(resumed, batches, "hard_targets", run_dir=tmp_path / "cut", resume="auto", **common)
    for k, v in resumed.state_dict().items():
        assert torch.equal(v, ref.state_dict()[k]), k
    assert (tmp_path / "cut" / "metrics.jsonl").read_text() == (
        tmp_path / "ref" / "metrics.jsonl"
    ).read_text()


def test_fit_model_errors_are_one_line_dkerrors():
    net = TinyConvNet()
    batches = _toy_batches()
    with pytest.raises(DKError, match="needs a teacher"):
        fit_model(net, batches, "soft_targets", device="cpu")
    with pytest.raises(DKError, match="no len"):
        fit_model(net, iter(batches), device="cpu")
    with pytest.raises(DKError, match="promised 9 per epoch"):
        fit_model(net, lambda: iter(batches), steps_per_epoch=9, device="cpu", progress=False)
    with pytest.raises(DKError, match=r"a batch must be x, \(x,\) or \(x, y\)"):
        fit_model(net, [(1, 2, 3)], device="cpu", progress=False)
    with pytest.raises(DKError, match="does not take data"):
        fit_model(net, batches, device="cpu", data={})
    with pytest.raises(DKError, match="unknown config key optim.lrate"):
        fit_model(net, batches, "hard_targets", {"lrate": 0.1}, device="cpu")
    bad = [(torch.full((4, 1, 8, 8), float("nan")), torch.zeros(4, dtype=torch.long))]
    with pytest.raises(NonFiniteLossError, match=r"step 1 \(epoch 0, batch 0\)"):
        fit_model(net, bad, device="cpu", progress=False)


def test_fit_model_without_run_dir_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fit_model(TinyConvNet(), _toy_batches(), device="cpu", progress=False)
    assert list(Path(tmp_path).iterdir()) == []
