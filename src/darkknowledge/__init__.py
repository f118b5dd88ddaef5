"""darkknowledge: knowledge distillation (Hinton, Vinyals & Dean 2015).

The short path for your own models: ``darkknowledge.fit``, ``darkknowledge.distill``,
``darkknowledge.born_again`` and ``darkknowledge.evaluate`` (see :mod:`darkknowledge.api`); the
full one: ``fit_model`` and
``OptimConfig``. Imported on first use, so ``dk --help`` does not load PyTorch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["fit", "distill", "born_again", "evaluate", "load_teacher", "fit_model", "OptimConfig"]


def __getattr__(name: str) -> Any:
    if name in ("fit", "distill", "born_again", "evaluate", "load_teacher"):
        from darkknowledge import api

        return getattr(api, name)
    if name == "fit_model":
        from darkknowledge.train.fit_model import fit_model

        return fit_model
    if name == "OptimConfig":
        from darkknowledge.config import OptimConfig

        return OptimConfig
    raise AttributeError(f"module 'darkknowledge' has no attribute {name!r}")
