"""Checkpoints of the specialists' own training loops (the specialists, and the network
distilled from the whole system), in train/checkpoint.py's atomic, verified format: an
interrupted command continues from the last one and ends with the same bits."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from darkknowledge.errors import DKError
from darkknowledge.train.checkpoint import (
    latest_checkpoint,
    optimizer_state,
    restore_optimizer,
    save_checkpoint,
)


def fingerprint(settings: Any, *tensors: torch.Tensor) -> str:
    """What a checkpoint must have been trained from to be continued: a settings dataclass and
    the tensors the training reads (weights it starts from, targets, clusters)."""
    h = hashlib.sha256(json.dumps(dataclasses.asdict(settings), sort_keys=True).encode())
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class TrainingCheckpoints:
    """Save every ``every`` steps under ``root`` (None: never), and continue from the newest.

    ``what`` names the training in the error for a checkpoint of another one."""

    def __init__(self, root: str | Path | None, every: int, key: str, what: str) -> None:
        if root is not None and every < 1:
            raise DKError(f"checkpoint_every={every} is invalid", "use a positive step count")
        self.root, self.every, self.key, self.what = root, every, key, what

    def due(self, step: int, steps: int) -> bool:
        return self.root is not None and step < steps and step % self.every == 0

    def save(
        self,
        step: int,
        model: nn.Module,
        opt: torch.optim.Optimizer,
        sched: torch.optim.lr_scheduler.LRScheduler,
        g: torch.Generator,
        seconds: float,
    ) -> None:
        tensors, scalars = optimizer_state(opt)
        save_checkpoint(
            self.root,
            step,
            model.state_dict(),
            {**tensors, "rng/generator": g.get_state()},
            {
                "epoch": 0,
                "step_in_epoch": step,
                "global_step": step,
                "optimizer": scalars,
                "scheduler": sched.state_dict(),
                "config_hash": self.key,
                "fingerprints": {},
                "train_seconds": seconds,
            },
        )

    def resume(
        self,
        model: nn.Module,
        opt: torch.optim.Optimizer,
        sched: torch.optim.lr_scheduler.LRScheduler,
        g: torch.Generator,
    ) -> tuple[int, float]:
        """Load the newest checkpoint of this training, if any: (its step, its seconds)."""
        ckpt = latest_checkpoint(self.root) if self.root is not None else None
        if ckpt is None:
            return 0, 0.0
        state = ckpt["state"]
        if state["config_hash"] != self.key:
            raise DKError(
                f"checkpoint {ckpt['path']} is of other {self.what}",
                f"remove {self.root} to train these from the start",
            )
        model.load_state_dict(ckpt["model"])
        restore_optimizer(opt, ckpt["tensors"], state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        g.set_state(ckpt["tensors"]["rng/generator"])
        return int(state["global_step"]), float(state.get("train_seconds") or 0.0)
