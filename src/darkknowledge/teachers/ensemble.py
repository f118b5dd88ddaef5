"""A teacher: one frozen model or an ensemble of them, producing stacked member logits."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from darkknowledge.config import read_yaml
from darkknowledge.errors import DKError
from darkknowledge.models import MODEL_FILE, load_model, model_fingerprint
from darkknowledge.teachers.freeze import freeze


def member_files(path: str | Path) -> list[Path]:
    """The model files a teacher path stands for: a model file, a run directory holding one
    model, the run directory of an ensemble (``ensemble.members=N``, or any batched run whose
    models differ only by seed): its members ``replicas/<k>/model.safetensors`` in order, or of a
    born-again run (``generations=N``): its generations ``generations/<k>/model.safetensors``."""
    p = Path(path)
    folder = next((f for f in ("replicas", "generations") if (p / f).is_dir()), None)
    if not p.is_dir() or (p / MODEL_FILE).is_file() or folder is None:
        return [p]
    try:
        summary = json.loads((p / "summary.json").read_bytes())
    except (OSError, ValueError):
        summary = None
    members = summary.get(folder) if isinstance(summary, dict) else None
    if not isinstance(members, list) or not members:
        what = "ensemble" if folder == "replicas" else "born-again run"
        command = "train" if folder == "replicas" else "distill"
        raise DKError(
            f"the {what} in {p} has not finished (no summary.json with its {folder})",
            f"finish it first: dk {command} -c {p / 'config.yaml'} --run-dir {p} --resume auto",
        )
    try:
        swept = {
            k: v
            for k, v in (read_yaml(p / "config.yaml").get("replicas") or {}).items()
            if k != "seeds" and v
        }
    except DKError:
        swept = {}
    if swept:
        raise DKError(
            f"{p} holds {len(members)} models of a sweep "
            f"({', '.join(f'replicas.{k}' for k in swept)}), not an ensemble of seeds",
            f"give one of its models, e.g. {p / 'replicas' / '0'}, or list the ones to combine",
        )
    first = 0 if folder == "replicas" else 1  # generations count from 1 (0 is their teacher)
    files = [p / folder / str(first + k) / MODEL_FILE for k in range(len(members))]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DKError(
            f"the ensemble in {p} lacks member file(s) {', '.join(missing[:3])}",
            "train the ensemble again in a new run directory",
        )
    return files


def expand_members(paths: Sequence[str | Path]) -> list[Path]:
    """Every model file the teacher paths stand for (an ensemble run directory: all its members)."""
    return [f for path in paths for f in member_files(path)]


def load_members(
    paths: str | Path | Sequence[str | Path], device: torch.device | str = "cpu"
) -> list[nn.Module]:
    """The models of one teacher path or several (each a model file, a run directory, or an
    ensemble's run directory), loaded onto ``device``: the Python API's way to a saved teacher."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    return [load_model(f, map_location=device) for f in expand_members(paths)]


class Teacher:
    """Frozen member models; ``teacher(x)`` returns logits of shape (members, batch, classes).

    Kept outside the student's module tree on purpose (not an ``nn.Module``): a student's
    ``.train()``, optimizer or DDP wrapper can never reach it. The soft targets are made from
    the stacked member logits by the loss, at the loss temperature (arithmetic or geometric
    mean of the members' distributions, Hinton et al. 2015 §2).
    """

    def __init__(self, members: Sequence[nn.Module], sources: Sequence[str] | None = None) -> None:
        if not members:
            raise DKError(
                "the teacher has no members",
                "give at least one teacher checkpoint (teacher.checkpoints)",
            )
        self.members = [freeze(m) for m in members]
        self.sources = list(sources or [f"member{i}" for i in range(len(members))])
        if len(self.sources) != len(self.members):
            raise DKError(
                f"the teacher has {len(self.members)} members but {len(self.sources)} source names",
                "give one source per member",
            )
        classes = {int(m.num_classes) for m in self.members}
        inputs = {int(m.in_features) for m in self.members}
        if len(classes) != 1 or len(inputs) != 1:
            desc = ", ".join(
                f"{s}: {m.in_features}→{m.num_classes}"
                for s, m in zip(self.sources, self.members, strict=True)
            )
            raise DKError(
                f"ensemble members disagree on input size or class count ({desc})",
                "ensemble only teachers trained on the same task",
            )
        self.num_classes = classes.pop()
        self.in_features = inputs.pop()
        h = hashlib.sha256()
        for m in self.members:
            h.update(model_fingerprint(m).encode())
        self.fingerprint = h.hexdigest()

    @classmethod
    def from_checkpoints(
        cls, paths: Sequence[str | Path], device: torch.device | str = "cpu"
    ) -> Teacher:
        """Model files or run directories; an ensemble's run directory brings all its members."""
        files = expand_members(paths)
        return cls([load_model(p, map_location=device) for p in files], [str(p) for p in files])

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
