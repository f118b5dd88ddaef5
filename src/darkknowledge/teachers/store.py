"""Teacher-output store: teacher outputs computed once over a transfer set, reused by students.

A store is a directory of safetensors shards plus ``manifest.json`` (see
:mod:`darkknowledge.teachers.manifest` and docs/performance.md). Outputs are computed over the
*non-augmented* transfer set, keyed by each example's source index, and saved with two
fingerprints (teacher weights, dataset contents). Loading checks both and refuses a store made by
another teacher or over other data, so cached targets can never be silently misaligned (a
pitfall listed in LANDSCAPE.md). A store built over a whole source split also serves any
transfer set drawn from that split: its rows are found by source index and proven to be the same
images by per-row sha256 digests.

A store holds dense logits (float32 or float16; they serve every temperature) or the top-k
log-probabilities plus the tail mass at one temperature
(:class:`~darkknowledge.losses.TopKTargets`).
The single-file stores of format 2 (earlier releases) are still read when given as an explicit
path; they are never written any more.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as st_load

from darkknowledge.data import TensorDataset, cache_dir
from darkknowledge.errors import DKError, write_error
from darkknowledge.losses import TopKTargets
from darkknowledge.teachers.build import build_store, compute_shard, store_lock
from darkknowledge.teachers.ensemble import Teacher
from darkknowledge.teachers.manifest import (
    DTYPES,
    MANIFEST,
    META_KEY,
    StoreOptions,
    check_manifest,
    file_sha256,
    options_of,
    plan,
    read_json,
    row_digests,
    shard_number,
    sidecar_name,
)

LEGACY_FORMAT = "darkknowledge.teacher_outputs/2"
_SAFETENSORS_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.int32: "I32",
    torch.int64: "I64",
    torch.uint8: "U8",
}
_REBUILD = "delete the store or set teacher.store to a new path so it is rebuilt"

Outputs = torch.Tensor | TopKTargets


@torch.inference_mode()
def compute_teacher_logits(
    teacher: Teacher, dataset: TensorDataset, batch_size: int = 2000
) -> torch.Tensor:
    """Teacher logits over every example, in dataset order: (members, N, classes) float32."""
    device = next(teacher.members[0].parameters()).device
    chunks = []
    for start in range(0, len(dataset), batch_size):
        pos = torch.arange(
            start, min(start + batch_size, len(dataset)), device=dataset.images.device
        )
        chunks.append(teacher(dataset.features(pos).to(device)).float())
    return torch.cat(chunks, dim=1)


def default_store_path(
    teacher: Teacher, dataset: TensorDataset, options: StoreOptions | None = None
) -> Path:
    """``<cache>/teacher_outputs/<teacher fp>-<dataset fp>-<content options>``: one directory per
    content.
    """
    tag = (options or StoreOptions()).tag(len(teacher))
    return (
        cache_dir()
        / "teacher_outputs"
        / f"{teacher.fingerprint[:16]}-{dataset.fingerprint()[:16]}-{tag}"
    )


def store_options(teacher_cfg: Any, method: object | None = None) -> StoreOptions:
    """The :class:`StoreOptions` of a run: ``teacher.store_dtype``, ``store_topk``,
    ``store_temperature``.

    A top-k store is made at the method's temperature (``store_temperature: null``); a method
    without a temperature, or a different explicit one, is a :class:`DKError` before any work.
    """
    dtype = getattr(teacher_cfg, "store_dtype", "float32")
    topk = getattr(teacher_cfg, "store_topk", None)
    if topk is None:
        return StoreOptions(dtype=dtype)
    stored_t = getattr(teacher_cfg, "store_temperature", None)
    method_t = getattr(method, "temperature", None)
    name = type(method).__name__ if method is not None else "the method"
    if method is not None and method_t is None:
        raise DKError(
            f"teacher.store_topk={topk} stores soft targets at one temperature but {name} uses no "
            "temperature",
            "use soft_targets, or teacher.store_topk: null (dense logits)",
        )
    if stored_t is None:
        stored_t = method_t
    elif method_t is not None and float(stored_t) != float(method_t):
        raise DKError(
            f"teacher.store_temperature={stored_t:g} but method.temperature={method_t:g}; a top-k "
            "store serves one temperature",
            "set them equal, or teacher.store_temperature: null (the method's temperature)",
        )
    return StoreOptions(
        dtype=dtype,
        topk=topk,
        temperature=stored_t,
        combine=getattr(teacher_cfg, "combine", "arithmetic"),
    )


def teacher_outputs(
    teacher: Teacher,
    dataset: TensorDataset,
    path: str | Path | None = None,
    options: StoreOptions | None = None,
) -> Outputs:
    """Load the store for (teacher, dataset, options), or build and load it.

    Returns (members, N, classes) float32 logits for a dense store, :class:`TopKTargets` of shape
    (1, N, k) for a top-k one, aligned with ``dataset``.

    An explicit ``path`` that holds a mismatching store (another teacher, other data, other
    options) is an error; an explicit path to a partial build is finished. The default
    fingerprint-named cache directory is repaired (with a warning) if it is corrupt, and a failure
    to write it (read-only or full cache) only costs the reuse, with a warning. Shards are written
    atomically and the manifest last, so a killed precompute leaves complete shards that the next
    call reuses. Non-finite teacher outputs are a :class:`DKError` before anything is written.
    """
    options = options or StoreOptions()
    explicit = path is not None
    path = Path(path) if explicit else default_store_path(teacher, dataset, options)
    if explicit and path.is_file():
        return load_store(path, teacher, dataset, options)
    if (path / MANIFEST).exists() or (not explicit and path.is_file()):
        try:
            return load_store(path, teacher, dataset, options)
        except DKError as exc:
            if explicit:
                raise
            warnings.warn(f"rebuilding teacher-output store: {exc}", stacklevel=2)
    try:
        # a concurrent builder of the same store finishes first; this one then reuses it
        with store_lock(path):
            build_store(teacher, dataset, path, options, overwrite=not explicit)
    except OSError as exc:
        if explicit:
            raise write_error(
                exc, f"teacher-output store {path}", "set teacher.store to a writable path"
            ) from None
        warnings.warn(
            f"teacher-output store not saved ({write_error(exc, path)}); the outputs are used from "
            "memory",
            stacklevel=2,
        )
        tensors = compute_shard(teacher, dataset, 0, len(dataset), options)
        return _outputs(tensors, options, teacher)
    return load_store(path, teacher, dataset, options)


def _outputs(tensors: dict[str, torch.Tensor], options: StoreOptions, teacher: Teacher) -> Outputs:
    """Shard tensors (store dtype) as what the loss takes: float32 logits or TopKTargets."""
    if options.topk is None:
        return tensors["logits"].float()
    combine = options.combine if len(teacher) > 1 else None
    return TopKTargets(
        tensors["indices"].long()[None],
        tensors["log_probs"].float()[None],
        tensors["tail_log_prob"].float()[None],
        options.temperature,
        combine,
        len(teacher),
    )


# ---------------------------------------------------------------- reading


def _corrupt(path: Path, what: str) -> DKError:
    return DKError(
        f"teacher-output store {path} is corrupt ({what})",
        "delete it; it is rebuilt from the teacher on the next run",
    )


def read_store_manifest(path: str | Path) -> dict[str, Any]:
    """The checked manifest of the complete store directory ``path`` (DKError otherwise)."""
    path = Path(path)
    if not path.is_dir():
        raise DKError(
            f"teacher-output store {path} does not exist",
            "check the path, or build it with `dk teacher-outputs build`",
        )
    manifest = read_json(path / MANIFEST)
    if manifest is None:
        if (path / MANIFEST).exists():
            raise _corrupt(path, f"{MANIFEST} is not a JSON object")
        if any(shard_number(p.name) is not None for p in path.iterdir()):
            raise DKError(
                f"teacher-output store {path} is incomplete (no {MANIFEST}; a build was stopped)",
                "rerun `dk teacher-outputs build` (or the run) to finish the missing shards",
            )
        raise DKError(
            f"{path} is not a teacher-output store (no {MANIFEST})",
            "build one with `dk teacher-outputs build`",
        )
    check_manifest(manifest, path)
    return manifest


def _other_data(
    path: Path, manifest: dict[str, Any], dataset: TensorDataset, why: str = ""
) -> DKError:
    return DKError(
        f"teacher-output store {path} was made over other data "
        f"({manifest.get('dataset_name', '?')}, fingerprint "
        f"{str(manifest.get('dataset_fingerprint', '?'))[:12]}) than the transfer set "
        f"{dataset.name} ({dataset.fingerprint()[:12]}){why}",
        _REBUILD,
    )


def _rows_for(
    path: Path, manifest: dict[str, Any], teacher: Teacher, dataset: TensorDataset
) -> torch.Tensor | None:
    """Which store rows serve ``dataset``: None = all, in order (same data); else (N,) row
    numbers.
    """
    if manifest["teacher_fingerprint"] != teacher.fingerprint:
        raise DKError(
            f"teacher-output store {path} was made by another teacher (fingerprint "
            f"{manifest['teacher_fingerprint'][:12]} ≠ {teacher.fingerprint[:12]})",
            "delete the store or set teacher.store to a new path so it is rebuilt",
        )
    if manifest["members"] != len(teacher) or manifest["classes"] != teacher.num_classes:
        raise _corrupt(
            path,
            f"it records {manifest['members']} members × {manifest['classes']} classes for this "
            "teacher's fingerprint",
        )
    if manifest["dataset_fingerprint"] == dataset.fingerprint():
        return None
    if manifest["dataset_name"] != dataset.name or manifest.get("image_shape") != list(
        dataset.images.shape[1:]
    ):
        raise _other_data(path, manifest, dataset)
    # A subset of the stored split: its rows by source index, checked by pixel digests below.
    index = dataset.index.cpu()
    if len(index) == 0 or int(index.min()) < 0:
        raise _other_data(path, manifest, dataset)
    return index  # source indices; mapped to store rows while reading the shards


def _check_options(
    path: Path, manifest: dict[str, Any], options: StoreOptions | None
) -> StoreOptions:
    held = options_of(manifest)
    if options is None:
        return held
    members = manifest["members"]
    same = (held.kind, held.dtype, held.topk, held.temperature) == (
        options.kind,
        options.dtype,
        options.topk,
        options.temperature,
    )
    if same and held.topk is not None and members > 1:
        same = held.combine == options.combine
    if not same:
        raise DKError(
            f"teacher-output store {path} holds {held.describe(members)} but the run asks for "
            f"{options.describe(members)}",
            "set teacher.store_dtype / store_topk / store_temperature (and teacher.combine) to "
            "match it, or point teacher.store at a new directory",
        )
    return held


def _expected_tensors(
    manifest: dict[str, Any], rows: int
) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    dtype = DTYPES[manifest["dtype"]]
    spec = {"index": ((rows,), torch.int64), "row_sha256": ((rows, 32), torch.uint8)}
    if manifest["kind"] == "dense":
        spec["logits"] = ((manifest["members"], rows, manifest["classes"]), dtype)
    else:
        k = manifest["topk"]
        spec.update(
            indices=((rows, k), torch.int32),
            log_probs=((rows, k), dtype),
            tail_log_prob=((rows,), dtype),
        )
    return spec


def _read_shard(
    path: Path,
    manifest: dict[str, Any],
    entry: dict[str, Any],
    local: torch.Tensor | None,
    verify: bool,
) -> dict[str, torch.Tensor]:
    """Shard tensors (all rows, or rows ``local`` of the shard), after the sha256 and layout checks.

    ``safe_open`` maps the file: only this shard's tensors are read into memory.
    """
    file = path / entry["file"]
    try:
        if verify and file_sha256(file) != entry["sha256"]:
            raise _corrupt(path, f"{entry['file']} does not match the sha256 in {MANIFEST}")
        spec = _expected_tensors(manifest, entry["stop"] - entry["start"])
        out = {}
        with safe_open(file, framework="pt") as f:
            if set(f.keys()) != set(spec):
                raise _corrupt(
                    path, f"{entry['file']} holds {sorted(f.keys())}, expected {sorted(spec)}"
                )
            for name, (shape, dtype) in spec.items():
                sl = f.get_slice(name)
                if tuple(sl.get_shape()) != shape or sl.get_dtype() != _SAFETENSORS_DTYPES[dtype]:
                    raise _corrupt(
                        path,
                        f"{entry['file']}: {name} is {sl.get_dtype()} {tuple(sl.get_shape())}, "
                        f"expected {_SAFETENSORS_DTYPES[dtype]} {shape}",
                    )
                t = f.get_tensor(name)
                out[name] = (
                    t if local is None else t.index_select(1 if name == "logits" else 0, local)
                )
        return out
    except FileNotFoundError:
        raise _corrupt(path, f"{entry['file']} is missing") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        if isinstance(exc, DKError):
            raise
        raise _corrupt(path, f"{entry['file']}: {exc.__class__.__name__}") from None


def load_store(
    path: str | Path,
    teacher: Teacher,
    dataset: TensorDataset,
    options: StoreOptions | None = None,
    *,
    verify: bool = True,
) -> Outputs:
    """Stored outputs for ``dataset``, in dataset order; refused if made by another teacher or over
    other data.

    ``options`` (when given) must match what the store holds. ``verify`` checks every shard
    against the sha256 in the manifest as it is read. Shards are read one at a time (mapped, not
    loaded whole), so peak memory is the result plus one shard; float16 values are upcast to
    float32. A single-file store of format 2 (dense float32) is read too.
    """
    path = Path(path)
    if path.is_file():
        return _load_single_file(path, teacher, dataset, options)
    manifest = read_store_manifest(path)
    subset = _rows_for(path, manifest, teacher, dataset)
    held = _check_options(path, manifest, options)
    n = len(dataset)
    shards = manifest["shards"]
    if subset is None:
        if n != manifest["n"]:
            raise _corrupt(path, f"it holds {manifest['n']} rows for a dataset of {n}")
        pieces = [(entry, None, slice(entry["start"], entry["stop"])) for entry in shards]
    else:
        pieces = _subset_pieces(path, manifest, dataset, subset)
    if held.topk is None:
        out = {
            "logits": torch.empty(
                (manifest["members"], n, manifest["classes"]), dtype=torch.float32
            )
        }
    else:
        k = held.topk
        out = {
            "indices": torch.empty((n, k), dtype=torch.int64),
            "log_probs": torch.empty((n, k)),
            "tail_log_prob": torch.empty(n),
        }
    digests = torch.empty((n, 32), dtype=torch.uint8) if subset is not None else None
    expected_index = dataset.index.cpu()
    for entry, local, where in pieces:
        got = _read_shard(path, manifest, entry, local, verify)
        if not torch.equal(got["index"], expected_index[where]):
            raise (
                _corrupt(path, f"{entry['file']} holds other source indices than its rows should")
                if subset is None
                else _other_data(path, manifest, dataset)
            )
        for name, dest in out.items():
            value = got[name].to(dest.dtype)  # float16 → float32, int32 class indices → int64
            if name == "logits":
                dest[:, where] = value
            else:
                dest[where] = value
        if digests is not None:
            digests[where] = got["row_sha256"]
    if digests is not None:
        differ = int((digests != row_digests(dataset.images)).any(dim=1).sum())
        if differ:
            raise _other_data(
                path,
                manifest,
                dataset,
                f"; {differ} of its {n} examples have other pixels than the stored rows",
            )
    if held.topk is None:
        check_finite_outputs(out["logits"], teacher, dataset)
        return out["logits"]
    idx, lp, tail = out["indices"], out["log_probs"], out["tail_log_prob"]
    if (
        int(idx.min()) < 0
        or int(idx.max()) >= manifest["classes"]
        or bool(
            lp.isnan().any()
            | (lp == torch.inf).any()
            | tail.isnan().any()
            | (tail == torch.inf).any()
        )
    ):
        raise _corrupt(path, "top-k class indices out of range or log-probabilities NaN/+inf")
    return TopKTargets(
        idx[None], lp[None], tail[None], held.temperature, manifest["combine"], manifest["members"]
    )


def iter_shards(
    path: str | Path, *, verify: bool = True
) -> Iterator[tuple[dict[str, Any], dict[str, torch.Tensor]]]:
    """``(manifest entry, tensors)`` for each shard of the store at ``path``, one at a time.

    For stores larger than memory: each shard is checked against its sha256 and read through a
    memory map, and nothing of it is kept once the caller drops it. Tensors are as stored (float16
    stays float16; top-k ``indices`` are int32); ``entry`` gives the rows (``start``, ``stop``).
    """
    path = Path(path)
    manifest = read_store_manifest(path)
    for entry in manifest["shards"]:
        yield entry, _read_shard(path, manifest, entry, None, verify)


def _subset_pieces(
    path: Path, manifest: dict[str, Any], dataset: TensorDataset, source_index: torch.Tensor
) -> list[tuple[dict[str, Any], torch.Tensor, torch.Tensor]]:
    """(shard entry, rows to take from the shard, positions they fill in the dataset) per shard.

    Store rows are found by source index: the store's index column is read first (a few bytes
    per row), then each shard gives the rows the dataset needs from it.
    """
    n_store = manifest["n"]
    stored_index = torch.empty(n_store, dtype=torch.int64)
    for entry in manifest["shards"]:
        try:
            with safe_open(path / entry["file"], framework="pt") as f:
                stored_index[entry["start"] : entry["stop"]] = f.get_tensor("index")
        except (SafetensorError, OSError, ValueError, RuntimeError, KeyError) as exc:
            raise _corrupt(path, f"{entry['file']}: {exc.__class__.__name__}") from None
    if int(stored_index.min()) < 0:
        raise _corrupt(path, "negative source indices")
    row_of = torch.full(
        (max(int(stored_index.max()), int(source_index.max())) + 1,), -1, dtype=torch.int64
    )
    row_of[stored_index] = torch.arange(n_store)
    rows = row_of[source_index]
    missing = int((rows < 0).sum())
    if missing:
        raise _other_data(
            path,
            manifest,
            dataset,
            f"; {missing} of its {len(rows)} source indices are not in the store",
        )
    stops = torch.tensor([e["stop"] for e in manifest["shards"]])
    shard_of = torch.searchsorted(stops, rows, right=True)
    pieces = []
    for s, entry in enumerate(manifest["shards"]):
        where = (shard_of == s).nonzero().squeeze(1)
        if len(where):
            pieces.append((entry, rows[where] - entry["start"], where))
    return pieces


def check_finite_outputs(logits: torch.Tensor, teacher: Teacher, dataset: TensorDataset) -> None:
    """DKError naming the first example whose teacher logits are NaN or Inf (a diverged teacher)."""
    finite = torch.isfinite(logits).flatten(start_dim=2).all(dim=2)  # (members, N)
    if bool(finite.all()):
        return
    member, pos = (int(v) for v in (~finite).nonzero()[0])
    count = int((~finite.all(dim=0)).sum())
    raise DKError(
        f"teacher {teacher.sources[member]} outputs non-finite logits for {count} examples of "
        f"{dataset.name}, first at source index {int(dataset.index[pos])}",
        "the teacher checkpoint is broken (it may have diverged); retrain it or pick another",
    )


# ---------------------------------------------------------------- format 2: one file, read only


def _load_single_file(
    path: Path, teacher: Teacher, dataset: TensorDataset, options: StoreOptions | None
) -> torch.Tensor:
    """A format-2 store: one safetensors file of dense float32 logits (members, N, classes)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DKError(
            f"teacher-output store {path} cannot be read "
            f"({exc.strerror or exc.__class__.__name__})",
            "check the path in teacher.store",
        ) from None
    try:
        tensors = st_load(raw)
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + n])
        meta = json.loads((header.get("__metadata__") or {}).get(META_KEY, "{}"))
        if not isinstance(meta, dict):
            raise ValueError("metadata is not a mapping")
    except (SafetensorError, ValueError, AttributeError):
        raise DKError(
            f"teacher.store {path} is a file that is not a teacher-output store",
            "point teacher.store at a new or empty directory (darkknowledge does not touch this "
            "file)",
        ) from None
    if meta.get("format") != LEGACY_FORMAT or "logits" not in tensors or "index" not in tensors:
        raise DKError(
            f"teacher.store {path} is a safetensors file that is not a teacher-output store",
            "point teacher.store at a new or empty directory (darkknowledge does not touch this "
            "file)",
        )
    if options is not None and (options.kind, options.dtype) != ("dense", "float32"):
        raise DKError(
            f"teacher-output store {path} is a single-file store (format 2) of dense float32 "
            f"logits but the run asks for {options.describe(len(teacher))}",
            "point teacher.store at a new directory to build a store with these options",
        )
    if meta.get("teacher_fingerprint") != teacher.fingerprint:
        raise DKError(
            f"teacher-output store {path} was made by another teacher (fingerprint "
            f"{str(meta.get('teacher_fingerprint', '?'))[:12]} ≠ {teacher.fingerprint[:12]})",
            "delete the store or set teacher.store to a new path so it is rebuilt",
        )
    if meta.get("dataset_fingerprint") != dataset.fingerprint():
        raise _other_data(path, meta, dataset)
    logits, index = tensors["logits"], tensors["index"]
    if (
        logits.dtype != torch.float32
        or logits.dim() != 3
        or not torch.equal(index, dataset.index.cpu())
        or logits.shape[1] != len(dataset)
    ):
        raise DKError(
            f"teacher-output store {path} is misaligned with the transfer set",
            "delete it so it is rebuilt",
        )
    check_finite_outputs(logits, teacher, dataset)
    return logits


