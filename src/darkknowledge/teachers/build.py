"""Building a teacher-output store: shard by shard, resumable, in parallel under ``torchrun``.

Each shard is computed from its own rows only, in fixed-size batches, so a shard's bytes do not
depend on which process built it or on which other shards exist: a parallel build, a resumed
build and a one-shot build give the same files. Rank r of N builds shards r, r + N, ...; a shard
whose sidecar matches the build and whose sha256 checks out is skipped. After a barrier, rank 0
verifies every shard and writes ``manifest.json`` last, so a killed build leaves complete shards
and no manifest, and rerunning finishes only what is missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save

from darkknowledge.data import TensorDataset, atomic_write_bytes
from darkknowledge.errors import DKError
from darkknowledge.losses import topk_targets
from darkknowledge.teachers.ensemble import Teacher
from darkknowledge.teachers.manifest import (
    DTYPES,
    LOCK_NAME,
    MANIFEST,
    META_KEY,
    ROW_DIGEST,
    SHARD_FORMAT,
    StoreOptions,
    auto_shard_size,
    check_manifest,
    dump_json,
    file_sha256,
    is_store_file,
    plan,
    read_json,
    row_digests,
    shard_name,
    shard_number,
    sidecar_name,
    store_key,
)

FLOAT16_MAX = torch.finfo(torch.float16).max


@dataclass
class BuildResult:
    """What one process did: the shards it computed and the ones it found complete."""

    path: Path
    computed: list[int] = field(default_factory=list)
    reused: list[int] = field(default_factory=list)
    shards: int = 0
    rank: int = 0
    world_size: int = 1


def check_teacher_fits(teacher: Teacher, dataset: TensorDataset) -> None:
    in_features = dataset.images[0].numel() if len(dataset) else 0
    if teacher.num_classes != dataset.num_classes or teacher.in_features != in_features:
        raise DKError(
            f"teacher predicts {teacher.num_classes} classes from {teacher.in_features} inputs but "
            f"{dataset.name} has {dataset.num_classes} classes and {in_features} inputs",
            "use a teacher trained on this dataset",
        )


def _check_finite(
    logits: torch.Tensor, teacher: Teacher, dataset: TensorDataset, start: int
) -> None:
    """DKError naming the first example whose teacher logits are NaN or Inf (a diverged teacher)."""
    finite = torch.isfinite(logits).flatten(start_dim=2).all(dim=2)  # (members, rows)
    if bool(finite.all()):
        return
    member, pos = (int(v) for v in (~finite).nonzero()[0])
    count = int((~finite.all(dim=0)).sum())
    raise DKError(
        f"teacher {teacher.sources[member]} outputs non-finite logits for {count} examples of "
        f"{dataset.name}, first at source index {int(dataset.index[start + pos])}",
        "the teacher checkpoint is broken (it may have diverged); retrain it or pick another",
    )


@torch.inference_mode()
def compute_shard(
    teacher: Teacher,
    dataset: TensorDataset,
    start: int,
    stop: int,
    options: StoreOptions,
    batch_size: int = 2000,
) -> dict[str, torch.Tensor]:
    """The tensors of the shard holding rows ``[start, stop)`` (CPU, in store dtype).

    Dense: ``logits`` (members, rows, classes). Top-k: ``indices`` (rows, k) int32,
    ``log_probs`` (rows, k), ``tail_log_prob`` (rows,). Both: ``index`` (rows,) int64 source
    indices and ``row_sha256`` (rows, 32) uint8 pixel digests. Batches start at ``start``, so the
    result does not depend on the rest of the store.
    """
    device = next(teacher.members[0].parameters()).device
    chunks = []
    for b in range(start, stop, batch_size):
        pos = torch.arange(b, min(b + batch_size, stop), device=dataset.images.device)
        chunks.append(teacher(dataset.features(pos).to(device)).float())
    logits = torch.cat(chunks, dim=1)
    _check_finite(logits, teacher, dataset, start)
    dtype = DTYPES[options.dtype]
    out = {
        "index": dataset.index[start:stop].cpu().clone(),
        "row_sha256": row_digests(dataset.images[start:stop]),
    }
    if options.topk is None:
        if dtype == torch.float16 and float(logits.abs().max()) > FLOAT16_MAX:
            raise DKError(
                f"teacher logits of {dataset.name} reach {float(logits.abs().max()):.4g}, beyond "
                f"float16's range ({FLOAT16_MAX:g})",
                "use the float32 store dtype",
            )
        out["logits"] = logits.to(dtype).cpu()
    else:
        targets = topk_targets(logits, options.topk, options.temperature, options.combine)
        out["indices"] = targets.indices[0].to(torch.int32).cpu()
        out["log_probs"] = targets.log_probs[0].to(dtype).cpu()
        out["tail_log_prob"] = targets.tail_log_prob[0].to(dtype).cpu()
    return {k: v.contiguous() for k, v in out.items()}


def _sidecar(
    key: dict[str, Any], i: int, start: int, stop: int, sha256: str, size: int
) -> dict[str, Any]:
    return {
        "format": SHARD_FORMAT,
        "key": key,
        "shard": i,
        "file": shard_name(i),
        "start": start,
        "stop": stop,
        "sha256": sha256,
        "bytes": size,
    }


def shard_is_complete(out: Path, key: dict[str, Any], i: int, start: int, stop: int) -> str | None:
    """The shard file's sha256 if shard ``i`` of this build is on disk and intact, else None."""
    side = read_json(out / sidecar_name(i))
    if side is None or side != {
        **side,
        "format": SHARD_FORMAT,
        "key": key,
        "shard": i,
        "file": shard_name(i),
        "start": start,
        "stop": stop,
    }:
        return None
    try:
        digest = file_sha256(out / shard_name(i))
    except OSError:
        return None
    return digest if digest == side.get("sha256") else None


