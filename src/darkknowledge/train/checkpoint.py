"""Training checkpoints: tensors in safetensors, everything else in JSON; written atomically.

A checkpoint is a directory ``checkpoints/step-000001200/`` holding ``model.safetensors``,
``state.safetensors`` (optimizer buffers, RNG states, the epoch's data order) and
``state.json`` (step, epoch, optimizer scalars, fingerprints), plus ``manifest.json`` with the
sha256 of each file. It is written under a temporary name, fsynced, then renamed, so a crash
leaves either the complete new checkpoint or none; the previous ones are kept (``keep``).
A checkpoint whose files do not match its manifest is skipped with a warning naming it.
Nothing here can run code on load: no pickle, only safetensors and JSON.
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

from darkknowledge.errors import DKError, short, writing

PREFIX = "step-"
FORMAT = 2  # 2: an epoch-end checkpoint has step_in_epoch=0 and no data order
FILES = ("model.safetensors", "state.safetensors", "state.json")
STATE_KEYS = (
    "format",
    "epoch",
    "step_in_epoch",
    "global_step",
    "optimizer",
    "config_hash",
    "fingerprints",
)


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


def optimizer_state(
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
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


def restore_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], scalars: dict[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in scalars["state"].items()}
    for key, t in tensors.items():
        if key.startswith("optim/"):
            _, idx, name = key.split("/", 2)
            state.setdefault(int(idx), {})[name] = t
    # The update kernels (foreach / fused) are this machine's choice, not the checkpoint's: a
    # checkpoint written where fused kernels exist resumes where they do not (foreach), and the
    # other way round; older versions wrote foreach on CPU.
    impl = ("foreach", "fused", "capturable")
    groups = [
        {**saved, **{k: cur[k] for k in impl if k in cur}}
        for saved, cur in zip(scalars["param_groups"], optimizer.param_groups, strict=False)
    ]
    groups += scalars["param_groups"][len(groups) :]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(
    root: str | Path,
    step: int,
    model_tensors: dict[str, torch.Tensor],
    state_tensors: dict[str, torch.Tensor],
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write checkpoint ``root/step-<step>`` atomically and prune all but the newest ``keep``.

    An ``OSError`` (disk full, read-only directory) is a :class:`DKError` naming the checkpoint;
    the partial temporary directory is removed and the existing checkpoints are left as they were.
    """
    root = Path(root)
    final = root / f"{PREFIX}{step:09d}"
    tmp = root / f".{final.name}.tmp"
    files = {
        "model.safetensors": st_save(
            {k: v.detach().cpu().contiguous() for k, v in model_tensors.items()}
        ),
        "state.safetensors": st_save(
            {k: v.detach().cpu().contiguous() for k, v in state_tensors.items()}
        ),
        "state.json": json.dumps({"format": FORMAT, **state}, sort_keys=True).encode(),
    }
    manifest = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    with writing(f"checkpoint {final}"):
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(f".{PREFIX}*.tmp"):  # left by a run killed while writing
            shutil.rmtree(stale, ignore_errors=True)
        try:
            tmp.mkdir()
            for name, data in files.items():
                _fsync_write(tmp / name, data)
            _fsync_write(tmp / "manifest.json", json.dumps(manifest, sort_keys=True).encode())
            _fsync_dir(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if final.exists():  # a re-save of the same step: move the old one aside first
            old = root / f".{final.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
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
    fix = "resume from an earlier checkpoint or start a new run"
    if not path.is_dir():
        raise DKError(
            f"checkpoint {path} not found (a checkpoint is a directory checkpoints/step-NNNNNNNNN)",
            "use --resume auto, or give an existing checkpoint directory",
        )
    try:
        manifest = json.loads((path / "manifest.json").read_bytes())
        if not isinstance(manifest, dict):
            raise ValueError("not a mapping")
    except (OSError, ValueError) as exc:
        raise DKError(
            f"checkpoint {path} is incomplete: manifest.json unreadable ({exc.__class__.__name__})",
            fix,
        ) from None
    raw = {}
    for name in FILES:
        f = path / name
        try:
            raw[name] = f.read_bytes()
        except OSError:
            raise DKError(
                f"checkpoint {path} is incomplete: {name} is missing or unreadable", fix
            ) from None
        if hashlib.sha256(raw[name]).hexdigest() != manifest.get(name):
            raise DKError(
                f"checkpoint file {f} is corrupt (sha256 does not match the manifest)", fix
            )
    try:
        out = {
            "model": st_load(raw["model.safetensors"]),
            "tensors": st_load(raw["state.safetensors"]),
            "state": json.loads(raw["state.json"]),
            "path": path,
        }
    except (SafetensorError, ValueError) as exc:
        raise DKError(
            f"checkpoint {path} cannot be parsed ({exc.__class__.__name__}: {exc})", fix
        ) from None
    state = out["state"]
    if not isinstance(state, dict) or any(k not in state for k in STATE_KEYS):
        missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
        raise DKError(
            f"checkpoint file {path / 'state.json'} lacks {', '.join(missing)}",
            "it was not written by this version of darkknowledge; start a new run",
        )
    if state["format"] != FORMAT:
        raise DKError(
            f"checkpoint {path} has format {short(state['format'])}, this darkknowledge reads "
            f"format {FORMAT}",
            "start a new run (or resume with the darkknowledge version that wrote it)",
        )
    bad = _invalid_state_field(state)
    if bad is not None:
        raise DKError(
            f"checkpoint file {path / 'state.json'}: {bad}",
            "it was edited or not written by darkknowledge; resume from another checkpoint or "
            "start a new run",
        )
    return out


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _count_or_none(v: Any) -> bool:
    return (
        v is None or _count(v) or (isinstance(v, list) and all(x is None or _count(x) for x in v))
    )


def _invalid_state_field(state: dict[str, Any]) -> str | None:
    """What is wrong with ``state.json``'s fields (types and ranges), or None: every field is
    checked before anything reads it, so a forged file is refused whole, never half-used."""
    for key in ("epoch", "step_in_epoch", "global_step"):
        if not _count(state[key]):
            return f"{key} must be a count (an integer >= 0), got {short(state[key])}"
    opt = state["optimizer"]
    if (
        not isinstance(opt, dict)
        or not isinstance(opt.get("param_groups", []), list)
        or not all(isinstance(g, dict) for g in opt.get("param_groups", []))
        or not isinstance(opt.get("state", {}), dict)
    ):
        return (
            "optimizer must be a mapping (param_groups: a list of mappings, state: a mapping), "
            f"got {short(opt)}"
        )
    if not isinstance(state["config_hash"], str):
        return f"config_hash must be a string, got {short(state['config_hash'])}"
    fp = state["fingerprints"]
    if not isinstance(fp, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in fp.items()
    ):
        return f"fingerprints must map names to strings, got {short(fp)}"
    if "world_size" in state and not (_count(state["world_size"]) and state["world_size"] >= 1):
        return f"world_size must be a positive integer, got {short(state['world_size'])}"
    best = state.get("best")
    if best is not None and (
        not isinstance(best, dict)
        or set(best) - {"errors", "epoch"}
        or not all(_count_or_none(best.get(k)) for k in ("errors", "epoch"))
    ):
        return f"best must be {{errors, epoch}} with counts or null, got {short(best)}"
    secs = state.get("train_seconds")
    if secs is not None and (
        isinstance(secs, bool) or not isinstance(secs, (int, float)) or not 0 <= secs < float("inf")
    ):
        return f"train_seconds must be a number of seconds >= 0, got {short(secs)}"
    return None


def latest_checkpoint(root: str | Path) -> dict[str, Any] | None:
    """The newest checkpoint that verifies; broken newer ones are skipped with a warning."""
    for path in reversed(list_checkpoints(root)):
        try:
            return read_checkpoint(path)
        except DKError as exc:
            warnings.warn(f"skipping checkpoint: {exc}", stacklevel=2)
    return None
