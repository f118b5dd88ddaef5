"""The whole system's prediction: chunked by a memory budget, combined over the specialists in
use only, and identical to combining every image over all specialists at once."""

from __future__ import annotations

import shutil

import pytest
import torch

from darkknowledge.data import TensorDataset
from darkknowledge.errors import DKError
from darkknowledge.models import MLP, BatchedMLP, MLPSpec
from darkknowledge.specialists.combine import active_specialists, combine, dense_specialist_probs
from darkknowledge.specialists.evaluate import specialist_tables
from darkknowledge.specialists.system import DistillSettings, distill_into_one, predict


def _system(classes: int = 12, specialists: int = 5, size: int = 4, n: int = 16):
    torch.manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 4), dtype=torch.uint8)
    data = TensorDataset(
        images=images,
        labels=torch.randint(classes, (n,)),
        index=torch.arange(n),
        num_classes=classes,
        name="toy/test",
    )
    generalist = MLP(MLPSpec(hidden=[16]), 12, classes)
    members = [MLP(MLPSpec(hidden=[16]), 12, size + 1) for _ in range(specialists)]
    clusters = torch.zeros(specialists, classes, dtype=torch.bool)
    for m in range(specialists):
        clusters[m, torch.randperm(classes)[:size]] = True
    return generalist, BatchedMLP.from_models(members), clusters, data


def test_chunked_prediction_over_the_specialists_in_use_equals_the_direct_combination():
    generalist, specialists, clusters, data = _system()
    x = data.features()
    with torch.no_grad():
        p_g = generalist(x).double().softmax(dim=1)
        per = (
            specialists(x.unsqueeze(0).expand(specialists.replicas, -1, -1))
            .double()
            .softmax(dim=-1)
        )
        active = active_specialists(p_g, clusters, 2)
        direct = combine(p_g, dense_specialist_probs(list(per), clusters), clusters, active).float()
    assert active.any(dim=1).sum() > 0 and not active.all()
    for budget in (1, 12 * 3, 10**9):  # one image per chunk, a few, all at once
        out = predict(generalist, specialists, clusters, data, 2, budget=budget)
        torch.testing.assert_close(out["q"], direct, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out["p_general"], p_g.float())
        assert torch.equal(out["active"], active)
        slim = predict(generalist, specialists, clusters, data, 2, keep_probs=False, budget=budget)
        assert torch.equal(slim["pred"], direct.argmax(dim=1)) and torch.equal(
            slim["pred_general"], p_g.argmax(dim=1)
        )
    full = specialist_tables(out["p_general"], out["q"], data.labels, clusters, out["active"])
    assert str(
        specialist_tables(slim["pred_general"], slim["pred"], data.labels, clusters, slim["active"])
    ) == str(full)  # NaN-safe


def test_the_distilled_network_continues_from_its_last_epoch_to_the_same_bits(tmp_path):
    generalist, specialists, clusters, data = _system(n=40)
    q = predict(generalist, specialists, clusters, data, top_n=1)["q"]
    settings = DistillSettings(epochs=4, batch_size=8, lr=0.05)

    def student():
        torch.manual_seed(1)
        return MLP(MLPSpec(hidden=[8]), 12, 12)

    whole = student()
    distill_into_one(whole, q, data, settings)
    root = tmp_path / "ckpt"
    interrupted = student()
    distill_into_one(interrupted, q, data, settings, checkpoints=root)
    assert [p.name for p in sorted(root.iterdir())][-1] == "step-000000003"  # epochs 2 and 3
    shutil.rmtree(root / "step-000000003")  # as if stopped during the last two epochs
    again = student()
    info = distill_into_one(again, q, data, settings, checkpoints=root)
    for a, b, c in zip(
        whole.state_dict().values(),
        interrupted.state_dict().values(),
        again.state_dict().values(),
        strict=True,
    ):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert info["seconds"] > 0
    with pytest.raises(DKError, match="of other distilled network"):
        distill_into_one(student(), q, data, DistillSettings(epochs=4, lr=0.01), checkpoints=root)
