"""From a validated config to a finished run directory (``dk train`` and ``dk distill``).

Everything that can be checked is checked before the run directory is touched: method, model
and dataset names, teacher checkpoints, class counts, labels, the resume state. A run
directory then holds ``config.yaml`` (resolved), ``metrics.jsonl``, ``checkpoints/``, and at
the end ``model.safetensors`` and ``summary.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from darkknowledge.config import DataConfig, RunConfig, dump_config
from darkknowledge.data import (
    TensorDataset,
    atomic_write_bytes,
    datasets,
    keep_classes,
    omit_classes,
    stratified_fraction,
    train_validation_split,
    unlabelled,
)
from darkknowledge.errors import DKError, writing
from darkknowledge.methods import build_method
from darkknowledge.models import MODEL_FILE, build_model, save_model
from darkknowledge.teachers import Teacher, compute_teacher_logits, store_options, teacher_outputs
from darkknowledge.train.checkpoint import latest_checkpoint, list_checkpoints, read_checkpoint
from darkknowledge.train.evaluate import evaluate
from darkknowledge.train.loop import FitInputs, check_resumable, fit
from darkknowledge.train.signals import Interrupted, StopRequest, stop_on_signals


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DKError(f"device {name!r} is not a device name", "use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DKError(f"device {name!r} requested but CUDA is not available", "use device=cpu or device=auto")
    return device


@dataclass
class Splits:
    train: TensorDataset  # the transfer set (after omit/keep/fraction/unlabelled)
    valid: TensorDataset | None
    test: TensorDataset


def prepare_data(cfg: DataConfig) -> Splits:
    """Load the source, carve validation (before any class is omitted), build the transfer set."""
    loader = datasets.get(cfg.dataset)
    train, test = loader("train"), loader("test")
    if cfg.train_size is not None and cfg.train_size < len(train):
        _, train = train_validation_split(train, cfg.train_size, seed=12345)
    if cfg.test_size is not None and cfg.test_size < len(test):
        test = test.subset(torch.arange(cfg.test_size))
    valid = None
    if cfg.validation_size:
        train, valid = train_validation_split(train, cfg.validation_size, seed=0)
    if cfg.omit_classes:
        train = omit_classes(train, cfg.omit_classes)
    if cfg.keep_classes:
        train = keep_classes(train, cfg.keep_classes)
    if cfg.fraction < 1.0:
        train = stratified_fraction(train, cfg.fraction, seed=0)
    if cfg.unlabelled:
        train = unlabelled(train)
    return Splits(train, valid, test)


def _check_resume(run_dir: Path, resume: str) -> dict[str, Any] | None:
    """The checkpoint to resume from (verified), or None to start fresh."""
    if resume == "never":
        if list_checkpoints(run_dir / "checkpoints") or (run_dir / MODEL_FILE).exists():
            raise DKError(f"run directory {run_dir} already holds a run", "continue it with --resume auto, or choose a new run_dir")
        return None
    if resume == "auto":
        ckpt = latest_checkpoint(run_dir / "checkpoints")
        if ckpt is None and list_checkpoints(run_dir / "checkpoints"):
            raise DKError(f"no checkpoint in {run_dir / 'checkpoints'} is intact", "start a new run_dir")
        if ckpt is None and (run_dir / MODEL_FILE).exists():
            raise DKError(f"run directory {run_dir} holds a model but no checkpoint to resume from", "choose a new run_dir (or delete this one to retrain)")
        return ckpt
    return read_checkpoint(resume)


def _check_same_run(cfg: RunConfig, ckpt: dict[str, Any], fingerprints: dict[str, str]) -> None:
    state = ckpt["state"]
    if state.get("config_hash") != cfg.hash():
        raise DKError(f"checkpoint {ckpt['path']} was made with a different config", "resume with the config in the run directory (config.yaml), or start a new run_dir")
    for key, value in fingerprints.items():
        if (state.get("fingerprints") or {}).get(key) != value:
            raise DKError(f"checkpoint {ckpt['path']}: the {key} fingerprint differs from this run's", f"the {key} changed since the run started; start a new run_dir")


def _finished_summary(cfg: RunConfig, run_dir: Path, ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """The saved summary of a run that already finished (its final checkpoint, model and summary exist)."""
    state = ckpt["state"]
    if state["epoch"] != cfg.optim.epochs or state["step_in_epoch"] != 0 or not (run_dir / MODEL_FILE).is_file():
        return None
    try:
        summary = json.loads((run_dir / "summary.json").read_bytes())
    except (OSError, ValueError):
        return None  # killed before the summary was written: finish the run (evaluate, save)
    if not isinstance(summary, dict) or summary.get("config_hash") != cfg.hash() or summary.get("steps") != state["global_step"]:
        return None
    return summary


def run(cfg: RunConfig, kind: str = "train", resume: str = "never") -> dict[str, Any]:
    """Validate, train and save. ``kind`` is ``train`` (teacher / hard-label) or ``distill``.

    ``resume``: ``never`` (the run directory must not hold a run), ``auto`` (continue from the
    newest intact checkpoint in ``run_dir``; start fresh when there is none; a run that already
    finished is not retrained: its ``summary.json`` is returned and no file is touched), or the
    path of one checkpoint directory. Restoring is all-or-nothing: a checkpoint made with another
    config, teacher or data, or missing any part, is a :class:`DKError` naming it.

    SIGTERM/SIGINT during the run: the current step finishes, a checkpoint is written and
    :class:`~darkknowledge.train.signals.Interrupted` is raised (``dk`` exits 128 + signum).
    """
    if kind not in ("train", "distill"):
        raise DKError(f"run kind {kind!r} is unknown", "use train or distill")
    if isinstance(resume, os.PathLike):
        resume = os.fspath(resume)
    if not isinstance(resume, str) or not resume:
        raise DKError(f"resume={resume!r} is invalid", "use never, auto or a checkpoint directory")
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        with stop_on_signals() as stop:
            return _run(cfg, kind, resume, stop)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)


def _stop_if_requested(stop: StopRequest) -> None:
    """Between the (possibly long) preparation phases: a signal that arrived stops the run now."""
    if stop.requested:
        raise Interrupted(stop.signum, None)


def _run(cfg: RunConfig, kind: str, resume: str, stop: StopRequest) -> dict[str, Any]:
    started = time.perf_counter()
    method = build_method(cfg.method["name"], {k: v for k, v in cfg.method.items() if k != "name"})
    if kind == "distill" and not method.needs_teacher:
        raise DKError(f"dk distill needs a distillation method, got method.name={cfg.method['name']}", "use soft_targets or logit_matching (or `dk train` for hard labels)")
    if kind == "train" and method.needs_teacher:
        raise DKError(f"method {cfg.method['name']} needs a teacher", "use `dk distill` with teacher.checkpoints=[...]")
    if method.needs_teacher and not cfg.teacher.checkpoints:
        raise DKError(f"method {cfg.method['name']} needs a teacher but teacher.checkpoints is empty", "set teacher.checkpoints=[path/to/teacher_run]")
    if method.needs_teacher and cfg.data.jitter and cfg.teacher.outputs == "precompute":
        raise DKError("data.jitter>0 with teacher.outputs=precompute: stored teacher outputs are for un-jittered inputs", "set teacher.outputs=live, or data.jitter=0 (the paper's student uses no jitter)")
    device = resolve_device(cfg.device)
    if cfg.deterministic:
        if device.type == "cuda":  # cuBLAS is only deterministic with a fixed workspace
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False

    splits = prepare_data(cfg.data)
    _stop_if_requested(stop)
    train = splits.train
    if len(train) == 0:
        raise DKError("the transfer set is empty", "check data.omit_classes / keep_classes / fraction")
    if method.needs_labels() and train.labels is None:
        fix = "set data.unlabelled=false" + (", or method.hard_weight=0" if hasattr(method, "hard_weight") else "")
        raise DKError(f"method {cfg.method['name']} needs labels but the transfer set is unlabelled", fix)
    if train.labels is not None and len(torch.unique(train.labels)) < 2 and not method.needs_teacher:
        raise DKError(f"the transfer set holds a single class ({int(train.labels[0])}); hard-label training cannot learn from it", "keep at least two classes")
    in_features = train.images[0].numel()

    teacher = None
    if method.needs_teacher:
        teacher = Teacher.from_checkpoints(cfg.teacher.checkpoints, device)
        if teacher.num_classes != train.num_classes or teacher.in_features != in_features:
            raise DKError(
                f"teacher predicts {teacher.num_classes} classes from {teacher.in_features} inputs but {cfg.data.dataset} has {train.num_classes} classes and {in_features} inputs",
                "distill from a teacher trained on the same dataset",
            )
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model["name"], {k: v for k, v in cfg.model.items() if k != "name"}, in_features, train.num_classes)
    fingerprints = {"dataset": train.fingerprint()}
    if teacher is not None:
        fingerprints["teacher"] = teacher.fingerprint

    run_dir = Path(cfg.run_dir)
    ckpt = _check_resume(run_dir, resume)
    if ckpt is not None:
        _check_same_run(cfg, ckpt, fingerprints)
        check_resumable(cfg, ckpt, model, len(train), device)
        finished = _finished_summary(cfg, run_dir, ckpt)
        if finished is not None:
            return finished

    train = train.to(device)
    eval_sets = {name: ds.to(device) for name, ds in (("valid", splits.valid), ("test", splits.test)) if ds is not None}
    teacher_logits, eval_teacher = None, {}
    if teacher is not None:
        if cfg.teacher.outputs == "precompute":
            teacher_logits = teacher_outputs(teacher, train, cfg.teacher.store, store_options(cfg.teacher, method)).to(device)
        eval_teacher = {name: compute_teacher_logits(teacher, ds) for name, ds in eval_sets.items()}
    _stop_if_requested(stop)

    created = not run_dir.exists()
    try:
        with writing(run_dir / "config.yaml"):
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(run_dir / "config.yaml", dump_config(cfg).encode())
    except DKError:
        if created:  # leave no empty run directory behind
            with contextlib.suppress(OSError):
                run_dir.rmdir()
        raise
    model = model.to(device)
    inputs = FitInputs(model, method, train, device, teacher, teacher_logits, eval_sets, eval_teacher, fingerprints)
    history = fit(cfg, inputs, run_dir, resume=ckpt, stop=stop)

    final = {name: evaluate(model, ds, eval_teacher.get(name)) for name, ds in eval_sets.items()}
    with writing(run_dir / MODEL_FILE):
        save_model(model, run_dir / MODEL_FILE)
    summary = {
        "kind": kind,
        "method": cfg.method["name"],
        "eval": final,
        "epochs": history["epochs"],
        "best_epoch": history["best_epoch"],
        "steps": history["steps"],
        "train_seconds": history["train_seconds"],
        "wall_seconds": time.perf_counter() - started,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "seed": cfg.seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "transfer_set": {"name": train.name, "size": len(train)},
        "config_hash": cfg.hash(),
        "fingerprints": fingerprints,
    }
    with writing(run_dir / "summary.json"):
        atomic_write_bytes(run_dir / "summary.json", json.dumps(summary, indent=2).encode())
    return summary
