"""Pure tensor → tensor losses of knowledge distillation (Hinton, Vinyals & Dean 2015).

All take logits, compute in float32 or wider (half/bf16 inputs are upcast), and use the last
dimension as the class dimension. Teacher logits are (batch, classes) for one teacher or
(members, batch, classes) for an ensemble, combined at the loss temperature, or
:class:`TopKTargets` (top-k + tail bucket at one temperature) for :func:`soft_target_loss_topk`.
Label smoothing is a transform of the hard targets (:func:`smoothed_targets`), not a loss.
"""

from darkknowledge.losses.decoupled import decoupled_kd_terms
from darkknowledge.losses.ensemble import combine_log_probs, combine_probs
from darkknowledge.losses.hard_targets import hard_target_loss
from darkknowledge.losses.hints import hint_loss
from darkknowledge.losses.label_smoothing import check_label_smoothing, smoothed_targets
from darkknowledge.losses.logit_matching import logit_matching_loss
from darkknowledge.losses.soft_targets import soft_target_loss
from darkknowledge.losses.temperature import (
    log_softmax_with_temperature,
    softmax_with_temperature,
)
from darkknowledge.losses.topk import TopKTargets, soft_target_loss_topk, topk_targets

__all__ = [
    "TopKTargets",
    "check_label_smoothing",
    "combine_log_probs",
    "combine_probs",
    "decoupled_kd_terms",
    "hard_target_loss",
    "hint_loss",
    "log_softmax_with_temperature",
    "logit_matching_loss",
    "soft_target_loss",
    "soft_target_loss_topk",
    "smoothed_targets",
    "softmax_with_temperature",
    "topk_targets",
]