def write_shard(
    out: Path, key: dict[str, Any], i: int, start: int, stop: int, tensors: dict[str, torch.Tensor]
) -> None:
    """The shard file, then its sidecar: a sidecar only ever describes a whole shard."""
    meta = {"format": SHARD_FORMAT, "shard": i, "start": start, "stop": stop}
    data = st_save(tensors, metadata={META_KEY: dump_json(meta).decode()})
    atomic_write_bytes(out / shard_name(i), data)
    side = _sidecar(key, i, start, stop, hashlib.sha256(data).hexdigest(), len(data))
    atomic_write_bytes(out / sidecar_name(i), dump_json(side))


def _partial_shard_size(out: Path, key: dict[str, Any]) -> int | None:
    """The shard size of a partial build of the same content found in ``out`` (to resume it)."""
    if not out.is_dir():
        return None
    for entry in sorted(out.iterdir()):
        if entry.suffix == ".json" and shard_number(entry.name) is not None:
            side = read_json(entry)
            if side is not None and side.get("key") == key and side.get("shard") == 0:
                size = side.get("stop", 0) - side.get("start", 0)
                if isinstance(size, int) and size >= 1:
                    return size
    return None


def check_not_foreign(out: Path) -> None:
    """Refuse a directory that holds files but no store file (someone else's directory)."""
    if not out.is_dir():
        return
    names = [p.name for p in out.iterdir() if p.name != LOCK_NAME]
    if names and not any(is_store_file(n) for n in names):
        raise DKError(
            f"{out} is not a teacher-output store (it holds other files)",
            "choose an empty or new directory for the store",
        )


def _check_target(out: Path, key: dict[str, Any], overwrite: bool) -> str:
    """``done``, ``build`` or ``rebuild`` (a complete store of other content is replaced); DKError
    when refused.
    """
    if out.exists() and not out.is_dir():
        if not overwrite:
            raise DKError(
                f"teacher-output store {out} is a file, not a store directory",
                "choose another path (a directory) for the store",
            )
        return "rebuild"
    if not out.is_dir():
        return "build"
    if not overwrite:
        check_not_foreign(out)
    manifest = read_json(out / MANIFEST)
    if manifest is None or manifest.get("complete") is not True:
        return "build"
    held = {k: manifest.get(k) for k in key}
    if held == key:
        return "done" if _intact(out, key, manifest) else "build"
    if not overwrite:
        differs = ", ".join(
            f"{k} {str(held[k])[:16]} ≠ {str(key[k])[:16]}" for k in key if held[k] != key[k]
        )
        raise DKError(
            f"teacher-output store {out} holds other outputs ({differs})",
            "choose another --out, or delete the store to rebuild it",
        )
    return "rebuild"


def _intact(out: Path, key: dict[str, Any], manifest: dict[str, Any]) -> bool:
    """Whether a complete manifest is well-formed and every shard matches both its sidecar and the
    manifest.
    """
    try:
        check_manifest(manifest, out)
    except DKError:
        return False
    return all(
        shard_is_complete(out, key, i, e["start"], e["stop"]) == e["sha256"]
        for i, e in enumerate(manifest["shards"])
    )


def _finish(out: Path, key: dict[str, Any], shard_size: int, sources: list[str]) -> None:
    """Rank 0, after every shard is built: verify them all, write the manifest, drop stale files."""
    entries = []
    for i, (start, stop) in enumerate(plan(key["n"], shard_size)):
        digest = shard_is_complete(out, key, i, start, stop)
        if digest is None:
            raise DKError(
                f"teacher-output store {out}: shard {i} is missing or corrupt after the build",
                "rerun the build; it finishes the missing shards",
            )
        entries.append({"file": shard_name(i), "start": start, "stop": stop, "sha256": digest})
    manifest = {
        **key,
        "complete": True,
        "shard_size": shard_size,
        "shards": entries,
        "teacher_sources": sources,
        "row_digest": ROW_DIGEST,
    }
    atomic_write_bytes(out / MANIFEST, dump_json(manifest))
    keep = (
        {e["file"] for e in entries}
        | {sidecar_name(i) for i in range(len(entries))}
        | {MANIFEST, LOCK_NAME}
    )
    for entry in out.iterdir():
        if entry.name not in keep and is_store_file(entry.name):
            with contextlib.suppress(OSError):
                entry.unlink()


