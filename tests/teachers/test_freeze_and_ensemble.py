"""Frozen teachers and ensembles: eval mode for good, no gradients, stacked member logits."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from darkknowledge.errors import DKError
from darkknowledge.models import build_model, load_model
from darkknowledge.teachers import Teacher, freeze, is_frozen
from darkknowledge.train import run


def _mlp(classes=10, inputs=784, seed=0, **params):
    torch.manual_seed(seed)
    return build_model("mlp", {"hidden": [16], "hidden_dropout": 0.5, **params}, inputs, classes)


def test_freeze_sets_eval_and_stops_gradients():
    model = freeze(_mlp())
    assert is_frozen(model)
    assert not any(m.training for m in model.modules())
    assert all(not p.requires_grad for p in model.parameters())


def test_freeze_survives_train_on_a_container():
    teacher = freeze(_mlp())
    student = _mlp(seed=1)
    container = nn.ModuleDict({"student": student, "teacher": teacher})
    container.train()
    assert student.training
    assert not any(m.training for m in teacher.modules())
    teacher.train()
    teacher.train(True)
    assert is_frozen(teacher)
    x = torch.rand(4, 784)
    assert torch.equal(teacher(x), teacher(x))  # dropout stays off


def test_teacher_stacks_member_logits():
    members = [_mlp(seed=s) for s in range(3)]
    x = torch.rand(5, 784)
    expected = torch.stack([m.eval()(x) for m in members])
    teacher = Teacher(members)
    out = teacher(x)
    assert out.shape == (3, 5, 10)
    assert torch.equal(out, expected)
    assert not out.requires_grad
    assert (teacher.num_classes, teacher.in_features, len(teacher)) == (10, 784, 3)


def test_teacher_is_not_a_module_and_its_members_are_frozen():
    teacher = Teacher([_mlp()])
    assert not isinstance(teacher, nn.Module)
    assert all(is_frozen(m) for m in teacher.members)


def test_members_must_agree_on_classes_and_inputs():
    with pytest.raises(DKError, match=r"ensemble members disagree.*a: 784→10, b: 784→5"):
        Teacher([_mlp(), _mlp(classes=5)], ["a", "b"])
    with pytest.raises(DKError, match="disagree"):
        Teacher([_mlp(), _mlp(inputs=100)])
    with pytest.raises(DKError, match="no members"):
        Teacher([])


def test_fingerprint_depends_on_members_and_order():
    a, b = _mlp(seed=0), _mlp(seed=1)
    assert Teacher([a]).fingerprint == Teacher([_mlp(seed=0)]).fingerprint
    assert Teacher([a, b]).fingerprint != Teacher([b, a]).fingerprint
    assert Teacher([a]).fingerprint != Teacher([b]).fingerprint


@pytest.mark.parametrize("combine", ["arithmetic", "geometric"])
@pytest.mark.parametrize("method", ["soft_targets", "logit_matching"])
def test_ensemble_distillation_runs(make_cfg, teacher_file, combine, method):
    teachers = [str(teacher_file(f"t{i}.safetensors", seed=i)) for i in range(2)]
    cfg = make_cfg(
        f"method.name={method}",
        f"teacher.checkpoints={json.dumps(teachers)}",
        f"teacher.combine={combine}",
        "optim.epochs=1",
    )
    summary = run(cfg, kind="distill")
    assert summary["steps"] == 6
    assert 0 <= summary["eval"]["test"]["agreement"] <= 1
    assert load_model(cfg.run_dir).num_classes == 10


def test_teacher_bitwise_unchanged_and_in_eval_after_distillation(
    make_cfg, teacher_file, monkeypatch
):
    """A live-teacher run calls the teacher every step; its weights and mode must not move."""
    path = teacher_file(hidden=[16])
    before = path.read_bytes()
    seen = []
    real_call = Teacher.__call__

    def spy(self, x):
        seen.append(
            (
                self,
                [m.training for m in self.members],
                [{k: v.clone() for k, v in m.state_dict().items()} for m in self.members],
            )
        )
        return real_call(self, x)

    monkeypatch.setattr(Teacher, "__call__", spy)
    cfg = make_cfg(
        "method.name=soft_targets",
        f"teacher.checkpoints=[{path}]",
        "teacher.outputs=live",
        "data.jitter=1",
    )
    run(cfg, kind="distill")
    assert path.read_bytes() == before
    assert len(seen) == 12 + 1  # every step, plus the test set once (for agreement)
    teacher, _, first = seen[0]
    for t, modes, weights in seen:
        assert t is teacher and modes == [False]
        for k, v in weights[0].items():
            assert torch.equal(v, first[0][k])
    reference = load_model(path)
    for k, v in teacher.members[0].state_dict().items():
        assert torch.equal(v, reference.state_dict()[k])
    assert is_frozen(teacher.members[0])


def test_teacher_class_count_must_match_the_data(make_cfg, teacher_file):
    path = teacher_file(num_classes=5)
    cfg = make_cfg("method.name=soft_targets", f"teacher.checkpoints=[{path}]")
    with pytest.raises(
        DKError, match="teacher predicts 5 classes from 784 inputs but mnist has 10 classes"
    ):
        run(cfg, kind="distill")
