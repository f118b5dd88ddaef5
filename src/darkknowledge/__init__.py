"""darkknowledge: knowledge distillation (Hinton, Vinyals & Dean 2015).

The short path for your own models: ``darkknowledge.fit``, ``darkknowledge.distill`` and
``darkknowledge.evaluate`` (see :mod:`darkknowledge.api`); the full one: ``fit_model`` and
``OptimConfig``. Imported on first use, so ``dk --help`` does not load PyTorch.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "fit": "darkknowledge.api",
    "distill": "darkknowledge.api",
    "evaluate": "darkknowledge.api",
    "fit_model": "darkknowledge.train.fit_model",
    "OptimConfig": "darkknowledge.config",
}
__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'darkknowledge' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
