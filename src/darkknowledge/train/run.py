"""From a validated config to a finished run directory (``dk train`` and ``dk distill``).

Everything that can be checked is checked before the run directory is touched: method, model
and dataset names, teacher checkpoints, class counts, labels, the resume state. A run
directory then holds ``config.yaml`` (resolved), ``metrics.jsonl``, ``checkpoints/``, and at
the end ``model.safetensors`` and ``summary.json``. A replicated run (``replicas``, K models
trained as one batched computation) writes each model with its own ``config.yaml`` (the ordinary
run it stands for) and ``summary.json`` under ``replicas/<k>/``, and an overall ``summary.json``.

Under ``torchrun`` (WORLD_SIZE > 1) every process runs this same function: the student is wrapped
in DDP by the loop, each process trains on its slice of every global batch, and only rank 0
writes files (docs/performance.md).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

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
from darkknowledge.methods import build_method, methods
from darkknowledge.methods.base import labels_optional
from darkknowledge.methods.binding import BoundMethod
from darkknowledge.models import MODEL_FILE, BatchedMLP, batchable, build_model, save_model
from darkknowledge.provenance import source_sha
from darkknowledge.teachers import Teacher, compute_teacher_logits, store_options, teacher_outputs
from darkknowledge.train.checkpoint import latest_checkpoint, list_checkpoints, read_checkpoint
from darkknowledge.train.distributed import Distributed, from_environment, rank_seed, shutdown
from darkknowledge.train.evaluate import ensemble_metrics, evaluate, predict_logits
from darkknowledge.train.generations import run_generations
from darkknowledge.train.loop import FitInputs, check_resumable, fit
from darkknowledge.train.rundir import MARKER, check_owned, hold
from darkknowledge.train.signals import Interrupted, StopRequest, stop_on_signals
from darkknowledge.train.threads import apply_threads


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DKError(
            f"device {name!r} is not a device name", "use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DKError(
            f"device {name!r} requested but CUDA is not available", "use device=cpu or device=auto"
        )
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


def _model_files(cfg: RunConfig, run_dir: Path) -> list[Path]:
    """Where the run's model file(s) go: ``model.safetensors``, or one per replica."""
    if cfg.replicas.count:
        return [run_dir / "replicas" / str(k) / MODEL_FILE for k in range(cfg.replicas.count)]
    return [run_dir / MODEL_FILE]


def _check_resume(run_dir: Path, resume: str, cfg: RunConfig) -> dict[str, Any] | None:
    """The checkpoint to resume from (verified), or None to start fresh."""
    has_model = any(p.exists() for p in _model_files(cfg, run_dir))
    if resume == "never":
        if list_checkpoints(run_dir / "checkpoints") or has_model:
            raise DKError(
                f"run directory {run_dir} already holds a run",
                "continue it with --resume auto, or choose a new run_dir",
            )
        return None
    if resume == "auto":
        ckpt = latest_checkpoint(run_dir / "checkpoints")
        if ckpt is None and list_checkpoints(run_dir / "checkpoints"):
            raise DKError(
                f"no checkpoint in {run_dir / 'checkpoints'} is intact", "start a new run_dir"
            )
        if ckpt is None and has_model:
            raise DKError(
                f"run directory {run_dir} holds a model but no checkpoint to resume from",
                "choose a new run_dir (or delete this one to retrain)",
            )
        return ckpt
    return read_checkpoint(resume)


def _check_same_run(cfg: RunConfig, ckpt: dict[str, Any], fingerprints: dict[str, str]) -> None:
    state = ckpt["state"]
    if state.get("config_hash") != cfg.hash():
        raise DKError(
            f"checkpoint {ckpt['path']} was made with a different config",
            "resume with the config in the run directory (config.yaml), or start a new run_dir",
        )
    for key, value in fingerprints.items():
        if (state.get("fingerprints") or {}).get(key) != value:
            raise DKError(
                f"checkpoint {ckpt['path']}: the {key} fingerprint differs from this run's",
                f"the {key} changed since the run started; start a new run_dir",
            )


