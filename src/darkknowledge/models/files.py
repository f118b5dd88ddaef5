"""Self-describing model files: weights in safetensors, the model config in its metadata.

No pickle: a model file holds tensors and a JSON string, nothing that can run code on load.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from darkknowledge.errors import DKError
from darkknowledge.models.base import build_model, model_config

MODEL_FILE = "model.safetensors"


def resolve_model_path(path: str | Path) -> Path:
    """A model file, or a run directory holding ``model.safetensors``."""
    p = Path(path)
    if p.is_dir():
        p = p / MODEL_FILE
    if not p.is_file():
        raise DKError(f"model checkpoint {path} not found", "give a model.safetensors file or a finished run directory (train it first with `dk train`)")
    return p


def model_bytes(model: nn.Module) -> bytes:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    return st_save(tensors, metadata={"darkknowledge.model": json.dumps(model_config(model), sort_keys=True)})


def save_model(model: nn.Module, path: str | Path) -> Path:
    from darkknowledge.data import atomic_write_bytes

    path = Path(path)
    atomic_write_bytes(path, model_bytes(model))
    return path


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model from a model file; corrupt or foreign files are a :class:`DKError`."""
    p = resolve_model_path(path)
    raw = p.read_bytes()
    try:
        tensors = st_load(raw)
        meta = _metadata(raw)
    except (SafetensorError, ValueError, json.JSONDecodeError) as exc:
        raise DKError(f"model checkpoint {p} is corrupt or not a darkknowledge model file ({exc})", "re-create it with `dk train`, or point at another file") from None
    if "darkknowledge.model" not in meta:
        raise DKError(f"model checkpoint {p} has no darkknowledge model config", "save models with darkknowledge (dk train / dk distill)")
    cfg = json.loads(meta["darkknowledge.model"])
    model = build_model(cfg["name"], cfg["params"], cfg["in_features"], cfg["num_classes"])
    missing, unexpected = set(model.state_dict()) - set(tensors), set(tensors) - set(model.state_dict())
    if missing or unexpected:
        raise DKError(f"model checkpoint {p} does not match its config (missing {sorted(missing)}, unexpected {sorted(unexpected)})", "re-create the checkpoint")
    model.load_state_dict(tensors)
    return model.to(map_location)


def _metadata(raw: bytes) -> dict[str, str]:
    if len(raw) < 8:
        raise ValueError("file too short")
    n = int.from_bytes(raw[:8], "little")
    if n > len(raw) - 8:
        raise ValueError("header length beyond end of file")
    header = json.loads(raw[8 : 8 + n])
    return header.get("__metadata__", {}) or {}


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over the model config and every weight's bytes (device-independent)."""
    h = hashlib.sha256(json.dumps(model_config(model), sort_keys=True).encode())
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()
