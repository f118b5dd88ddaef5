"""Checks every registered method must pass (scikit-learn's estimator-checks idea).

Parametrized over ``methods.names()``: a newly registered method is checked automatically. Each
step is made as the loop makes it (``BoundMethod``: the method's connector, feature hooks on a
small MLP student and teacher), so feature methods are checked like the others. Valid and
invalid hyperparameters come from each field's declared type and range
(``parameter_examples``); cases that tie one field to another belong in the method's own tests.
"""

import dataclasses
import re

import pytest
import torch

from darkknowledge.errors import DKError
from darkknowledge.methods import (
    BoundMethod,
    LiveLogits,
    MethodOutput,
    StepInputs,
    StoredLogits,
    build_method,
    method_config,
    methods,
    parameter_examples,
)
from darkknowledge.models import build_model
from darkknowledge.teachers import freeze

NAMES = methods.names()
BATCH, FEATURES, CLASSES = 6, 5, 4
LATE = 10_000  # an epoch past every warm-up and stage: the method's final objective


def test_builtin_methods_are_registered():
    assert {"hard_targets", "soft_targets", "logit_matching", "hints", "decoupled"} <= set(NAMES)


def _setup(seed=0, members=1):
    torch.manual_seed(seed)
    student = build_model("mlp", {"hidden": [7, 7]}, FEATURES, CLASSES)
    teachers = [
        freeze(build_model("mlp", {"hidden": [9, 9]}, FEATURES, CLASSES)) for _ in range(members)
    ]
    x = torch.randn(BATCH, FEATURES)
    labels = torch.randint(0, CLASSES, (BATCH,))
    return student, teachers, x, labels


def _step(
    method,
    student,
    teachers,
    x,
    labels,
    *,
    epoch=LATE,
    context=torch.no_grad,
    half=False,
    combine="arithmetic",
    stored=False,
):
    """One step as the loop makes it: connector bound, features captured by hooks."""
    bound = BoundMethod(
        [method],
        student,
        teachers,
        seed=0,
        stored_targets=False,
        label_smoothing=0.0,
        eager=True,
        processes=1,
    )
    bound.open()
    try:
        with context():
            t = torch.stack([m(x) for m in teachers]) if len(teachers) > 1 else teachers[0](x)
        teacher_features = bound.teacher_features()
        logits = student(x)
        student_features = bound.student_features()
    finally:
        bound.close()
    targets = StoredLogits(t) if stored else LiveLogits(t)
    batch = StepInputs(
        logits.half() if half else logits,
        targets,
        labels,
        epoch=epoch,
        combine=combine,
        student_features=student_features,
        teacher_features=teacher_features,
    )
    return method(batch), bound


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


@pytest.mark.parametrize(
    "teacher_mode", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference_mode"]
)
@pytest.mark.parametrize("name", NAMES)
def test_gradient_reaches_every_student_parameter_and_no_teacher_parameter(name, teacher_mode):
    student, (teacher,), x, labels = _setup()
    method = methods.get(name)()
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    out, _ = _step(method, student, [teacher], x, labels, context=teacher_mode)

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
def test_every_stage_gives_a_finite_loss_and_the_same_components(name):
    """The loop logs the components by name from the first step on: they may not change."""
    method = methods.get(name)()
    names = None
    for epoch in (0, 1, LATE):
        student, teachers, x, labels = _setup()
        out, bound = _step(method, student, teachers, x, labels, epoch=epoch)
        _assert_finite_scalar(out.loss, f"loss at epoch {epoch}")
        out.loss.backward()
        params = [*student.parameters(), *bound.parameters()]
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params), epoch
        assert names is None or list(out.components) == names, epoch
        names = list(out.components)


@pytest.mark.parametrize("name", NAMES)
def test_ensemble_teacher_and_half_precision_student(name):
    """An ensemble teacher gives a finite float32 loss, or (a method that needs one model) a
    one-line DKError."""
    student, teachers, x, labels = _setup(members=3)
    method = methods.get(name)()
    for combine in ("arithmetic", "geometric"):
        try:
            out, _ = _step(method, student, teachers, x, labels, half=True, combine=combine)
        except DKError as exc:
            assert "\n" not in str(exc) and method.feature_layers().teacher
            continue
        _assert_finite_scalar(out.loss, "loss")
        assert out.loss.dtype == torch.float32


