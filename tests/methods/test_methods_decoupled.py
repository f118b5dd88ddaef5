import pytest
import torch

from darkknowledge.errors import DKError
from darkknowledge.losses import decoupled_kd_terms, hard_target_loss, topk_targets
from darkknowledge.methods import Decoupled, StepInputs, build_method

G = torch.Generator().manual_seed(3)
STUDENT = torch.randn(6, 5, generator=G) * 2
TEACHER = torch.randn(6, 5, generator=G) * 2
LABELS = torch.randint(0, 5, (6,), generator=G)


def test_defaults_follow_the_paper():
    method = Decoupled()
    assert (
        method.temperature,
        method.target_weight,
        method.nontarget_weight,
        method.hard_weight,
        method.warmup_epochs,
    ) == (4.0, 1.0, 8.0, 1.0, 20)
    assert method.needs_teacher and method.needs_labels()


def test_loss_is_hard_plus_the_weighted_terms_after_warm_up():
    method = Decoupled(
        temperature=2, target_weight=0.5, nontarget_weight=3, hard_weight=0.7, warmup_epochs=4
    )
    out = method(StepInputs.of(STUDENT, TEACHER, LABELS, epoch=10))
    tckd, nckd = decoupled_kd_terms(STUDENT, TEACHER, LABELS, 2)
    hard = hard_target_loss(STUDENT, LABELS)
    assert set(out.components) == {"tckd", "nckd", "hard"}
    torch.testing.assert_close(out.components["tckd"], tckd)
    torch.testing.assert_close(out.components["nckd"], nckd)
    torch.testing.assert_close(out.loss, 0.7 * hard + 0.5 * tckd + 3 * nckd)


@pytest.mark.parametrize(
    ("warmup", "epoch", "factor"),
    [(4, 0, 0.25), (4, 2, 0.75), (4, 3, 1.0), (4, 50, 1.0), (0, 0, 1.0)],
)
def test_the_distillation_terms_ramp_in_linearly(warmup, epoch, factor):
    method = Decoupled(hard_weight=0, warmup_epochs=warmup)
    full = Decoupled(hard_weight=0, warmup_epochs=0)(StepInputs.of(STUDENT, TEACHER, LABELS)).loss
    out = method(StepInputs.of(STUDENT, TEACHER, LABELS, epoch=epoch))
    torch.testing.assert_close(out.loss, factor * full)
    assert set(out.components) == {"tckd", "nckd"}  # the unweighted terms, whatever the epoch


def test_labels_are_always_needed_and_the_advice_says_so():
    method = build_method("decoupled", {"hard_weight": 0})
    assert method.needs_labels()
    with pytest.raises(DKError, match="use a labelled transfer set"):
        method(StepInputs.of(STUDENT, TEACHER, None))


def test_top_k_targets_are_refused():
    stored = topk_targets(TEACHER, 2, 4.0)[:, torch.arange(6)]
    with pytest.raises(DKError, match="decoupled needs the teacher's dense logits"):
        Decoupled()(StepInputs.of(STUDENT, stored, LABELS))


def test_warmup_epochs_must_be_a_count():
    with pytest.raises(DKError, match="warmup_epochs must be an integer"):
        Decoupled(warmup_epochs=2.5)
    with pytest.raises(DKError, match="warmup_epochs must be >= 0"):
        Decoupled(warmup_epochs=-1)
