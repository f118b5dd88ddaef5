"""Teachers: frozen models, ensembles and the teacher-output store."""

from darkknowledge.teachers.ensemble import Teacher
from darkknowledge.teachers.freeze import freeze, is_frozen
from darkknowledge.teachers.store import (
    compute_teacher_logits,
    default_store_path,
    load_store,
    save_store,
    teacher_outputs,
)

__all__ = [
    "Teacher",
    "compute_teacher_logits",
    "default_store_path",
    "freeze",
    "is_frozen",
    "load_store",
    "save_store",
    "teacher_outputs",
]
