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

from darkknowledge.errors import DKError, short
from darkknowledge.models.base import build_model, model_config

MODEL_FILE = "model.safetensors"


def resolve_model_path(path: str | Path) -> Path:
    """A model file, or a run directory holding ``model.safetensors``."""
    p = Path(path)
    for folder, first in (("replicas", 0), ("generations", 1)):
        if p.is_dir() and not (p / MODEL_FILE).exists() and (p / folder).is_dir():
            raise DKError(
                f"{path} holds several models ({folder}/<k>), not one",
                f"give one of them, e.g. {p / folder / str(first)}; such a run directory serves "
                f"whole as a teacher (--teacher {path}) and in dk eval",
            )
    if p.is_dir():
        p = p / MODEL_FILE
    if not p.is_file():
        raise DKError(
            f"model checkpoint {path} not found",
            "give a model.safetensors file or a finished run directory (train it first with `dk "
            "train`)",
        )
    return p


DIGEST_KEY = "tensors_sha256"  # in the model config JSON of the file's metadata


def model_bytes(model: nn.Module) -> bytes:
    """The model file: its tensors, its config and the sha256 of its tensor bytes (checked by
    :func:`load_model`, so one flipped bit in the weights is found, not distilled from)."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    config = model_config(model)
    digest = hashlib.sha256(
        _tensor_bytes(st_save(tensors, metadata={"darkknowledge.model": "{}"}))
    ).hexdigest()  # the layout does not depend on the metadata
    # one metadata key (safetensors writes several in no fixed order): the file's bytes stay
    # deterministic
    return st_save(
        tensors,
        metadata={
            "darkknowledge.model": json.dumps({**config, DIGEST_KEY: digest}, sort_keys=True)
        },
    )


def _tensor_bytes(raw: bytes) -> bytes:
    """A safetensors file's data section (everything after its header)."""
    return raw[8 + int.from_bytes(raw[:8], "little") :]


def save_model(model: nn.Module, path: str | Path) -> Path:
    from darkknowledge.data import atomic_write_bytes

    path = Path(path)
    atomic_write_bytes(path, model_bytes(model))
    return path


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model from a model file; corrupt or foreign files are a :class:`DKError`.

    Only safetensors is read (never pickle), so a hostile file cannot run code here.
    """
    p = resolve_model_path(path)
    fix = "re-create it with `dk train`, or point at another file"
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise DKError(
            f"model checkpoint {p} cannot be read ({exc.strerror or exc.__class__.__name__})",
            "check the path and its permissions",
        ) from None
    try:
        tensors = st_load(raw)
        meta = _metadata(raw)
        cfg = json.loads(meta["darkknowledge.model"]) if "darkknowledge.model" in meta else None
    except (SafetensorError, ValueError) as exc:
        raise DKError(
            f"model checkpoint {p} is corrupt or not a darkknowledge model file "
            f"({exc.__class__.__name__}: {exc})",
            fix,
        ) from None
    if cfg is None:
        raise DKError(
            f"model checkpoint {p} has no darkknowledge model config",
            "save models with darkknowledge (dk train / dk distill)",
        )
    # files written before digests existed have none
    digest = cfg.get(DIGEST_KEY) if isinstance(cfg, dict) else None
    if digest is not None and hashlib.sha256(_tensor_bytes(raw)).hexdigest() != digest:
        raise DKError(
            f"model checkpoint {p} is corrupt: its weights do not match the sha256 they were saved "
            "with",
            fix,
        )
    if (
        not isinstance(cfg, dict)
        or not isinstance(cfg.get("name"), str)
        or not isinstance(cfg.get("params"), dict)
        or any(
            isinstance(cfg.get(k), bool) or not isinstance(cfg.get(k), int) or cfg.get(k) < 1
            for k in ("in_features", "num_classes")
        )
    ):
        raise DKError(f"model checkpoint {p} has a malformed model config {short(cfg)}", fix)
    try:  # the config is checked (and bounded) before anything is allocated
        model = build_model(cfg["name"], cfg["params"], cfg["in_features"], cfg["num_classes"])
    except DKError as exc:
        raise DKError(
            f"model checkpoint {p} describes a model that cannot be built: {exc}"
        ) from None
    expected = model.state_dict()
    missing, unexpected = set(expected) - set(tensors), set(tensors) - set(expected)
    if missing or unexpected:
        raise DKError(
            f"model checkpoint {p} does not match its config (missing {sorted(missing)}, "
            f"unexpected {sorted(unexpected)})",
            "re-create the checkpoint",
        )
    for k, v in expected.items():
        if tensors[k].shape != v.shape or tensors[k].dtype != v.dtype:
            raise DKError(
                f"model checkpoint {p}: {k} is {tensors[k].dtype} {tuple(tensors[k].shape)} but "
                f"its config needs {v.dtype} {tuple(v.shape)}",
                "re-create the checkpoint",
            )
    model.load_state_dict(tensors)
    return model.to(map_location)


def _metadata(raw: bytes) -> dict[str, str]:
    if len(raw) < 8:
        raise ValueError("file too short")
    n = int.from_bytes(raw[:8], "little")
    if n > len(raw) - 8:
        raise ValueError("header length beyond end of file")
    header = json.loads(raw[8 : 8 + n])
    meta = (header.get("__metadata__") if isinstance(header, dict) else None) or {}
    if not isinstance(meta, dict):
        raise ValueError("metadata is not a mapping")
    return meta


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over the model config and every weight's bytes (device-independent)."""
    h = hashlib.sha256(json.dumps(model_config(model), sort_keys=True).encode())
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()
