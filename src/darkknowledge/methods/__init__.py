"""Distillation methods, one file each, registered by name at the point of definition.

Importing this package imports every module in it, so a new method file registers itself
(``@methods.register("name")`` on its class) without being listed here; ``methods.names()``
lists them. ``tests/methods/test_methods_registry.py`` fails if a module defines a method class
that is not registered.
"""

import importlib
import pkgutil

from darkknowledge.methods.base import (
    Method,
    MethodOutput,
    build_method,
    method_config,
    method_name,
    methods,
    validate_hyperparameters,
)
from darkknowledge.methods.hard_targets import HardTargets
from darkknowledge.methods.logit_matching import LogitMatching
from darkknowledge.methods.soft_targets import SoftTargets

for _module in pkgutil.iter_modules(__path__):  # every method file, including ones added later
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "HardTargets",
    "LogitMatching",
    "Method",
    "MethodOutput",
    "SoftTargets",
    "build_method",
    "method_config",
    "method_name",
    "methods",
    "validate_hyperparameters",
]
