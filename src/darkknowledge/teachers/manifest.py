"""The teacher-output store format: options, the build key, file names, manifest and sidecars.

A store is a directory::

    manifest.json            written last, only when every shard is built and verified
    shard-00000.safetensors  rows [0, S) of the transfer set
    shard-00000.json         sidecar: the build key, row range and sha256 of the shard file
    shard-00001.safetensors  rows [S, 2S) ...

Everything is safetensors or JSON; nothing is ever unpickled. See docs/performance.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from darkknowledge.data import TensorDataset
from darkknowledge.errors import DKError
from darkknowledge.losses._checks import COMBINES
from darkknowledge.teachers.ensemble import Teacher

FORMAT = "darkknowledge.teacher_outputs/3"
SHARD_FORMAT = "darkknowledge.teacher_outputs.shard/3"
META_KEY = "darkknowledge.teacher_outputs"
MANIFEST = "manifest.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16}
SHARD_BYTES = 256 * 2**20  # default shard size: about this many bytes per shard file
ROW_DIGEST = "sha256 of each example's uint8 pixels"
_SHARD_FILE = re.compile(r"^shard-(\d{5,})\.(safetensors|json)$")


@dataclass(frozen=True)
class StoreOptions:
    """What a store holds and how it is laid out.

    Attributes:
        dtype: ``float32`` or ``float16`` (stored values; always float32 once loaded).
        topk: None for dense logits (serve every temperature), or k for top-k + tail at
        ``temperature``.
        temperature: the temperature of a top-k store; must be None for a dense one.
        combine: how a top-k store combines ensemble members (ignored for dense stores and one
        teacher).
        shard_size: rows per shard; None = about 256 MiB per shard (or the size of a partial build
        found).
    """

    dtype: str = "float32"
    topk: int | None = None
    temperature: float | None = None
    combine: str = "arithmetic"
    shard_size: int | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise DKError(
                f"teacher-output store dtype {self.dtype!r} is unknown", "choose float32 or float16"
            )
        if self.topk is not None and (
            isinstance(self.topk, bool) or not isinstance(self.topk, int) or self.topk < 1
        ):
            raise DKError(
                f"teacher-output store top-k {self.topk!r} must be a positive integer",
                "use e.g. topk=5, or none for dense logits",
            )
        if self.topk is None and self.temperature is not None:
            raise DKError(
                f"a dense teacher-output store has no temperature (got {self.temperature})",
                "drop the temperature: dense logits serve every temperature",
            )
        if self.topk is not None:
            t = self.temperature
            if (
                isinstance(t, bool)
                or not isinstance(t, (int, float))
                or not math.isfinite(t)
                or t <= 0
            ):
                raise DKError(
                    f"a top-k teacher-output store needs a temperature > 0, got {t!r}",
                    "give the temperature the students will use, e.g. 20",
                )
            object.__setattr__(self, "temperature", float(t))
        if self.combine not in COMBINES:
            raise DKError(
                f"teacher-output store combine {self.combine!r} is unknown",
                "choose arithmetic or geometric",
            )
        if self.shard_size is not None and (
            isinstance(self.shard_size, bool)
            or not isinstance(self.shard_size, int)
            or self.shard_size < 1
        ):
            raise DKError(
                f"teacher-output store shard size {self.shard_size!r} must be a positive integer",
                "use a row count, or none for about 256 MiB per shard",
            )

    @property
    def kind(self) -> str:
        return "dense" if self.topk is None else "topk"

    def describe(self, members: int = 1) -> str:
        if self.topk is None:
            return f"dense {self.dtype} logits"
        how = f", {self.combine} mean of {members} members" if members > 1 else ""
        return f"top-{self.topk} {self.dtype} log-probabilities at T={self.temperature:g}{how}"

    def tag(self, members: int = 1) -> str:
        """Short name of the content options, part of the default store directory name."""
        if self.topk is None:
            return f"dense-{self.dtype}"
        combine = f"-{self.combine}" if members > 1 else ""
        return f"top{self.topk}-T{self.temperature!r}{combine}-{self.dtype}"


def store_key(teacher: Teacher, dataset: TensorDataset, options: StoreOptions) -> dict[str, Any]:
    """Everything that determines a store's content: two builds with equal keys are
    interchangeable.
    """
    members = len(teacher)
    return {
        "format": FORMAT,
        "teacher_fingerprint": teacher.fingerprint,
        "members": members,
        "classes": teacher.num_classes,
        "dataset_fingerprint": dataset.fingerprint(),
        "dataset_name": dataset.name,
        "n": len(dataset),
        "image_shape": list(dataset.images.shape[1:]),
        "kind": options.kind,
        "dtype": options.dtype,
        "topk": options.topk,
        "temperature": options.temperature,
        "combine": options.combine if options.topk is not None and members > 1 else None,
    }


def options_of(key: dict[str, Any]) -> StoreOptions:
    """The content options recorded in a build key or manifest."""
    return StoreOptions(
        dtype=key["dtype"],
        topk=key["topk"],
        temperature=key["temperature"],
        combine=key["combine"] or "arithmetic",
    )


def auto_shard_size(key: dict[str, Any]) -> int:
    """Rows per shard for about :data:`SHARD_BYTES` per shard file."""
    item = DTYPES[key["dtype"]].itemsize
    if key["kind"] == "dense":
        per_row = key["members"] * key["classes"] * item
    else:
        per_row = key["topk"] * (item + 4) + item
    per_row += 8 + 32  # source index + row digest
    return max(1, min(key["n"], SHARD_BYTES // per_row))


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


def sidecar_name(i: int) -> str:
    return f"shard-{i:05d}.json"


LOCK_NAME = ".store.lock"  # the builders' lock, inside the store it locks


def is_store_file(name: str) -> bool:
    """A file a store directory may hold (its own temporaries and lock included)."""
    if name in (MANIFEST, LOCK_NAME) or _SHARD_FILE.match(name):
        return True
    return name.startswith((".shard-", f".{MANIFEST}.")) and name.endswith(".tmp")


def shard_number(name: str) -> int | None:
    m = _SHARD_FILE.match(name)
    return int(m.group(1)) if m else None


def plan(n: int, shard_size: int) -> list[tuple[int, int]]:
    """Row ranges ``[(start, stop), ...]`` of the shards of an ``n``-row store."""
    return [(start, min(n, start + shard_size)) for start in range(0, n, shard_size)]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def row_digests(images: torch.Tensor) -> torch.Tensor:
    """(N, 32) uint8: the sha256 of each example's pixels, to prove a transfer set's rows are the
    stored ones.
    """
    rows = images.detach().cpu().contiguous().numpy()
    joined = b"".join(hashlib.sha256(row).digest() for row in rows)
    return torch.frombuffer(bytearray(joined), dtype=torch.uint8).reshape(len(rows), 32)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None when the file is missing, unreadable or not a JSON
    object.
    """
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def dump_json(data: dict[str, Any]) -> bytes:
    """Reproducible JSON bytes (sorted keys): equal content gives equal files."""
    return (json.dumps(data, sort_keys=True, indent=1) + "\n").encode()


