"""Teachers: frozen models, ensembles and the teacher-output store."""

from darkknowledge.teachers.build import (
    BuildResult,
    build_store,
    process_group_from_env,
    store_lock,
)
from darkknowledge.teachers.ensemble import Teacher, expand_members, load_members, member_files
from darkknowledge.teachers.freeze import freeze, is_frozen
from darkknowledge.teachers.manifest import StoreOptions
from darkknowledge.teachers.store import (
    compute_teacher_logits,
    default_store_path,
    describe_store,
    iter_shards,
    load_store,
    read_store_manifest,
    store_options,
    teacher_outputs,
)

__all__ = [
    "BuildResult",
    "StoreOptions",
    "Teacher",
    "expand_members",
    "load_members",
    "member_files",
    "build_store",
    "compute_teacher_logits",
    "default_store_path",
    "describe_store",
    "freeze",
    "is_frozen",
    "iter_shards",
    "load_store",
    "process_group_from_env",
    "read_store_manifest",
    "store_lock",
    "store_options",
    "teacher_outputs",
]
