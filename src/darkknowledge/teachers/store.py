"""Teacher-output store: raw teacher logits computed once over a transfer set, reused by students.

Logits are computed over the *non-augmented* transfer set, keyed by each example's source index,
and saved with two fingerprints (teacher weights, dataset contents). Loading checks both and
refuses a store made by another teacher or over other data, so cached targets can never be
silently misaligned (a pitfall listed in LANDSCAPE.md).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from darkknowledge.data import TensorDataset, atomic_write_bytes, cache_dir
from darkknowledge.errors import DKError
from darkknowledge.teachers.ensemble import Teacher

FORMAT = "darkknowledge.teacher_outputs/1"


@torch.inference_mode()
def compute_teacher_logits(teacher: Teacher, dataset: TensorDataset, batch_size: int = 2000) -> torch.Tensor:
    """Teacher logits over every example, in dataset order: (members, N, classes) float32."""
    device = next(teacher.members[0].parameters()).device
    chunks = []
    for start in range(0, len(dataset), batch_size):
        pos = torch.arange(start, min(start + batch_size, len(dataset)), device=dataset.images.device)
        chunks.append(teacher(dataset.features(pos).to(device)).float())
    return torch.cat(chunks, dim=1)


def default_store_path(teacher: Teacher, dataset: TensorDataset) -> Path:
    return cache_dir() / "teacher_outputs" / f"{teacher.fingerprint[:16]}-{dataset.fingerprint()[:16]}.safetensors"


def save_store(path: str | Path, logits: torch.Tensor, teacher: Teacher, dataset: TensorDataset) -> Path:
    meta = {
        "format": FORMAT,
        "teacher_fingerprint": teacher.fingerprint,
        "dataset_fingerprint": dataset.fingerprint(),
        "dataset_name": dataset.name,
        "teacher_sources": json.dumps(teacher.sources),
    }
    tensors = {"logits": logits.detach().cpu().contiguous(), "index": dataset.index.cpu().contiguous()}
    path = Path(path)
    atomic_write_bytes(path, st_save(tensors, metadata=meta))
    return path


def load_store(path: str | Path, teacher: Teacher, dataset: TensorDataset) -> torch.Tensor:
    """Stored logits for ``dataset``, in dataset order; refused if made by another teacher or data."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        tensors = st_load(raw)
        n = int.from_bytes(raw[:8], "little")
        meta = json.loads(raw[8 : 8 + n]).get("__metadata__", {}) or {}
    except (SafetensorError, ValueError, json.JSONDecodeError) as exc:
        raise DKError(f"teacher-output store {path} is corrupt ({exc})", "delete it; it is rebuilt from the teacher on the next run") from None
    if meta.get("format") != FORMAT or "logits" not in tensors or "index" not in tensors:
        raise DKError(f"teacher-output store {path} is not a darkknowledge store", "delete it or point teacher.store elsewhere")
    if meta.get("teacher_fingerprint") != teacher.fingerprint:
        raise DKError(
            f"teacher-output store {path} was made by another teacher (fingerprint {meta.get('teacher_fingerprint', '?')[:12]} ≠ {teacher.fingerprint[:12]})",
            "delete the store or set teacher.store to a new path so it is rebuilt",
        )
    if meta.get("dataset_fingerprint") != dataset.fingerprint():
        raise DKError(
            f"teacher-output store {path} was made over other data ({meta.get('dataset_name', '?')}, fingerprint {meta.get('dataset_fingerprint', '?')[:12]}) than the transfer set {dataset.name} ({dataset.fingerprint()[:12]})",
            "delete the store or set teacher.store to a new path so it is rebuilt",
        )
    logits, index = tensors["logits"], tensors["index"]
    if not torch.equal(index, dataset.index.cpu()) or logits.shape[1] != len(dataset):
        raise DKError(f"teacher-output store {path} is misaligned with the transfer set", "delete it so it is rebuilt")
    return logits


def teacher_outputs(teacher: Teacher, dataset: TensorDataset, path: str | Path | None = None) -> torch.Tensor:
    """Load the store for (teacher, dataset), or compute and save it. Returns (members, N, classes).

    An explicit ``path`` that holds a mismatching store is an error; the default
    fingerprint-named cache file is rebuilt (with a warning) if it is corrupt.
    """
    explicit = path is not None
    path = Path(path) if explicit else default_store_path(teacher, dataset)
    if path.is_file():
        try:
            return load_store(path, teacher, dataset)
        except DKError as exc:
            if explicit:
                raise
            warnings.warn(f"rebuilding teacher-output store: {exc}", stacklevel=2)
    logits = compute_teacher_logits(teacher, dataset)
    save_store(path, logits, teacher, dataset)
    return logits
