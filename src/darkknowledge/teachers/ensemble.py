"""A teacher: one frozen model or an ensemble of them, producing stacked member logits."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from darkknowledge.errors import DKError
from darkknowledge.models import load_model, model_fingerprint
from darkknowledge.teachers.freeze import freeze


class Teacher:
    """Frozen member models; ``teacher(x)`` returns logits of shape (members, batch, classes).

    Kept outside the student's module tree on purpose (not an ``nn.Module``): a student's
    ``.train()``, optimizer or DDP wrapper can never reach it. The soft targets are made from
    the stacked member logits by the loss, at the loss temperature (arithmetic or geometric
    mean of the members' distributions, Hinton et al. 2015 §2).
    """

    def __init__(self, members: Sequence[nn.Module], sources: Sequence[str] | None = None) -> None:
        if not members:
            raise DKError("the teacher has no members", "give at least one teacher checkpoint (teacher.checkpoints)")
        self.members = [freeze(m) for m in members]
        self.sources = list(sources or [f"member{i}" for i in range(len(members))])
        if len(self.sources) != len(self.members):
            raise DKError(f"the teacher has {len(self.members)} members but {len(self.sources)} source names", "give one source per member")
        classes = {int(m.num_classes) for m in self.members}
        inputs = {int(m.in_features) for m in self.members}
        if len(classes) != 1 or len(inputs) != 1:
            desc = ", ".join(f"{s}: {m.in_features}→{m.num_classes}" for s, m in zip(self.sources, self.members, strict=True))
            raise DKError(f"ensemble members disagree on input size or class count ({desc})", "ensemble only teachers trained on the same task")
        self.num_classes = classes.pop()
        self.in_features = inputs.pop()
        h = hashlib.sha256()
        for m in self.members:
            h.update(model_fingerprint(m).encode())
        self.fingerprint = h.hexdigest()

    @classmethod
    def from_checkpoints(cls, paths: Sequence[str | Path], device: torch.device | str = "cpu") -> Teacher:
        return cls([load_model(p, map_location=device) for p in paths], [str(p) for p in paths])

    def to(self, device: torch.device | str) -> Teacher:
        self.members = [m.to(device) for m in self.members]
        return self

    def __len__(self) -> int:
        return len(self.members)

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, in_features) → logits (members, batch, classes)."""
        for m in self.members:
            assert not m.training, "teacher member left in train mode"
        return torch.stack([m(x) for m in self.members])
