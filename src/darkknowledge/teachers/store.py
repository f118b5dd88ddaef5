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
from darkknowledge.errors import DKError, write_error
from darkknowledge.teachers.ensemble import Teacher

FORMAT = "darkknowledge.teacher_outputs/2"
META_KEY = "darkknowledge.teacher_outputs"


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
    # One JSON metadata entry (sorted keys): safetensors orders several entries arbitrarily,
    # and one entry keeps the file byte-for-byte reproducible.
    meta = {
        "format": FORMAT,
        "teacher_fingerprint": teacher.fingerprint,
        "dataset_fingerprint": dataset.fingerprint(),
        "dataset_name": dataset.name,
        "teacher_sources": teacher.sources,
    }
    tensors = {"logits": logits.detach().cpu().contiguous(), "index": dataset.index.cpu().contiguous()}
    path = Path(path)
    atomic_write_bytes(path, st_save(tensors, metadata={META_KEY: json.dumps(meta, sort_keys=True)}))
    return path


def load_store(path: str | Path, teacher: Teacher, dataset: TensorDataset) -> torch.Tensor:
    """Stored logits for ``dataset``, in dataset order; refused if made by another teacher or data."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DKError(f"teacher-output store {path} cannot be read ({exc.strerror or exc.__class__.__name__})", "check the path in teacher.store") from None
    try:
        tensors = st_load(raw)
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + n])
        meta = json.loads((header.get("__metadata__") or {}).get(META_KEY, "{}"))
        if not isinstance(meta, dict):
            raise ValueError("metadata is not a mapping")
    except (SafetensorError, ValueError, AttributeError) as exc:
        raise DKError(f"teacher-output store {path} is corrupt ({exc})", "delete it; it is rebuilt from the teacher on the next run") from None
    if meta.get("format") != FORMAT or "logits" not in tensors or "index" not in tensors:
        raise DKError(f"teacher-output store {path} is not a darkknowledge store", "delete it or point teacher.store elsewhere")
    if meta.get("teacher_fingerprint") != teacher.fingerprint:
        raise DKError(
            f"teacher-output store {path} was made by another teacher (fingerprint {str(meta.get('teacher_fingerprint', '?'))[:12]} ≠ {teacher.fingerprint[:12]})",
            "delete the store or set teacher.store to a new path so it is rebuilt",
        )
    if meta.get("dataset_fingerprint") != dataset.fingerprint():
        raise DKError(
            f"teacher-output store {path} was made over other data ({meta.get('dataset_name', '?')}, fingerprint {str(meta.get('dataset_fingerprint', '?'))[:12]}) than the transfer set {dataset.name} ({dataset.fingerprint()[:12]})",
            "delete the store or set teacher.store to a new path so it is rebuilt",
        )
    logits, index = tensors["logits"], tensors["index"]
    if not torch.equal(index, dataset.index.cpu()) or logits.shape[1] != len(dataset):
        raise DKError(f"teacher-output store {path} is misaligned with the transfer set", "delete it so it is rebuilt")
    return logits


def check_finite_outputs(logits: torch.Tensor, teacher: Teacher, dataset: TensorDataset) -> None:
    """DKError naming the first example whose teacher logits are NaN or Inf (a diverged teacher)."""
    finite = torch.isfinite(logits).flatten(start_dim=2).all(dim=2)  # (members, N)
    if bool(finite.all()):
        return
    member, pos = (int(v) for v in (~finite).nonzero()[0])
    count = int((~finite.all(dim=0)).sum())
    raise DKError(
        f"teacher {teacher.sources[member]} outputs non-finite logits for {count} examples of {dataset.name}, first at source index {int(dataset.index[pos])}",
        "the teacher checkpoint is broken (it may have diverged); retrain it or pick another",
    )


def teacher_outputs(teacher: Teacher, dataset: TensorDataset, path: str | Path | None = None) -> torch.Tensor:
    """Load the store for (teacher, dataset), or compute and save it. Returns (members, N, classes).

    An explicit ``path`` that holds a mismatching store is an error; the default
    fingerprint-named cache file is rebuilt (with a warning) if it is corrupt, and a failure to
    write it (read-only or full cache) only costs the reuse, with a warning. Stores are written
    atomically, so a killed precompute leaves at most an ignored temporary file. Non-finite
    teacher outputs are a :class:`DKError` before any training.
    """
    explicit = path is not None
    path = Path(path) if explicit else default_store_path(teacher, dataset)
    if path.is_file():
        try:
            logits = load_store(path, teacher, dataset)
            check_finite_outputs(logits, teacher, dataset)
            return logits
        except DKError as exc:
            if explicit:
                raise
            warnings.warn(f"rebuilding teacher-output store: {exc}", stacklevel=2)
    logits = compute_teacher_logits(teacher, dataset)
    check_finite_outputs(logits, teacher, dataset)
    try:
        save_store(path, logits, teacher, dataset)
    except OSError as exc:
        if explicit:
            raise write_error(exc, f"teacher-output store {path}", "set teacher.store to a writable path") from None
        warnings.warn(f"teacher-output store not saved ({write_error(exc, path)}); the outputs are used from memory", stacklevel=2)
    return logits
