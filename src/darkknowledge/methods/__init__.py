"""Distillation methods, one file each, registered by name at the point of definition.

Importing this package registers every built-in method: each module below is imported here by
name, one line per method, because the sources never import modules dynamically (a method file
nobody imports would never run its ``@methods.register``). ``methods.names()`` lists them.
``tests/methods/test_methods_registry.py`` fails, naming the file, if a module under
``methods/`` is not imported here or defines a method class that is not registered.
"""

from darkknowledge.methods.base import (
    FeatureRequest,
    LiveLogits,
    Method,
    MethodOutput,
    StepInputs,
    StoredLogits,
    TeacherTargets,
    as_targets,
    build_method,
    hyperparameter,
    method_config,
    method_name,
    methods,
    parameter_examples,
    validate_hyperparameters,
)
from darkknowledge.methods.binding import BoundMethod
from darkknowledge.methods.decoupled import Decoupled
from darkknowledge.methods.hard_targets import HardTargets
from darkknowledge.methods.hints import Hints
from darkknowledge.methods.logit_matching import LogitMatching
from darkknowledge.methods.soft_targets import SoftTargets

__all__ = [
    "BoundMethod",
    "Decoupled",
    "FeatureRequest",
    "HardTargets",
    "Hints",
    "LiveLogits",
    "LogitMatching",
    "Method",
    "MethodOutput",
    "SoftTargets",
    "StepInputs",
    "StoredLogits",
    "TeacherTargets",
    "as_targets",
    "build_method",
    "hyperparameter",
    "method_config",
    "method_name",
    "methods",
    "parameter_examples",
    "validate_hyperparameters",
]