def check_manifest(manifest: dict[str, Any], where: Path) -> None:
    """DKError unless ``manifest`` is a complete, well-formed format-3 manifest."""

    def bad(what: str) -> DKError:
        return DKError(
            f"teacher-output store {where} is corrupt ({MANIFEST}: {what})",
            "delete it; it is rebuilt from the teacher",
        )

    if manifest.get("format") != FORMAT:
        raise DKError(
            f"teacher-output store {where} is not a darkknowledge store (format "
            f"{str(manifest.get('format'))[:60]!r})",
            "delete it or point teacher.store elsewhere",
        )
    if manifest.get("complete") is not True:
        raise DKError(
            f"teacher-output store {where} is incomplete",
            "rerun `dk teacher-outputs build` (or the run) to finish it",
        )
    ints = ("members", "classes", "n", "shard_size")
    if any(
        isinstance(manifest.get(k), bool) or not isinstance(manifest.get(k), int) or manifest[k] < 1
        for k in ints
    ):
        raise bad(f"{', '.join(ints)} must be positive integers")
    if not all(
        isinstance(manifest.get(k), str)
        for k in ("teacher_fingerprint", "dataset_fingerprint", "dataset_name")
    ):
        raise bad("fingerprints and dataset name must be strings")
    if manifest.get("kind") not in ("dense", "topk") or manifest.get("dtype") not in DTYPES:
        raise bad(f"kind {manifest.get('kind')!r} / dtype {manifest.get('dtype')!r} are unknown")
    try:
        opts = options_of(manifest)
    except (DKError, KeyError) as exc:
        raise bad(f"options are invalid ({exc})") from None
    if opts.kind != manifest["kind"] or (opts.topk is not None and opts.topk > manifest["classes"]):
        raise bad("kind and top-k disagree")
    shards = manifest.get("shards")
    if not isinstance(shards, list) or len(shards) != len(
        plan(manifest["n"], manifest["shard_size"])
    ):
        raise bad("the shard list does not cover the rows")
    for i, (entry, (start, stop)) in enumerate(
        zip(shards, plan(manifest["n"], manifest["shard_size"]), strict=True)
    ):
        if (
            not isinstance(entry, dict)
            or entry.get("file") != shard_name(i)
            or entry.get("start") != start
            or entry.get("stop") != stop
        ):
            raise bad(f"shard {i} should be {shard_name(i)} with rows [{start}, {stop})")
        if not isinstance(entry.get("sha256"), str) or not re.fullmatch(
            r"[0-9a-f]{64}", entry["sha256"]
        ):
            raise bad(f"shard {i} has no sha256")
