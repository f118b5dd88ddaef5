"""Specialists: cluster classes + a dustbin, started from the generalist, trained as one batched
model on half-cluster batches, dustbin logit corrected for the oversampling."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from darkknowledge.errors import DKError
from darkknowledge.models import build_model
from darkknowledge.specialists.train import (
    SpecialistSettings,
    collapse,
    dustbin_offset,
    from_generalist,
    label_maps,
    train_specialists,
)


def _clusters(rows, classes=10):
    out = torch.zeros(len(rows), classes, dtype=torch.bool)
    for m, row in enumerate(rows):
        out[m, row] = True
    return out


def test_label_maps_and_collapse():
    clusters = _clusters([[3, 5, 8], [4, 7, 9]])
    maps = label_maps(clusters)
    assert (
        maps[0].tolist() == [3, 3, 3, 0, 3, 1, 3, 3, 2, 3] and maps[1, 9] == 2 and maps[1, 0] == 3
    )
    p = torch.softmax(torch.randn(4, 10), dim=1)
    c = collapse(p, clusters)
    assert c.shape == (2, 4, 4)
    torch.testing.assert_close(c.sum(dim=-1), torch.ones(2, 4))
    torch.testing.assert_close(c[0, :, :3], p[:, [3, 5, 8]])
    with pytest.raises(DKError, match="equal-size"):
        label_maps(_clusters([[1, 2], [3, 4, 5]]))


def test_a_specialist_starts_as_the_generalist_on_its_classes():
    torch.manual_seed(0)
    gen = build_model("mlp", {"hidden": [16]}, 784, 10)
    clusters = _clusters([[3, 5, 8], [4, 7, 9]])
    spec = from_generalist(gen, clusters)
    x = torch.rand(5, 784)
    z, zs = gen(x), spec(x.unsqueeze(0).expand(2, -1, -1))
    torch.testing.assert_close(zs[0, :, :3], z[:, [3, 5, 8]])
    torch.testing.assert_close(zs[1, :, :3], z[:, [4, 7, 9]])
    assert zs.shape == (2, 5, 4)


def test_the_dustbin_offset_restores_the_true_odds():
    labels = torch.tensor([0] * 10 + [1] * 90)  # cluster {0}: 10% of the images
    off = dustbin_offset(_clusters([[0]], classes=2), labels, cluster_share=0.5)
    assert float(off[0]) == pytest.approx(math.log(0.9 / 0.1))


def test_specialists_learn_their_confusable_classes(mnist_train):
    torch.manual_seed(0)
    train = mnist_train.subset(torch.arange(3000))
    gen = build_model("mlp", {"hidden": [32]}, 784, 10)
    clusters = _clusters([[3, 5, 8], [4, 7, 9]])
    x, y = train.features(), train.labels
    maps = label_maps(clusters)

    def within_accuracy(model):
        with torch.no_grad():
            z = model(x.unsqueeze(0).expand(2, -1, -1))
        accs = []
        for m in range(2):
            inside = clusters[m, y]
            accs.append(float((z[m, inside, :3].argmax(1) == maps[m, y[inside]]).float().mean()))
        return accs

    before = within_accuracy(from_generalist(gen, clusters))
    model, info = train_specialists(
        gen, clusters, train, SpecialistSettings(steps=150, batch_size=50, lr=0.05)
    )
    after = within_accuracy(model)
    assert all(a > b + 0.2 for a, b in zip(after, before, strict=True)), (before, after)
    assert info["final_loss"] < 1.0
    with pytest.raises(DKError, match="generalist_probs"):
        train_specialists(gen, clusters, train, SpecialistSettings(steps=1, soft_weight=1.0))
    probs = torch.softmax(gen(x).detach() / 2, dim=1)
    soft, _ = train_specialists(
        gen, clusters, train, SpecialistSettings(steps=5, soft_weight=1.0, temperature=2.0), probs
    )
    assert soft.replicas == 2


def test_an_interrupted_training_continues_to_the_same_bits(mnist_train, tmp_path):
    """Checkpoints every 4 of 10 steps (jitter and momentum on, so the generator, the optimizer
    and the schedule all matter): continuing from step 4 ends exactly where the whole run did."""
    torch.manual_seed(0)
    train = mnist_train.subset(torch.arange(600))
    gen = build_model("mlp", {"hidden": [16]}, 784, 10)
    clusters = _clusters([[3, 5, 8], [4, 7, 9]])
    settings = SpecialistSettings(steps=10, batch_size=20, lr=0.05, jitter=2)
    whole, _ = train_specialists(gen, clusters, train, settings)
    root = tmp_path / "ckpt"
    run, info = train_specialists(
        gen, clusters, train, settings, checkpoints=root, checkpoint_every=4
    )
    assert sorted(p.name for p in root.iterdir()) == ["step-000000004", "step-000000008"]
    shutil.rmtree(root / "step-000000008")  # as if the command stopped between steps 4 and 8
    again, info2 = train_specialists(
        gen, clusters, train, settings, checkpoints=root, checkpoint_every=4
    )
    for a, b, c in zip(
        whole.state_dict().values(),
        run.state_dict().values(),
        again.state_dict().values(),
        strict=True,
    ):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert info2["seconds"] > 0
    other = SpecialistSettings(steps=10, batch_size=20, lr=0.01, jitter=2)
    with pytest.raises(DKError, match="of other specialists.*remove .*ckpt to train"):
        train_specialists(gen, clusters, train, other, checkpoints=root, checkpoint_every=4)
