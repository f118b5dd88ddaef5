"""Checks every registered method must pass (scikit-learn's estimator-checks idea).

Parametrized over ``methods.names()``: a newly registered method is checked automatically.
"""

import dataclasses
import re

import pytest
import torch
from torch import nn

from darkknowledge.errors import DKError
from darkknowledge.methods import MethodOutput, build_method, method_config, methods

NAMES = methods.names()
BATCH, FEATURES, CLASSES = 6, 5, 4


def test_builtin_methods_are_registered():
    assert {"hard_targets", "soft_targets", "logit_matching"} <= set(NAMES)


def _setup(seed=0):
    torch.manual_seed(seed)
    student = nn.Linear(FEATURES, CLASSES)
    teacher = nn.Linear(FEATURES, CLASSES).eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    x = torch.randn(BATCH, FEATURES)
    labels = torch.randint(0, CLASSES, (BATCH,))
    return student, teacher, x, labels


def _assert_finite_scalar(tensor, what):
    assert isinstance(tensor, torch.Tensor), what
    assert tensor.shape == (), f"{what} is not a scalar: {tuple(tensor.shape)}"
    assert tensor.is_floating_point(), what
    assert torch.isfinite(tensor), f"{what} is not finite: {tensor}"


@pytest.mark.parametrize("name", NAMES)
def test_default_constructible_frozen_dataclass(name):
    cls = methods.get(name)
    method = cls()
    assert dataclasses.is_dataclass(method)
    assert isinstance(method.needs_teacher, bool)
    assert isinstance(method.needs_labels(), bool)
    field = next(iter(dataclasses.fields(method)), None)
    if field is not None:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(method, field.name, 1.0)


@pytest.mark.parametrize("name", NAMES)
def test_docstring_opens_with_the_source(name):
    first_line = methods.get(name).__doc__.strip().splitlines()[0]
    assert re.search(r"\(.*\d{4}.*\)", first_line), first_line


@pytest.mark.parametrize("teacher_mode", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("name", NAMES)
def test_gradient_reaches_every_student_parameter_and_no_teacher_parameter(name, teacher_mode):
    student, teacher, x, labels = _setup()
    method = methods.get(name)()
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    context = torch.no_grad() if teacher_mode == "no_grad" else torch.inference_mode()
    with context:
        teacher_logits = teacher(x)
    out = method(student(x), teacher_logits, labels)

    assert isinstance(out, MethodOutput)
    _assert_finite_scalar(out.loss, "loss")
    assert out.loss.dtype == torch.float32
    assert out.components, "a method reports at least one component"
    for key, value in out.components.items():
        _assert_finite_scalar(value, f"component {key!r}")

    out.loss.backward()
    for pname, param in student.named_parameters():
        assert param.grad is not None, f"no gradient for student {pname}"
        assert torch.isfinite(param.grad).all()
        assert param.grad.abs().sum() > 0, f"zero gradient for student {pname}"
    for pname, param in teacher.named_parameters():
        assert param.grad is None, f"teacher {pname} received a gradient"
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), f"teacher {key} changed"
    assert not teacher.training


@pytest.mark.parametrize("name", NAMES)
def test_ensemble_teacher_and_half_precision_student(name):
    student, _, x, labels = _setup()
    method = methods.get(name)()
    members = torch.randn(3, BATCH, CLASSES)
    for combine in ("arithmetic", "geometric"):
        out = method(student(x).half(), members, labels, combine=combine)
        _assert_finite_scalar(out.loss, "loss")
        assert out.loss.dtype == torch.float32


@pytest.mark.parametrize("name", NAMES)
def test_missing_inputs_are_user_errors(name):
    student, _, x, labels = _setup()
    method = methods.get(name)()
    teacher_logits = torch.randn(BATCH, CLASSES)
    if method.needs_teacher:
        with pytest.raises(DKError, match="teacher"):
            method(student(x), None, labels)
    else:
        method(student(x), None, labels)
    if method.needs_labels():
        with pytest.raises(DKError, match="labels"):
            method(student(x), teacher_logits, None)
    else:
        method(student(x), teacher_logits, None)


@pytest.mark.parametrize("name", NAMES)
def test_config_round_trip(name):
    method = methods.get(name)()
    config = method_config(method)
    assert config["name"] == name
    assert set(config) == {"name"} | {f.name for f in dataclasses.fields(method)}
    params = {k: v for k, v in config.items() if k != "name"}
    rebuilt = build_method(config.pop("name"), params)
    assert type(rebuilt) is type(method)
    assert rebuilt == method
    # Non-default values survive too (ints from YAML are normalized to float).
    changed = {f.name: 3 for f in dataclasses.fields(method)}
    built = build_method(name, changed)
    again = method_config(built)
    assert build_method(again.pop("name"), again) == built


@pytest.mark.parametrize("name", NAMES)
def test_unknown_parameter_is_rejected_with_allowed_keys(name):
    allowed = [f.name for f in dataclasses.fields(methods.get(name))]
    with pytest.raises(DKError, match="alpha") as info:
        build_method(name, {"alpha": 0.5})
    for key in allowed:
        assert key in str(info.value)


@pytest.mark.parametrize("name", NAMES)
def test_bad_parameter_values_are_rejected(name):
    cls = methods.get(name)
    fields = [f.name for f in dataclasses.fields(cls)]
    for field in fields:
        for bad in ("20", True, None, float("nan"), float("inf"), -1.0):
            with pytest.raises(DKError, match=field):
                build_method(name, {field: bad})
            with pytest.raises(DKError, match=field):
                cls(**{field: bad})  # direct construction validates too
    if "temperature" in fields:
        with pytest.raises(DKError, match="temperature"):
            build_method(name, {"temperature": 0})
    weights = [f for f in fields if f.endswith("_weight")]
    if weights:
        with pytest.raises(DKError, match="weights are zero"):
            build_method(name, dict.fromkeys(weights, 0))


def test_unknown_method_name_suggests_a_close_one():
    with pytest.raises(DKError, match="soft_targets"):
        build_method("soft_target", {})
