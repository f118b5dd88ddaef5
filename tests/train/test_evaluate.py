"""Evaluation at temperature 1: errors, accuracy, NLL, ECE, agreement; temperature never reaches
it.
"""

from __future__ import annotations

import inspect
import json
import math

import pytest
import torch

from darkknowledge.models import load_model
from darkknowledge.train import classification_metrics, evaluate, run
from darkknowledge.train.evaluate import expected_calibration_error


def test_hand_example():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 1.0, 4.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 2, 2, 1])
    m = classification_metrics(logits, labels)
    # argmax: 0, 1, 2, 0 (ties go to the first class) → examples 1 and 3 are wrong
    assert m["errors"] == 2 and m["n"] == 4 and m["accuracy"] == 0.5
    p = [
        math.exp(2) / (math.exp(2) + 2),
        1 / (math.exp(3) + 2),
        math.exp(4) / (math.exp(4) + 2 * math.e),
        1 / 3,
    ]
    assert m["nll"] == pytest.approx(-sum(math.log(x) for x in p) / 4, rel=1e-6)


def test_ece_by_hand():
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.6 (right): bins [0.867, 0.933) and [0.6,
    # 0.667)
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.6, 0.4]])
    labels = torch.tensor([0, 1, 1, 0])
    expected = (2 / 4) * abs(0.5 - 0.9) + (2 / 4) * abs(1.0 - 0.6)
    assert expected_calibration_error(probs, labels) == pytest.approx(expected)
    perfect = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(perfect, torch.tensor([0, 1])) == 0.0


def test_agreement_with_a_single_teacher_and_an_ensemble():
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    teacher = torch.tensor([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0]])
    assert classification_metrics(student, labels, teacher)["agreement"] == pytest.approx(2 / 3)
    # ensemble: the arithmetic mean of member probabilities decides
    # member 0 says (0, 1, 1) confidently / weakly / weakly, member 1 says (1, 1, 0) weakly /
    # confidently / confidently:
    # the mean distribution says (0, 1, 0), which the student predicts every time; a majority of
    # argmaxes would not.
    members = torch.stack(
        [
            torch.tensor([[5.0, 0.0], [0.0, 0.1], [0.0, 0.5]]),
            torch.tensor([[0.0, 0.1], [0.0, 5.0], [5.0, 0.0]]),
        ]
    )
    assert classification_metrics(student, labels, members)["agreement"] == 1.0
    assert classification_metrics(student, labels, members[1])["agreement"] == pytest.approx(2 / 3)


def test_evaluate_runs_in_eval_mode_and_restores_the_mode(make_cfg, teacher_file):
    from darkknowledge.train import prepare_data

    data = prepare_data(make_cfg().data).test
    model = load_model(teacher_file())
    model.train()
    a = evaluate(model, data)
    assert model.training
    model.eval()
    assert evaluate(model, data) == a


def test_temperature_is_not_a_parameter_of_evaluation():
    for fn in (evaluate, classification_metrics):
        assert "temperature" not in inspect.signature(fn).parameters


@pytest.mark.parametrize("temperature", [1.0, 20.0])
def test_a_students_evaluation_ignores_its_training_temperature(
    make_cfg, teacher_file, temperature
):
    """The run's reported test metrics equal evaluating the saved file, which carries no
    temperature.
    """
    cfg = make_cfg(
        "method.name=soft_targets",
        f"method.temperature={temperature}",
        f"teacher.checkpoints=[{teacher_file()}]",
        "optim.epochs=1",
    )
    summary = run(cfg, kind="distill")
    model = load_model(cfg.run_dir)
    meta = json.dumps(model.spec.__dict__)
    assert "temperature" not in meta
    from darkknowledge.train import prepare_data

    test = prepare_data(cfg.data).test
    fresh = evaluate(model, test)
    agreement = summary["eval"]["test"].pop("agreement")
    assert summary["eval"]["test"] == fresh
    assert 0.0 <= agreement <= 1.0