# ---------------------------------------------------------------- describing a store


def describe_store(path: str | Path) -> str:
    """A few lines about the store at ``path``: complete, partial (a stopped build) or format 2."""
    path = Path(path)
    if path.is_file():
        return _describe_single_file(path)
    if path.is_dir() and not (path / MANIFEST).exists():
        return _describe_partial(path)
    m = read_store_manifest(path)
    opts = options_of(m)
    size = sum(
        (path / e["file"]).stat().st_size for e in m["shards"] if (path / e["file"]).is_file()
    )
    lines = [
        f"teacher-output store {path}: complete ({m['format']})",
        f"  content   {opts.describe(m['members'])}"
        + (" (one combined distribution)" if opts.topk is not None and m["members"] > 1 else ""),
        f"  dataset   {m['dataset_name']}, {m['n']} examples of shape "
        f"{tuple(m.get('image_shape') or ())}, fingerprint {m['dataset_fingerprint'][:16]}",
        f"  teacher   {m['members']} member(s), {m['classes']} classes, fingerprint "
        f"{m['teacher_fingerprint'][:16]}: {', '.join(map(str, m.get('teacher_sources') or []))}",
        f"  shards    {len(m['shards'])} × up to {m['shard_size']} rows, {size / 2**20:.2f} MiB",
    ]
    return "\n".join(lines)