def _finished_summary(cfg: RunConfig, run_dir: Path, ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """The saved summary of a run that already finished (its final checkpoint, model and summary
    exist).
    """
    state = ckpt["state"]
    if (
        state["epoch"] != cfg.optim.epochs
        or state["step_in_epoch"] != 0
        or not all(p.is_file() for p in _model_files(cfg, run_dir))
    ):
        return None
    try:
        summary = json.loads((run_dir / "summary.json").read_bytes())
    except (OSError, ValueError):
        return None  # killed before the summary was written: finish the run (evaluate, save)
    if (
        not isinstance(summary, dict)
        or summary.get("config_hash") != cfg.hash()
        or summary.get("steps") != state["global_step"]
    ):
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
    if cfg.generations > 1:  # born-again networks: one ordinary run per generation
        return run_generations(cfg, kind, resume, run, prepare_data)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    group = from_environment(cfg.device)  # None unless launched by torchrun with WORLD_SIZE > 1
    try:
        try:
            with stop_on_signals() as stop, contextlib.ExitStack() as held:
                summary = _run(cfg, kind, resume, stop, held, group)
        except Interrupted:
            _settle(group)  # every rank stops at the same step (the ranks agree on a stop)
            raise
        _settle(group)
        return summary
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        shutdown(group)


def _settle(group: Distributed | None) -> None:
    """Wait for every rank before the group is torn down: a rank destroying the gloo group while
    another still uses it aborts that one ("terminate called without an active exception")."""
    if group is not None:
        group.barrier()


@contextlib.contextmanager
def _main_first(group: Distributed | None) -> Iterator[None]:
    """Rank 0 runs the block first (e.g. writes a cache), then the other ranks (which read it)."""
    if group is not None and not group.main:
        group.barrier()
    yield
    if group is not None and group.main:
        group.barrier()


def _stop_if_requested(stop: StopRequest) -> None:
    """Between the (possibly long) preparation phases: a signal that arrived stops the run now."""
    if stop.requested:
        raise Interrupted(stop.signum, None)


def _build_method(cfg: RunConfig):
    return build_method(cfg.method["name"], {k: v for k, v in cfg.method.items() if k != "name"})


def _run(
    cfg: RunConfig,
    kind: str,
    resume: str,
    stop: StopRequest,
    held: contextlib.ExitStack,
    group: Distributed | None = None,
) -> dict[str, Any]:
    """``held``: what the run holds until ``run`` returns (the run directory's one-writer lock)."""
    started = time.perf_counter()
    main = group is None or group.main
    run_dir = Path(cfg.run_dir)
    if main:
        check_owned(run_dir)  # a directory that is not a darkknowledge run is never written
    method = _build_method(cfg)
    replica_cfgs = cfg.replica_configs()
    replica_methods = [_build_method(rc) for rc in replica_cfgs] or None
    if replica_methods:
        if not batchable(cfg.model["name"]):
            raise DKError(
                f"replicas train MLPs as one batched model; model.name={cfg.model['name']} is not "
                "supported",
                "use model.name=mlp, or run the models one by one",
            )
        if len({m.needs_labels() for m in replica_methods}) > 1:
            raise DKError(
                "replicas disagree on whether they need labels (some hard_weight 0, some > 0)",
                "sweep hard_weight over all-zero or all-positive values",
            )
        method = replica_methods[0]
    if kind == "distill" and not method.needs_teacher:
        distillers = ", ".join(n for n in methods.names() if methods.get(n).needs_teacher)
        raise DKError(
            f"dk distill needs a distillation method, got method.name={cfg.method['name']}",
            f"use one of {distillers} (or `dk train` for hard labels)",
        )
    if kind == "train" and method.needs_teacher:
        raise DKError(
            f"method {cfg.method['name']} needs a teacher",
            "use `dk distill` with teacher.checkpoints=[...]",
        )
    if method.needs_teacher and not cfg.teacher.checkpoints:
        raise DKError(
            f"method {cfg.method['name']} needs a teacher but teacher.checkpoints is empty",
            "set teacher.checkpoints=[path/to/teacher_run]",
        )
    if method.needs_teacher and cfg.data.jitter and cfg.teacher.outputs == "precompute":
        raise DKError(
            "data.jitter>0 with teacher.outputs=precompute: stored teacher outputs are for "
            "un-jittered inputs",
            "set teacher.outputs=live, or data.jitter=0 (the paper's student uses no jitter)",
        )
    device = group.device if group is not None else resolve_device(cfg.device)
    if cfg.train_step == "cuda_graph" and device.type != "cuda":
        raise DKError(
            f"train_step=cuda_graph needs a CUDA device, the run uses {device}",
            "use train_step=compile or eager on CPU",
        )
    if cfg.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DKError(
            f"precision=bf16 but {torch.cuda.get_device_name(device)} has no bfloat16 support",
            "use precision=fp32",
        )
    apply_threads(cfg.threads, device)
    if cfg.deterministic:
        if device.type == "cuda":  # cuBLAS is only deterministic with a fixed workspace
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False

    splits = prepare_data(cfg.data)
    _stop_if_requested(stop)
    train = splits.train
    if len(train) == 0:
        raise DKError(
            "the transfer set is empty", "check data.omit_classes / keep_classes / fraction"
        )
    if method.needs_labels() and train.labels is None:
        optional = ", or method.hard_weight=0" if labels_optional(method) else ""
        fix = "set data.unlabelled=false" + optional
        raise DKError(
            f"method {cfg.method['name']} needs labels but the transfer set is unlabelled", fix
        )
    if (
        train.labels is not None
        and len(torch.unique(train.labels)) < 2
        and not method.needs_teacher
    ):
        raise DKError(
            f"the transfer set holds a single class ({int(train.labels[0])}); hard-label training "
            "cannot learn from it",
            "keep at least two classes",
        )
    in_features = train.images[0].numel()

    teacher = None
    if method.needs_teacher:
        teacher = Teacher.from_checkpoints(cfg.teacher.checkpoints, device)
        if teacher.num_classes != train.num_classes or teacher.in_features != in_features:
            raise DKError(
                f"teacher predicts {teacher.num_classes} classes from {teacher.in_features} inputs "
                f"but {cfg.data.dataset} has {train.num_classes} classes and {in_features} inputs",
                "distill from a teacher trained on the same dataset",
            )
    spec = {k: v for k, v in cfg.model.items() if k != "name"}
    if replica_methods:  # each replica initialized exactly as its own run would be
        members = []
        for rc in replica_cfgs:
            torch.manual_seed(rc.seed)
            members.append(build_model(cfg.model["name"], spec, in_features, train.num_classes))
        model = BatchedMLP.from_models(members)
    else:
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model["name"], spec, in_features, train.num_classes)
    if group is not None and group.rank > 0:  # same initial weights, distinct dropout per process
        torch.manual_seed(rank_seed(cfg.seed, group.rank))
    fingerprints = {"dataset": train.fingerprint()}
    if teacher is not None:
        fingerprints["teacher"] = teacher.fingerprint

    replica_seeds = [rc.seed for rc in replica_cfgs] or None
    members = teacher.members if teacher is not None else None
    # what the method asks of the run (features, a connector, labels), checked before any file
    BoundMethod(
        replica_methods or [method],
        model,
        members,
        seed=cfg.seed,
        stored_targets=teacher is not None and cfg.teacher.outputs == "precompute",
        topk_targets=teacher is not None
        and cfg.teacher.outputs == "precompute"
        and cfg.teacher.store_topk is not None,
        label_smoothing=cfg.label_smoothing,
        eager=cfg.train_step == "eager",
        processes=group.world_size if group else 1,
    )
    ckpt = _check_resume(run_dir, resume, cfg)
    if ckpt is not None:
        _check_same_run(cfg, ckpt, fingerprints)
        probe = FitInputs(
            model,
            method,
            train,
            device,
            replica_methods=replica_methods,
            replica_seeds=replica_seeds,
            dist=group,
            teacher_members=members,
        )
        check_resumable(cfg, ckpt, probe)
        finished = _finished_summary(cfg, run_dir, ckpt)
        if finished is not None:
            return finished

    train = train.to(device)
    eval_sets = {
        name: ds.to(device)
        for name, ds in (("valid", splits.valid), ("test", splits.test))
        if ds is not None
    }
    teacher_logits, eval_teacher = None, {}
    if teacher is not None:
        if cfg.teacher.outputs == "precompute":
            with _main_first(group):  # rank 0 builds the store, the others then load it
                teacher_logits = teacher_outputs(
                    teacher, train, cfg.teacher.store, store_options(cfg.teacher, method)
                ).to(device)
        eval_teacher = {name: compute_teacher_logits(teacher, ds) for name, ds in eval_sets.items()}
    _stop_if_requested(stop)

    created, locked = not run_dir.exists(), False
    try:
        if main:
            with writing(run_dir / "config.yaml"):
                run_dir.mkdir(parents=True, exist_ok=True)
                held.enter_context(hold(run_dir))  # the marker first, then the run's files
                locked = True
                now = _check_resume(run_dir, resume, cfg)
                if (now or {}).get("path") != (ckpt or {}).get("path"):
                    raise DKError(
                        f"run directory {run_dir} changed while this run was being prepared "
                        "(another process wrote to it)",
                        "check what wrote it, then run again",
                    )
                atomic_write_bytes(run_dir / "config.yaml", dump_config(cfg).encode())
    except DKError:
        if created and locked:  # leave no run directory behind
            with contextlib.suppress(OSError):
                (run_dir / MARKER).unlink()
                run_dir.rmdir()
        raise
    model = model.to(device)
    inputs = FitInputs(
        model,
        method,
        train,
        device,
        teacher,
        teacher_logits,
        eval_sets,
        eval_teacher,
        fingerprints,
        replica_methods=replica_methods,
        replica_seeds=replica_seeds,
        dist=group,
        teacher_members=members,
    )
    history = fit(cfg, inputs, run_dir, resume=ckpt, stop=stop)
    if replica_methods:
        return _save_replicas(
            cfg,
            kind,
            model,
            replica_cfgs,
            history,
            eval_sets,
            eval_teacher,
            train,
            fingerprints,
            device,
            started,
            group,
        )

    final = {name: evaluate(model, ds, eval_teacher.get(name)) for name, ds in eval_sets.items()}
    if main:
        with writing(run_dir / MODEL_FILE):
            save_model(model, run_dir / MODEL_FILE)
    summary = _summary(
        kind,
        cfg,
        final,
        history,
        history["best_epoch"],
        started,
        device,
        model,
        train,
        fingerprints,
    )
    return _write_summary(run_dir, summary, group)


