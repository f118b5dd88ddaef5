"""Distillation methods, one file each, registered by name at the point of definition.

Importing this package registers every built-in method (each module below is imported here by
name: the sources never import modules dynamically); ``methods.names()`` lists them.
``tests/methods/test_methods_registry.py`` fails if a module under ``methods/`` is not imported
here or defines a method class that is not registered.
"""

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