def _describe_partial(path: Path) -> str:
    numbers = sorted({shard_number(p.name) for p in path.iterdir()} - {None})
    sides = [read_json(path / sidecar_name(i)) for i in numbers]
    sides = [s for s in sides if s is not None and isinstance(s.get("key"), dict)]
    if not sides:
        raise DKError(
            f"{path} is not a teacher-output store (no {MANIFEST}, no shards)",
            "build one with `dk teacher-outputs build`",
        )
    key = sides[0]["key"]
    size = sides[0].get("stop", 0) - sides[0].get("start", 0)
    total = len(plan(int(key.get("n", 0)), size)) if isinstance(size, int) and size > 0 else "?"
    done = sum(1 for s in sides if s.get("key") == key)
    return (
        f"teacher-output store {path}: incomplete, {done} of {total} shards built (no {MANIFEST}: "
        "the build was stopped)\n"
        f"  dataset   {key.get('dataset_name')}, {key.get('n')} examples; {key.get('kind')} "
        f"{key.get('dtype')}\n"
        "  rerun `dk teacher-outputs build` with the same arguments to finish it"
    )


def _describe_single_file(path: Path) -> str:
    try:
        raw = path.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + n])
        meta = json.loads((header.get("__metadata__") or {}).get(META_KEY, "{}"))
        shape = header["logits"]["shape"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise DKError(
            f"{path} is not a teacher-output store",
            "give a store directory (or a format-2 store file)",
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != LEGACY_FORMAT:
        raise DKError(
            f"{path} is not a teacher-output store",
            "give a store directory (or a format-2 store file)",
        )
    return (
        f"teacher-output store {path}: single file ({LEGACY_FORMAT}, read only; rebuild as a "
        "directory store for fp16/top-k/sharding)\n"
        f"  content   dense float32 logits {tuple(shape)}\n"
        f"  dataset   {meta.get('dataset_name')}, fingerprint "
        f"{str(meta.get('dataset_fingerprint'))[:16]}\n"
        f"  teacher   fingerprint {str(meta.get('teacher_fingerprint'))[:16]}"
    )