@pytest.mark.parametrize("name", NAMES)
def test_stored_dense_logits_serve_as_live_ones(name):
    method = methods.get(name)()
    if method.feature_layers().teacher:  # a store holds no intermediate layers
        with pytest.raises(DKError, match="teacher.outputs=live"):
            BoundMethod(
                [method],
                *_setup()[:2],
                seed=0,
                stored_targets=True,
                label_smoothing=0.0,
                eager=True,
                processes=1,
            )
        return
    student, teachers, x, labels = _setup()
    live, _ = _step(method, student, teachers, x, labels)
    stored, _ = _step(method, student, teachers, x, labels, stored=True)
    assert torch.equal(live.loss, stored.loss)


@pytest.mark.parametrize("name", NAMES)
def test_missing_inputs_are_user_errors(name):
    student, (teacher,), x, labels = _setup()
    method = methods.get(name)()
    out, _ = _step(method, student, [teacher], x, labels)  # binds the connector, if any
    features = {
        "student_features": {n: torch.randn(BATCH, 7) for n in method.feature_layers().student},
        "teacher_features": {n: torch.randn(1, BATCH, 9) for n in method.feature_layers().teacher},
    }
    teacher_logits = teacher(x)
    if method.needs_teacher:
        with pytest.raises(DKError, match="teacher"):
            method(StepInputs.of(student(x), None, labels, **features))
    else:
        method(StepInputs.of(student(x), None, labels, **features))
    if method.needs_labels():
        with pytest.raises(DKError, match="labels"):
            method(StepInputs.of(student(x), teacher_logits, None, **features))
    else:
        method(StepInputs.of(student(x), teacher_logits, None, **features))


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
    # Valid non-default values (from each field's range) survive too.
    valid, _ = parameter_examples(type(method))
    for changed in valid:
        built = build_method(name, changed)
        again = method_config(built)
        assert build_method(again.pop("name"), again) == built, changed


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
    _, invalid = parameter_examples(cls)
    for params, field in invalid:
        with pytest.raises(DKError, match=field) as info:
            build_method(name, params)
        assert "\n" not in str(info.value)
        with pytest.raises(DKError, match=field):
            cls(**params)  # direct construction validates too
    fields = [f.name for f in dataclasses.fields(cls)]
    if "temperature" in fields:
        with pytest.raises(DKError, match="temperature"):
            build_method(name, {"temperature": 0})
    weights = [f for f in fields if f.endswith("_weight")]
    if weights:
        with pytest.raises(DKError, match="weights are zero"):
            build_method(name, dict.fromkeys(weights, 0))


def test_the_examples_follow_declared_ranges():
    """A field limited to [0, 1) is expressible: its examples stay inside, its bad values
    include the open bound."""
    from dataclasses import dataclass

    from darkknowledge.methods import Method, hyperparameter

    @dataclass(frozen=True)
    class Smoothed(Method):
        """Probe (Nobody 2026)."""

        share: float = hyperparameter(0.0, low=0.0, high=1.0, high_open=True)
        hint_epochs: int = 2

        def __call__(self, batch):
            raise NotImplementedError

    valid, invalid = parameter_examples(Smoothed)
    assert {"share": 0.5} in valid and {"hint_epochs": 3} in valid
    assert ({"share": 1.0}, "share") in invalid and ({"share": -1.0}, "share") in invalid
    assert ({"hint_epochs": 2.5}, "hint_epochs") in invalid
    assert Smoothed(share=0.99).share == 0.99
    with pytest.raises(DKError, match=r"share must be in \[0, 1\), got 1.0"):
        Smoothed(share=1)


def test_unknown_method_name_suggests_a_close_one():
    with pytest.raises(DKError, match="soft_targets"):
        build_method("soft_target", {})
