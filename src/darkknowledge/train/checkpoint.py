"""Training checkpoints: tensors in safetensors, everything else in JSON; written atomically.

A checkpoint is a directory ``checkpoints/step-000001200/`` holding ``model.safetensors``,
``state.safetensors`` (optimizer buffers, RNG states, the epoch's data order) and
``state.json`` (step, epoch, optimizer scalars, fingerprints), plus ``manifest.json`` with the
sha256 of each file. It is written under a temporary name, fsynced, then renamed, so a crash
leaves either the complete new checkpoint or none; the previous ones are kept (``keep``).
A checkpoint whose files do not match its manifest is skipped with a warning naming it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from darkknowledge.errors import DKError

PREFIX = "step-"


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors and JSON-able scalars."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {"param_groups": sd["param_groups"], "state": {}}
    for idx, st in sd["state"].items():
        scalars["state"][str(idx)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim/{idx}/{k}"] = v.detach().cpu().contiguous()
            else:
                scalars["state"][str(idx)][k] = v
    return tensors, scalars


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in scalars["state"].items()}
    for key, t in tensors.items():
        if key.startswith("optim/"):
            _, idx, name = key.split("/", 2)
            state.setdefault(int(idx), {})[name] = t
    optimizer.load_state_dict({"state": state, "param_groups": scalars["param_groups"]})


def save_checkpoint(root: str | Path, step: int, model_tensors: dict[str, torch.Tensor], state_tensors: dict[str, torch.Tensor], state: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint ``root/step-<step>`` atomically and prune all but the newest ``keep``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:09d}"
    tmp = root / f".{final.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    files = {
        "model.safetensors": st_save({k: v.detach().cpu().contiguous() for k, v in model_tensors.items()}),
        "state.safetensors": st_save({k: v.detach().cpu().contiguous() for k, v in state_tensors.items()}),
        "state.json": json.dumps(state, sort_keys=True).encode(),
    }
    for name, data in files.items():
        _fsync_write(tmp / name, data)
    manifest = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    _fsync_write(tmp / "manifest.json", json.dumps(manifest, sort_keys=True).encode())
    _fsync_dir(tmp)
    if final.exists():  # a re-save of the same step (e.g. after an interrupt): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and verify one checkpoint; any missing or mismatching file is a :class:`DKError`."""
    path = Path(path)
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise DKError(f"checkpoint {path} is incomplete: manifest.json unreadable ({exc.__class__.__name__})", "resume from an earlier checkpoint or start a new run") from None
    raw = {}
    for name in ("model.safetensors", "state.safetensors", "state.json"):
        f = path / name
        if not f.is_file():
            raise DKError(f"checkpoint {path} is incomplete: {name} is missing", "resume from an earlier checkpoint or start a new run")
        raw[name] = f.read_bytes()
        if hashlib.sha256(raw[name]).hexdigest() != manifest.get(name):
            raise DKError(f"checkpoint file {f} is corrupt (sha256 does not match the manifest)", "resume from an earlier checkpoint or start a new run")
    try:
        return {
            "model": st_load(raw["model.safetensors"]),
            "tensors": st_load(raw["state.safetensors"]),
            "state": json.loads(raw["state.json"]),
            "path": path,
        }
    except (SafetensorError, ValueError) as exc:
        raise DKError(f"checkpoint {path} cannot be parsed ({exc})", "resume from an earlier checkpoint or start a new run") from None


def latest_checkpoint(root: str | Path) -> dict[str, Any] | None:
    """The newest checkpoint that verifies; broken newer ones are skipped with a warning."""
    for path in reversed(list_checkpoints(root)):
        try:
            return read_checkpoint(path)
        except DKError as exc:
            warnings.warn(f"skipping checkpoint: {exc}", stacklevel=2)
    return None