def build_store(
    teacher: Teacher,
    dataset: TensorDataset,
    out: str | Path,
    options: StoreOptions | None = None,
    *,
    overwrite: bool = False,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] | None = None,
    batch_size: int = 2000,
) -> BuildResult:
    """Build (or finish) the store of ``teacher`` over ``dataset`` in directory ``out``.

    Every process of a ``torchrun`` job calls this with its ``rank``, the ``world_size`` and a
    ``barrier``; a single process uses the defaults. A complete store of the same content is left
    as it is. A store of other content (teacher, data or options) is a :class:`DKError`, unless
    ``overwrite`` (the fingerprint-named cache), when it is replaced. Shards already built for the
    same content are kept; the shard size of such a partial build is adopted when
    ``options.shard_size`` is None.
    """
    options = options or StoreOptions()
    barrier = barrier or (lambda: None)
    out = Path(out)
    if len(dataset) == 0:
        raise DKError(
            f"dataset {dataset.name} is empty; there are no teacher outputs to store",
            "check the dataset and its filters",
        )
    check_teacher_fits(teacher, dataset)
    if options.topk is not None and options.topk > teacher.num_classes:
        raise DKError(
            f"top-k {options.topk} exceeds the teacher's {teacher.num_classes} classes",
            f"use top-k ≤ {teacher.num_classes}",
        )
    key = store_key(teacher, dataset, options)
    state = _check_target(out, key, overwrite)
    shard_size = options.shard_size or _partial_shard_size(out, key) or auto_shard_size(key)
    ranges = plan(len(dataset), shard_size)
    result = BuildResult(out, shards=len(ranges), rank=rank, world_size=world_size)
    barrier()  # every rank has read the directory before anyone changes it
    if state == "done":
        result.reused = list(range(rank, len(ranges), world_size))
        return result
    if rank == 0:
        if state == "rebuild" and out.is_file():
            out.unlink()
        with contextlib.suppress(FileNotFoundError):
            (out / MANIFEST).unlink()  # never a complete manifest over shards being replaced
    barrier()
    for i in range(rank, len(ranges), world_size):
        start, stop = ranges[i]
        if shard_is_complete(out, key, i, start, stop) is not None:
            result.reused.append(i)
            continue
        write_shard(
            out,
            key,
            i,
            start,
            stop,
            compute_shard(teacher, dataset, start, stop, options, batch_size),
        )
        result.computed.append(i)
    barrier()
    if rank == 0:
        _finish(out, key, shard_size, teacher.sources)
    barrier()
    return result


@contextlib.contextmanager
def store_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<out>/.store.lock`` (POSIX ``flock``) while building ``out``.

    Students of a sweep started together then build a shared store once: the first builds, the
    others wait and find it complete. Not taken by the ranks of one ``torchrun`` build, which
    coordinate through barriers; run one build job per store at a time. The lock file lives inside
    the store it locks (nothing is left next to it); a store directory this call created and
    that holds nothing but the lock when the build fails (or is refused) is removed again.
    """
    try:
        import fcntl
    except ImportError:  # no flock on this platform: builders are not serialized
        yield
        return
    if out.exists() and not out.is_dir():  # a single-file store being replaced: nothing to lock in
        yield
        return
    check_not_foreign(out)  # never a lock file in someone else's directory
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    ok = False
    try:
        with open(out / LOCK_NAME, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
                ok = True
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
    finally:
        if created and not ok and [p.name for p in out.iterdir()] == [LOCK_NAME]:
            with contextlib.suppress(OSError):
                (out / LOCK_NAME).unlink()
                out.rmdir()


@contextlib.contextmanager
def process_group_from_env(
    timeout: timedelta = timedelta(hours=24),
) -> Iterator[tuple[int, int, Callable[[], None]]]:
    """``(rank, world_size, barrier)`` of a ``torchrun`` launch (gloo; its barriers only), else
    ``(0, 1, no-op)``.

    The timeout is long because a rank with nothing left to build waits at the barrier for the
    others; a rank that fails ends the whole job through torchrun.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        yield 0, 1, lambda: None
        return
    import torch.distributed as dist

    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("gloo", timeout=timeout)
    try:
        yield dist.get_rank(), dist.get_world_size(), dist.barrier
    finally:
        if owned:
            dist.destroy_process_group()
