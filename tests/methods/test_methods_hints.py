"""Hints (FitNets): stage 1 trains the student up to its guided layer through a regressor,
stage 2 is soft targets; the regressor is the method's, trained and given up with the run."""

import pytest
import torch

import darkknowledge as dk
from darkknowledge.errors import DKError
from darkknowledge.losses import hint_loss
from darkknowledge.methods import BoundMethod, Hints, SoftTargets, StepInputs, build_method
from darkknowledge.models import build_model
from darkknowledge.teachers import freeze


def _nets(seed=0):
    torch.manual_seed(seed)
    student = build_model("mlp", {"hidden": [6, 6, 6]}, 8, 4)
    teacher = freeze(build_model("mlp", {"hidden": [10, 10]}, 8, 4))
    return student, teacher


def _bind(method, student, teacher, **kw):
    args = {
        "seed": 0,
        "stored_targets": False,
        "label_smoothing": 0.0,
        "eager": True,
        "processes": 1,
        **kw,
    }
    return BoundMethod([method], student, [teacher], **args)


def _step(method, student, teacher, x, y, epoch):
    bound = _bind(method, student, teacher)
    bound.open()
    with torch.no_grad():
        t = teacher(x)
    batch = StepInputs.of(
        student(x),
        t,
        y,
        epoch=epoch,
        teacher_features=bound.teacher_features(),
        student_features=bound.student_features(),
    )
    bound.close()
    return method(batch), bound


def test_the_regressor_maps_the_guided_width_to_the_hint_width():
    student, teacher = _nets()
    method = Hints(student_layer="layers.1", teacher_layer="layers.0")
    bound = _bind(method, student, teacher)
    assert isinstance(method.connector, torch.nn.Linear) and method.connector is bound.connector
    assert (method.connector.in_features, method.connector.out_features) == (6, 10)
    assert bound.state().keys() == {"method/weight", "method/bias"}


def test_stage_one_trains_only_up_to_the_guided_layer_and_the_regressor():
    student, teacher = _nets()
    x, y = torch.randn(5, 8), torch.randint(0, 4, (5,))
    method = Hints(student_layer="layers.1", hint_epochs=2, hint_weight=0.5)
    out, bound = _step(method, student, teacher, x, y, epoch=1)
    out.loss.backward()
    got = {n: p.grad is not None for n, p in student.named_parameters()}
    assert got == {
        "layers.0.weight": True,
        "layers.0.bias": True,
        "layers.1.weight": True,
        "layers.1.bias": True,
        "layers.2.weight": False,
        "layers.2.bias": False,
        "layers.3.weight": False,
        "layers.3.bias": False,
    }
    assert all(p.grad is not None for p in bound.parameters())
    expected = hint_loss(
        method.connector(student.layers[1](torch.relu(student.layers[0](x)))), teacher.layers[0](x)
    )
    torch.testing.assert_close(out.loss, 0.5 * expected)
    assert set(out.components) == {"hint", "soft", "hard"}


def test_stage_two_is_soft_targets_and_leaves_the_regressor_alone():
    student, teacher = _nets()
    x, y = torch.randn(5, 8), torch.randint(0, 4, (5,))
    method = Hints(hint_epochs=2, temperature=3, soft_weight=0.8, hard_weight=0.2)
    out, bound = _step(method, student, teacher, x, y, epoch=2)
    soft = SoftTargets(temperature=3, soft_weight=0.8, hard_weight=0.2)(
        StepInputs.of(student(x), teacher(x), y)
    )
    assert torch.equal(out.loss, soft.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in bound.parameters())


def test_what_the_run_cannot_give_is_refused_before_training():
    student, teacher = _nets()
    with pytest.raises(DKError, match=r"the student has no layer 'layers\.9'"):
        _bind(Hints(student_layer="layers.9"), student, teacher)
    with pytest.raises(DKError, match="set teacher.outputs=live"):
        _bind(Hints(), student, teacher, stored_targets=True)
    with pytest.raises(DKError, match="a compiled step cannot give it"):
        _bind(Hints(), student, teacher, eager=False)
    with pytest.raises(DKError, match="torchrun cannot give it"):
        _bind(Hints(), student, teacher, processes=2)
    with pytest.raises(DKError, match="the teacher is a plain function"):
        BoundMethod(
            [Hints()],
            student,
            None,
            seed=0,
            stored_targets=False,
            label_smoothing=0.0,
            eager=True,
            processes=1,
        )


def test_an_ensemble_teacher_is_refused():
    student, teacher = _nets()
    method = Hints()
    bound = _bind(method, student, teacher)
    with pytest.raises(DKError, match="needs one teacher model, got an ensemble of 2"):
        method(
            StepInputs.of(
                torch.randn(3, 4),
                torch.randn(2, 3, 4),
                torch.tensor([0, 1, 2]),
                student_features={"layers.0": torch.randn(3, 6)},
                teacher_features={"layers.0": torch.randn(2, 3, 10)},
            )
        )
    bound.close()


def test_weights_that_leave_a_stage_without_a_loss_are_refused():
    with pytest.raises(DKError, match="hint_weight=0 leaves the 5 hint epochs without a loss"):
        build_method("hints", {"hint_weight": 0})
    assert build_method("hints", {"hint_weight": 0, "hint_epochs": 0}).hint_epochs == 0
    with pytest.raises(DKError, match="second stage has no loss"):
        build_method("hints", {"soft_weight": 0, "hard_weight": 0})


def _batches(n=60, seed=7):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 8, generator=g), torch.randint(0, 4, (n,), generator=g)
    return [(x[i : i + 20], y[i : i + 20]) for i in range(0, n, 20)]


def test_from_the_python_api_stage_one_leaves_the_later_layers_untouched():
    student, teacher = _nets()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    params = {"student_layer": "layers.1", "hint_epochs": 2}
    dk.distill(
        student,
        teacher,
        _batches(),
        method="hints",
        method_params=params,
        epochs=2,
        device="cpu",
        progress=False,
    )
    same = {k: torch.equal(before[k], v) for k, v in student.state_dict().items()}
    assert same == {
        "layers.0.weight": False,
        "layers.0.bias": False,
        "layers.1.weight": False,
        "layers.1.bias": False,
        "layers.2.weight": True,
        "layers.2.bias": True,
        "layers.3.weight": True,
        "layers.3.bias": True,
    }
    assert all(not m._forward_hooks for net in (student, teacher) for m in net.modules())
    dk.distill(
        student,
        teacher,
        _batches(),
        method="hints",
        method_params=params | {"hint_epochs": 1},
        epochs=2,
        device="cpu",
        progress=False,
    )
    assert not torch.equal(before["layers.3.weight"], student.layers[3].weight)
