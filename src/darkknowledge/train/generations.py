"""Born-again networks (Furlanello et al. 2018): generations of students, each the next teacher.

``dk distill ... generations=N`` trains N students of the teacher's own architecture, one after
the other, under ``run_dir/generations/<k>/`` (k = 1..N). Generation 1 distils from the
configured teacher (generation 0: one model, typically trained on the labels), generation k from
generation k − 1. Each generation is an ordinary run of the same config with seed ``seed + k − 1``
(a fresh initialization and data order; generation 1 is exactly the plain ``dk distill`` run), so
each resumes exactly and a finished one is reused: the whole born-again run continues where it
stopped with ``--resume auto``.

The run directory then serves whole as a teacher, like an ensemble's: ``--teacher run_dir`` (or
``teacher.checkpoints=[run_dir]``, ``dk eval run_dir``) is the ensemble of its generations
(:func:`~darkknowledge.teachers.member_files`), the paper's born-again network ensemble; one
generation is ``run_dir/generations/<k>``. ``summary.json`` holds each generation's evaluation,
the last one's as the run's own, and the ensemble of the generations' (arithmetic and geometric).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from darkknowledge.config import RunConfig, dump_config
from darkknowledge.data import atomic_write_bytes
from darkknowledge.errors import DKError, writing
from darkknowledge.models import build_model, load_model
from darkknowledge.teachers import expand_members
from darkknowledge.train.evaluate import ensemble_metrics, predict_logits
from darkknowledge.train.rundir import check_owned, hold

FOLDER = "generations"


def generation_config(cfg: RunConfig, k: int, teacher: str) -> RunConfig:
    """Generation ``k``'s own run (1-based): seed ``seed + k − 1``, distilled from ``teacher``."""
    where = Path(cfg.run_dir) / FOLDER / str(k)
    teacher_cfg = dataclasses.replace(cfg.teacher, checkpoints=[teacher])
    return dataclasses.replace(
        cfg, generations=1, seed=cfg.seed + k - 1, run_dir=str(where), teacher=teacher_cfg
    )


def check_same_architecture(cfg: RunConfig) -> None:
    """Refuse a teacher that is not one model of the student's architecture (same layers)."""
    files = expand_members(cfg.teacher.checkpoints)
    if len(files) != 1:
        raise DKError(
            f"born-again generations start from one teacher model, got {len(files)} "
            f"({', '.join(str(f) for f in files[:3])})",
            "give one teacher.checkpoints entry: generation 0, of the student's architecture",
        )
    teacher = load_model(files[0])
    spec = {k: v for k, v in cfg.model.items() if k != "name"}
    with torch.random.fork_rng(devices=[]):
        student = build_model(cfg.model["name"], spec, teacher.in_features, teacher.num_classes)
    shapes = {k: tuple(v.shape) for k, v in student.state_dict().items()}
    if shapes != {k: tuple(v.shape) for k, v in teacher.state_dict().items()}:
        raise DKError(
            f"born-again students have their teacher's architecture, but the teacher "
            f"{files[0]} differs from model={json.dumps(cfg.model)}",
            "give the student the teacher's model settings (or distil with generations=1)",
        )


def run_generations(
    cfg: RunConfig,
    kind: str,
    resume: str,
    run_one: Callable[..., dict[str, Any]],
    prepare_data: Callable[[Any], Any],
) -> dict[str, Any]:
    """Train the generations of ``cfg`` (``generations`` ≥ 2) with ``run_one`` (``train.run``),
    evaluate their ensemble on ``prepare_data(cfg.data)``'s splits, and return the born-again
    run's summary; see the module docstring."""
    parent = Path(cfg.run_dir)
    if kind != "distill":
        raise DKError(
            f"generations={cfg.generations} distils born-again students",
            "use dk distill with a teacher (generation 0)",
        )
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise DKError(
            f"generations={cfg.generations} under torchrun: born-again generations "
            "train one process at a time",
            "run it without torchrun",
        )
    if resume not in ("never", "auto"):
        raise DKError(
            f"a born-again run resumes as a whole, not from checkpoint {resume}",
            f"use --resume auto (each of the {cfg.generations} generations continues)",
        )
    check_owned(parent)
    done = _finished(cfg)
    if done is not None and resume == "auto":
        return done
    if resume == "never" and ((parent / FOLDER).exists() or done is not None):
        raise DKError(
            f"run directory {parent} already holds a born-again run",
            "continue it with --resume auto, or choose a new run_dir",
        )
    if not cfg.teacher.checkpoints:
        raise DKError(
            "born-again generations need a teacher (generation 0)",
            "set teacher.checkpoints=[path/to/teacher_run]",
        )
    check_same_architecture(cfg)
    with writing(parent / "config.yaml"):
        parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as held:
        held.enter_context(hold(parent))
        atomic_write_bytes(parent / "config.yaml", dump_config(cfg).encode())
        summaries, teacher = [], cfg.teacher.checkpoints[0]
        for k in range(1, cfg.generations + 1):
            gen = generation_config(cfg, k, teacher)
            summaries.append(
                {**run_one(gen, kind="distill", resume="auto"), "run_dir": gen.run_dir}
            )
            teacher = gen.run_dir
        summary = _summary(cfg, summaries, prepare_data(cfg.data))
        atomic_write_bytes(parent / "summary.json", json.dumps(summary, indent=2).encode())
    return summary


def _finished(cfg: RunConfig) -> dict[str, Any] | None:
    try:
        summary = json.loads((Path(cfg.run_dir) / "summary.json").read_bytes())
    except (OSError, ValueError):
        return None
    ok = isinstance(summary, dict) and summary.get("config_hash") == cfg.hash()
    return summary if ok and len(summary.get(FOLDER) or []) == cfg.generations else None


def _summary(cfg: RunConfig, summaries: list[dict[str, Any]], splits: Any) -> dict[str, Any]:
    """The last generation's summary as the run's, with every generation's and their ensemble's
    evaluation (on the run's validation and test splits)."""
    started = time.perf_counter()
    members = [load_model(s["run_dir"]) for s in summaries]
    ensemble = {}
    for name, ds in (("valid", splits.valid), ("test", splits.test)):
        if ds is not None:
            logits = torch.stack([predict_logits(m, ds) for m in members])
            ensemble[name] = ensemble_metrics(logits, ds.labels)
    last = summaries[-1]
    return {
        **last,
        "generations": [
            {
                "generation": k,
                "run_dir": s["run_dir"],
                "seed": s["seed"],
                "eval": s["eval"],
                "wall_seconds": s["wall_seconds"],
            }
            for k, s in enumerate(summaries, start=1)
        ],
        "ensemble": ensemble,
        "epochs": sum(s["epochs"] for s in summaries),
        "steps": sum(s["steps"] for s in summaries),
        "train_seconds": sum(s["train_seconds"] for s in summaries),
        # the generations' own times (as recorded when each trained) and this evaluation's
        "wall_seconds": sum(s["wall_seconds"] for s in summaries) + time.perf_counter() - started,
        "seed": cfg.seed,
        "run_dir": cfg.run_dir,
        "config_hash": cfg.hash(),
    }