def _summary(
    kind: str,
    cfg: RunConfig,
    evals: dict[str, Any],
    history: dict[str, Any],
    best_epoch: Any,
    started: float,
    device: torch.device,
    model: nn.Module,
    train: TensorDataset,
    fingerprints: dict[str, str],
) -> dict[str, Any]:
    """What ``summary.json`` says of a finished run (``cfg``: the run a model stands for)."""
    return {
        "kind": kind,
        "method": cfg.method["name"],
        "eval": evals,
        "epochs": history["epochs"],
        "best_epoch": best_epoch,
        "steps": history["steps"],
        "train_seconds": history["train_seconds"],
        # this process's wall time plus the training time of the processes a resumed run followed
        "wall_seconds": time.perf_counter() - started + history.get("trained_before", 0.0),
        "device": _device_name(device),
        "seed": cfg.seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "transfer_set": {"name": train.name, "size": len(train)},
        "config_hash": cfg.hash(),
        "fingerprints": fingerprints,
        # the code that trained it, for rows recorded later from this summary
        "git_sha": source_sha(),
        "finished_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _write_summary(run_dir: Path, summary: dict[str, Any], group: Any) -> dict[str, Any]:
    if group is not None:
        summary["world_size"] = group.world_size
    if group is None or group.main:
        with writing(run_dir / "summary.json"):
            atomic_write_bytes(run_dir / "summary.json", json.dumps(summary, indent=2).encode())
    return summary


def _device_name(device: torch.device) -> str:
    return str(device) if device.type != "cuda" else torch.cuda.get_device_name(device)


def _save_replicas(
    cfg,
    kind,
    model,
    replica_cfgs,
    history,
    eval_sets,
    eval_teacher,
    train,
    fingerprints,
    device,
    started,
    group,
) -> dict[str, Any]:
    """K model files, each with the config of the ordinary run it stands for and its own summary."""
    main = group is None or group.main
    run_dir = Path(cfg.run_dir)
    summaries = []
    for k, (member, rc) in enumerate(zip(model.unstack(), replica_cfgs, strict=True)):
        where = run_dir / "replicas" / str(k)
        best = (
            history["best_epoch"][k]
            if isinstance(history["best_epoch"], list)
            else history["best_epoch"]
        )
        evals = {
            name: evaluate(member, ds, eval_teacher.get(name)) for name, ds in eval_sets.items()
        }
        summary = _summary(
            kind, rc, evals, history, best, started, device, member, train, fingerprints
        )
        summary["trained_as"] = {
            "replica": k,
            "of": cfg.replicas.count,
            "run_dir": str(run_dir),
            "config_hash": cfg.hash(),
        }
        summaries.append(summary)
        if main:
            with writing(where / MODEL_FILE):
                where.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(where / "config.yaml", dump_config(rc).encode())
                save_model(member, where / MODEL_FILE)
                atomic_write_bytes(where / "summary.json", json.dumps(summary, indent=2).encode())
    summary = _summary(
        kind, cfg, {}, history, history["best_epoch"], started, device, model, train, fingerprints
    )
    del summary["eval"]
    summary["replicas"] = [
        {
            "run_dir": str(run_dir / "replicas" / str(k)),
            "seed": s["seed"],
            "method": rc.method,
            "eval": s["eval"],
        }
        for k, (s, rc) in enumerate(zip(summaries, replica_cfgs, strict=True))
    ]
    # the members combined, at temperature 1, on every split (one forward pass for all)
    if cfg.ensemble.members:
        combined = {
            name: ensemble_metrics(predict_logits(model, ds), ds.labels)
            for name, ds in eval_sets.items()
        }
        summary["ensemble"] = {
            c: {name: m[c] for name, m in combined.items()} for c in ("arithmetic", "geometric")
        }
    return _write_summary(run_dir, summary, group)
