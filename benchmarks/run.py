"""darkknowledge performance benchmarks: numbers, not tests.

    .venv/bin/python benchmarks/run.py --mode reduced|full|cpu|smoke [--device cpu|cuda]
        [--out benchmarks/results] [--torchdistill-python /tmp/tdvenv/bin/python]
        [--only teacher,distill,...,cpu_scale,contention,ensemble] [--full-teacher]

Prints a table and writes ``<out>/<device>-<UTC date-time>-<mode>.{json,csv}`` plus
``<out>/scaling-<device>.png``. What each benchmark measures is in ``benchmarks/README.md``.

How darkknowledge is timed: only through its public ``darkknowledge.train.run(cfg)``. A run's
``train_seconds`` (the training loop, ending with one evaluation and one checkpoint) is taken for
a short and a long run of the same config; their difference is the time of the extra epochs, so
start-up, warm-up, the final evaluation and the checkpoint cancel out. The plain-PyTorch baselines
(``plain_loops.py``) time the same number of steps after the same number of warm-up steps. The
things compared in one benchmark are measured in turn within each repeat (interleaved), so a
change of machine load hits all of them alike; each figure is the median over the repeats and each
ratio the median of the per-repeat ratios.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import darkknowledge
import torch
import yaml
from darkknowledge.config import (
    RunConfig,
    apply_overrides,
    load_config,
    read_yaml,
    scale_overrides,
)
from darkknowledge.data import TensorDataset, cache_dir, datasets
from darkknowledge.models import build_model, save_model
from darkknowledge.teachers import Teacher, teacher_outputs
from darkknowledge.train import prepare_data, run

import plain_loops
import report

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "experiments" / "hinton2015" / "configs"
BENCHMARKS = (
    "teacher",
    "distill",
    "replicas",
    "torchdistill",
    "scaling",
    "recipe",
    "cpu_scale",
    "contention",
    "ensemble",
)
NEVER = 10**9  # eval_every / checkpoint_every: only the final (always) evaluation and checkpoint
MNIST_TRAIN = 60000


@dataclass(frozen=True)
class Measure:
    """Runs of ``short`` and ``long`` epochs over ``train_size`` examples, ``repeats`` times."""

    train_size: int
    short: int
    long: int
    repeats: int
    batch_size: int = 100

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.train_size // self.batch_size)

    @property
    def warmup_steps(self) -> int:
        return self.short * self.steps_per_epoch

    @property
    def steps(self) -> int:
        return (self.long - self.short) * self.steps_per_epoch


@dataclass(frozen=True)
class Mode:
    teacher: Measure
    distill: Measure
    replicas: Measure
    replica_counts: tuple[int, ...]
    torchdistill_epochs: tuple[int, int]  # (warm-up, timed) epochs over distill.train_size
    scaling_sizes: tuple[int, ...]
    scaling_classes: tuple[int, ...]
    scaling_classes_size: int
    recipe_epochs: int  # 0: no teacher-recipe extrapolation
    notes: str = ""
    # the cpu scale's teacher and student steps (None: not in this mode)
    cpu_scale: Measure | None = None
    contention: Measure | None = None  # the teacher step beside a competing process (CPU only)
    # 10 ensemble members (Fashion-MNIST, 784-500-500-10) trained batched vs one after another,
    # each run `ensemble_epochs` epochs over `ensemble.train_size` images, `ensemble.repeats`
    # times; then a student's epoch distilled from the 10 members vs from 1 (stored outputs),
    # timed over `ensemble.long - ensemble.short` epochs. None: not in this mode.
    ensemble: Measure | None = None
    ensemble_epochs: int = 1
    default_only: tuple[str, ...] = BENCHMARKS[:6]  # what runs without --only


MODES = {
    # A 2-core CPU in about 3 minutes: 200 timed steps (batch 100) per measurement, 3 repeats.
    "reduced": Mode(
        teacher=Measure(5000, 1, 5, 3),
        distill=Measure(5000, 1, 5, 3),
        replicas=Measure(2000, 1, 3, 2),
        replica_counts=(1, 2, 5, 10),
        torchdistill_epochs=(1, 3),
        scaling_sizes=(1000, 5000, 20000, 60000),
        scaling_classes=(10, 100, 1000),
        scaling_classes_size=5000,
        recipe_epochs=0,
        notes="reduced: MNIST subsets, 200 timed steps per measurement, median of 3",
        contention=Measure(2000, 1, 3, 3),
        ensemble=Measure(10000, 1, 3, 2),  # only with --only ensemble
        ensemble_epochs=1,
        default_only=(*BENCHMARKS[:6], "contention"),
    ),
    # Checks that the harness runs end to end (about a minute); its numbers mean nothing.
    "smoke": Mode(
        teacher=Measure(500, 1, 2, 1),
        distill=Measure(500, 1, 2, 1),
        replicas=Measure(200, 1, 2, 1),
        replica_counts=(1, 2),
        torchdistill_epochs=(1, 1),
        scaling_sizes=(200, 500),
        scaling_classes=(10, 100),
        scaling_classes_size=500,
        recipe_epochs=0,
        notes="smoke: a check that the harness runs; the numbers mean nothing",
        cpu_scale=Measure(500, 1, 2, 1),
        contention=Measure(300, 1, 2, 1),
        ensemble=Measure(500, 1, 2, 1),
        ensemble_epochs=1,
        default_only=BENCHMARKS,
    ),
    # An H200: whole epochs of the 60,000 images; the teacher recipe timed over 10 epochs.
    "full": Mode(
        teacher=Measure(60000, 1, 3, 3),
        distill=Measure(60000, 1, 3, 3),
        replicas=Measure(60000, 1, 2, 3),
        replica_counts=(1, 2, 5, 10),
        torchdistill_epochs=(1, 3),
        scaling_sizes=(1000, 5000, 20000, 60000),
        scaling_classes=(10, 100, 1000),
        scaling_classes_size=60000,
        recipe_epochs=10,
        notes="full: whole MNIST epochs, median of 3",
        cpu_scale=Measure(60000, 1, 3, 3),
        contention=Measure(3000, 1, 3, 3),  # only with --only contention --device cpu
        ensemble=Measure(60000, 1, 3, 3),  # only with --only ensemble
        ensemble_epochs=2,
    ),
    # The cpu scale of the paper's table on a 2-core CPU (about 10 minutes): the teacher and
    # student steps of experiments/hinton2015's cpu scale over whole 60,000-image epochs (one
    # warm-up epoch, then 2 timed epochs = 1,200 steps per measurement), median of 3, and the
    # contention benchmark. The other benchmarks, with --only, measure as in reduced mode.
    "cpu": Mode(
        teacher=Measure(5000, 1, 5, 3),
        distill=Measure(5000, 1, 5, 3),
        replicas=Measure(2000, 1, 3, 2),
        replica_counts=(1, 2, 5, 10),
        torchdistill_epochs=(1, 3),
        scaling_sizes=(1000, 5000, 20000, 60000),
        scaling_classes=(10, 100, 1000),
        scaling_classes_size=5000,
        recipe_epochs=0,
        notes="cpu: the cpu scale's teacher and student steps on whole 60,000-image epochs "
        "(2 timed epochs after 1 warm-up epoch), median of 3; contention over 3,000 images",
        cpu_scale=Measure(60000, 1, 3, 3),
        contention=Measure(3000, 1, 3, 3),  # contended at ~273 samples/s: ~45 s a repeat
        # only with --only ensemble (about 3-5 minutes on 2 idle cores): members trained for 2
        # epochs over 20,000 images; the student timed over 2 epochs after 1; median of 3
        ensemble=Measure(20000, 1, 3, 3),
        ensemble_epochs=2,
        default_only=("cpu_scale", "contention"),
    ),
}


@dataclass
class Row:
    """One line of the results table."""

    benchmark: str
    variant: str
    samples_per_s: float | None = None
    wall_s: float | None = None  # median seconds of the timed part
    samples: int | None = None  # examples in the timed part (per model)
    ratio: float | None = None
    ratio_label: str = ""
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def error_text(exc: BaseException) -> str:
    return f"error: {exc.__class__.__name__}: {str(exc)[:200]}"


# ---------------------------------------------------------------- configs


def cell_run(name: str) -> dict[str, Any]:
    """The ``run:`` section of an experiment config (the paper's recipe for that cell)."""
    return yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())["run"]


def common_overrides(device: str, train_size: int, epochs: int, extra: list[str]) -> list[str]:
    return [
        f"device={device}",
        f"data.train_size={train_size}",
        "data.test_size=100",
        f"optim.epochs={epochs}",
        f"eval_every={NEVER}",
        f"checkpoint_every={NEVER}",
        "progress=false",
        *extra,
    ]


def has_field(name: str) -> bool:
    return name in RunConfig.__dataclass_fields__


def fit_seconds(summary: dict[str, Any]) -> float:
    """The loop's own clock; the whole ``run()`` call if a summary lacks it."""
    return summary.get("train_seconds", summary["_call_seconds"])


# ---------------------------------------------------------------- timing


@dataclass
class Series:
    """One thing being timed: seconds and examples of each repeat's timed window."""

    benchmark: str
    variant: str
    measure: Callable[[], tuple[float, int]]
    note: str = ""
    seconds: list[float] = field(default_factory=list)
    samples: int = 0
    error: str | None = None

    def row(self) -> Row:
        if self.error or not self.seconds:
            return Row(self.benchmark, self.variant, note=self.error or "not measured")
        wall = statistics.median(self.seconds)
        note = self.note
        if wall <= 0:
            note += "; non-positive time difference (machine too busy?)"
        return Row(
            self.benchmark,
            self.variant,
            self.samples / wall if wall > 0 else None,
            wall,
            self.samples,
            note=note,
            extra={"repeats_s": self.seconds},
        )


def interleave(series: list[Series], repeats: int) -> None:
    """Measure every series once per repeat, in turn; a series that fails is dropped with its
    error.
    """
    for _ in range(repeats):
        for s in series:
            if s.error:
                continue
            try:
                seconds, s.samples = s.measure()
                s.seconds.append(seconds)
            except Exception as exc:  # a broken variant must not sink the other measurements
                s.error = error_text(exc)


def paired_ratio(a: Series, b: Series) -> float | None:
    """Median over repeats of rate(a) / rate(b)."""
    pairs = [
        (b_s * a.samples) / (a_s * b.samples)
        for a_s, b_s in zip(a.seconds, b.seconds, strict=False)
        if a_s > 0 and b_s > 0
    ]
    if not pairs or a.error or b.error or len(a.seconds) != len(b.seconds):
        return None
    return statistics.median(pairs)


class DK:
    """Runs darkknowledge configs in a scratch directory."""

    def __init__(self, device: str, scratch: Path, extra: list[str]) -> None:
        self.device, self.scratch, self.extra = device, scratch, extra
        self.count = 0

    def run(
        self,
        base: dict[str, Any],
        overrides: list[str],
        kind: str = "train",
        inspect: Callable[[Path, dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """``train.run`` on ``base`` + ``overrides`` in a fresh run directory (removed afterwards).

        The summary gains ``_call_seconds`` (the whole call); ``inspect(run_dir, summary)`` may
        look at the run directory before it is removed.
        """
        self.count += 1
        run_dir = self.scratch / f"run{self.count}"
        cfg = load_config(None, [*overrides, f"run_dir={run_dir}"], base=copy.deepcopy(base))
        try:
            start = time.perf_counter()
            summary = run(cfg, kind)
            summary["_call_seconds"] = time.perf_counter() - start
            if inspect is not None:
                inspect(run_dir, summary)
            return summary
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)

    def epochs(
        self,
        base: dict[str, Any],
        m: Measure,
        kind: str = "train",
        more: list[str] = (),
        inspect: Callable[[Path, dict[str, Any]], None] | None = None,
    ) -> Callable[[], tuple[float, int]]:
        """A measurement: (seconds of ``m.long - m.short`` epochs, examples in them)."""

        def measure() -> tuple[float, int]:
            t, size = {}, m.train_size
            for epochs in (m.short, m.long):
                overrides = common_overrides(
                    self.device, m.train_size, epochs, [*self.extra, *more]
                )
                summary = self.run(base, overrides, kind, inspect)
                t[epochs] = fit_seconds(summary)
                size = (summary.get("transfer_set") or {}).get("size", size)
            return t[m.long] - t[m.short], (m.long - m.short) * size

        return measure


def plain_window(
    step: Callable[[], None], m: Measure, device: torch.device
) -> Callable[[], tuple[float, int]]:
    """A measurement of a plain loop: ``m.steps`` steps, after ``m.warmup_steps`` on the first
    call.
    """
    state = {"warm": False}

    def measure() -> tuple[float, int]:
        if not state["warm"]:
            plain_loops.time_steps(step, m.warmup_steps, device)
            state["warm"] = True
        return plain_loops.time_steps(step, m.steps, device), m.steps * m.batch_size

    return measure


def suffix(variant: list[str]) -> str:
    return f" [{' '.join(variant)}]" if variant else ""


def transfer_set(run_section: dict, train_size: int):
    """The training images a cell's run would use at ``train_size`` (for the plain loops)."""
    cfg = load_config(None, [f"data.train_size={train_size}"], base=copy.deepcopy(run_section))
    return prepare_data(cfg.data).train


# ---------------------------------------------------------------- 1. teacher step


def bench_teacher(dk: DK, mode: Mode, device: torch.device, variants: list[list[str]]) -> list[Row]:
    """The teacher's training step at batch 100: darkknowledge vs a plain PyTorch loop."""
    base = cell_run("teacher_1200")
    m = mode.teacher
    spec, opt = base["model"], base["optim"]
    data = transfer_set(base, m.train_size)
    step = plain_loops.teacher_step(
        data.images,
        data.labels,
        device,
        hidden=spec["hidden"],
        input_dropout=spec["input_dropout"],
        hidden_dropout=spec["hidden_dropout"],
        max_norm=spec["max_norm"],
        init_std=spec["init_std"],
        lr=opt["lr"],
        momentum=opt["initial_momentum"],
        jitter=base["data"]["jitter"],
        batch_size=opt["batch_size"],
    )
    plain = Series(
        "teacher step",
        "plain PyTorch loop",
        plain_window(step, m, device),
        "DataLoader(shuffle) + CPU jitter + loss.item()",
    )
    ours = [
        Series(
            "teacher step",
            "darkknowledge" + suffix(v),
            dk.epochs(base, m, more=v),
            "teacher_1200 recipe, batch 100",
        )
        for v in [[], *variants]
    ]
    interleave([*ours, plain], m.repeats)
    rows = []
    for s in ours:
        row = s.row()
        row.ratio, row.ratio_label = paired_ratio(s, plain), "× plain loop"
        rows.append(row)
    return [*rows, plain.row()]


# ---------------------------------------------------------------- 2. distillation step


def save_untrained(
    spec: dict[str, Any], path: Path, in_features: int = 784, classes: int = 10
) -> Path:
    """A teacher file of the given shape; its weights are random (the timing does not depend on
    them).
    """
    torch.manual_seed(0)
    params = {k: v for k, v in spec.items() if k != "name"}
    model = build_model(spec["name"], params, in_features, classes)
    path.mkdir(parents=True, exist_ok=True)
    return save_model(model, path / "model.safetensors")


def distill_base(teacher_file: Path, outputs: str, store: Path | None) -> dict[str, Any]:
    base = cell_run("student_800_soft_T20")
    base["teacher"] = {
        "checkpoints": [str(teacher_file)],
        "outputs": outputs,
        "store": None if store is None else str(store),
    }
    return base


def build_store(dk: DK, base: dict[str, Any], train_size: int, device: torch.device) -> float:
    """Seconds to compute and save the teacher-output store of this transfer set (a one-off
    cost).
    """
    overrides = common_overrides(dk.device, train_size, 1, dk.extra)
    cfg = load_config(None, overrides, base=copy.deepcopy(base))
    train = prepare_data(cfg.data).train.to(device)
    teacher = Teacher.from_checkpoints(cfg.teacher.checkpoints, device)
    train.fingerprint()  # every run computes it anyway; not part of the store's cost
    start = time.perf_counter()
    teacher_outputs(teacher, train, cfg.teacher.store)
    return time.perf_counter() - start


def bench_distill(
    dk: DK, mode: Mode, device: torch.device, scratch: Path, variants: list[list[str]]
) -> list[Row]:
    """Distillation step: live teacher vs stored teacher outputs, and a plain live loop."""
    m = mode.distill
    teacher_spec = cell_run("teacher_1200")["model"]
    teacher_file = save_untrained(teacher_spec, scratch / "teacher")
    live_base = distill_base(teacher_file, "live", None)
    stored_base = distill_base(
        teacher_file, "precompute", scratch / "store" / "outputs.safetensors"
    )
    build_s = build_store(dk, stored_base, m.train_size, device)

    spec, opt, method = live_base["model"], live_base["optim"], live_base["method"]
    data = transfer_set(live_base, m.train_size)
    step = plain_loops.distill_step(
        data.images,
        data.labels,
        device,
        teacher_hidden=teacher_spec["hidden"],
        student_hidden=spec["hidden"],
        temperature=method["temperature"],
        soft_weight=method["soft_weight"],
        hard_weight=method["hard_weight"],
        lr=opt["lr"],
        momentum=opt["momentum"],
        total_steps=m.long * m.steps_per_epoch,
        batch_size=opt["batch_size"],
    )
    plain = Series(
        "distillation step",
        "plain PyTorch loop, live teacher",
        plain_window(step, m, device),
        "DataLoader(shuffle) + loss.item()",
    )
    pairs = []
    for v in [[], *variants]:
        live = Series(
            "distillation step",
            "darkknowledge, live teacher" + suffix(v),
            dk.epochs(live_base, m, "distill", more=v),
            "student_800_soft_T20, T=20",
        )
        stored = Series(
            "distillation step",
            "darkknowledge, stored teacher outputs" + suffix(v),
            dk.epochs(stored_base, m, "distill", more=v),
            "store built once, outside the timing",
        )
        pairs.append((live, stored))
    interleave([*(s for pair in pairs for s in pair), plain], m.repeats)
    rows = []
    for live, stored in pairs:
        live_row, stored_row = live.row(), stored.row()
        live_row.ratio, live_row.ratio_label = paired_ratio(live, plain), "× plain live loop"
        stored_row.ratio, stored_row.ratio_label = paired_ratio(stored, live), "× live teacher"
        rows += [live_row, stored_row]
    build = Row(
        "distillation step",
        "teacher-output store build (one-off)",
        m.train_size / build_s,
        build_s,
        m.train_size,
        note="compute + save, not in the per-epoch rate",
    )
    return [*rows, build, plain.row()]


# ---------------------------------------------------------------- 3. batched models


def replica_overrides(k: int) -> list[str] | None:
    """The overrides asking for K batched models, by the shape of RunConfig's ``replicas`` field."""
    if not has_field("replicas"):
        return None
    tp = typing.get_type_hints(RunConfig).get("replicas")
    if tp is int:
        return [f"replicas={k}"]
    if dataclasses.is_dataclass(tp) and "seeds" in {f.name for f in dataclasses.fields(tp)}:
        return [f"replicas.seeds=[{', '.join(str(s) for s in range(k))}]"]
    return None


def trained_models(run_dir: Path, summary: dict[str, Any]) -> int:
    """How many models a run really trained: its summary's replica list, or its replica model
    files.
    """
    listed = summary.get("replicas")
    if isinstance(listed, list):
        return len(listed)
    if isinstance(listed, int) and not isinstance(listed, bool):
        return listed
    files = list((run_dir / "replicas").glob("*/model.safetensors"))
    return len(files) if files else 1


def bench_replicas(dk: DK, mode: Mode) -> list[Row]:
    """K same-shaped models trained as one batched computation, vs one model (K = 1)."""
    if replica_overrides(1) is None:
        why = (
            "no `replicas` config"
            if not has_field("replicas")
            else "a `replicas` config of an unknown shape"
        )
        return [
            Row("batched models", f"K={k}", note=f"not available: this darkknowledge has {why}")
            for k in mode.replica_counts
        ]
    base = cell_run("teacher_1200")
    seen: dict[int, list[int]] = {k: [] for k in mode.replica_counts}
    series = {
        k: Series(
            "batched models",
            f"K={k}",
            dk.epochs(
                base,
                mode.replicas,
                more=replica_overrides(k),
                inspect=lambda d, s, k=k: seen[k].append(trained_models(d, s)),
            ),
            f"teacher_1200 recipe, {' '.join(replica_overrides(k))}",
        )
        for k in mode.replica_counts
    }
    interleave(list(series.values()), mode.replicas.repeats)
    for k, s in series.items():
        if k > 1 and not s.error and any(n != k for n in seen[k]):
            # The key was accepted but K models were not trained: never report that as a speed.
            s.error = (
                f"not available: {' '.join(replica_overrides(k))} was accepted but the run trained "
                f"{min(seen[k])} model(s)"
            )
    if all(s.error for k, s in series.items() if k > 1):  # K = 1 alone measures no batching
        return [
            Row(
                "batched models",
                s.variant,
                note=s.error or "not available: no run with K > 1 trained K models",
            )
            for s in series.values()
        ]
    one = series.get(1)
    rows = []
    for k, s in series.items():
        row = s.row()
        row.extra["models"] = k
        if one is not None and one.seconds and s.seconds and not s.error:
            # wall(K) / wall(1): the inverse of the rate ratio (same examples per model)
            r = paired_ratio(one, s)
            row.ratio, row.ratio_label = r, "wall(K) / wall(1)"
            row.extra["model_samples_per_s"] = (row.samples_per_s or 0) * k
        rows.append(row)
    return rows


# ---------------------------------------------------------------- 4. torchdistill


def bench_torchdistill(
    python: str | None, mode: Mode, device: str, distill_rows: list[Row]
) -> tuple[list[Row], dict[str, Any]]:
    """torchdistill's vanilla KD on the same MLPs (its own venv and torch), per-epoch time."""
    name = "torchdistill KD epoch"
    if not python:
        return [
            Row(name, "torchdistill 1.1.5", note="not installed (give --torchdistill-python)")
        ], {}
    m = mode.distill
    cell = cell_run("student_800_soft_T20")
    method, opt = cell["method"], cell["optim"]
    warm, timed = mode.torchdistill_epochs
    cmd = [
        python, str(Path(__file__).with_name("torchdistill_kd.py")),
        "--mnist", str(cache_dir() / "mnist" / "train.safetensors"),
        "--train-size", str(m.train_size),
        "--warmup-epochs", str(warm),
        "--epochs", str(timed),
        "--temperature", str(method["temperature"]),
        "--soft-weight", str(method["soft_weight"]),
        "--hard-weight", str(method["hard_weight"]),
        "--lr", str(opt["lr"]),
        "--momentum", str(opt["momentum"]),
        "--device", device,
        "--threads", str(torch.get_num_threads()),
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as exc:
        return [Row(name, "torchdistill 1.1.5", note=f"not runnable: {exc}")], {}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return [
            Row(
                name, "torchdistill 1.1.5", note=f"failed (exit {proc.returncode}): {tail[0][:200]}"
            )
        ], {}
    info = json.loads(lines[-1])
    td = Row(
        name,
        f"torchdistill {info['torchdistill']} (torch {info['torch']})",
        info["samples_per_s"],
        info["epoch_seconds_median"],
        info["train_size"],
        note="DistillationBox + KDLoss, live teacher",
        extra={"repeats_s": info["epoch_seconds"], "torch": info["torch"]},
    )
    rows = [td]
    for r in distill_rows:
        if r.variant.startswith("darkknowledge") and r.samples_per_s:
            mine = Row(
                name,
                r.variant.replace("darkknowledge", "darkknowledge KD"),
                r.samples_per_s,
                info["train_size"] / r.samples_per_s,
                info["train_size"],
                note="epoch time = examples / samples/s of the distillation step",
            )
            mine.ratio, mine.ratio_label = mine.samples_per_s / td.samples_per_s, "× torchdistill"
            rows.append(mine)
    return rows, info


# ---------------------------------------------------------------- 5. scaling


def register_synthetic(classes: int, size: int) -> str:
    """Random 28×28 images with ``classes`` random labels, registered in this process only."""
    name = f"bench-synthetic-{classes}"
    if name in datasets:
        return name

    def load(split: str) -> TensorDataset:
        n = size if split == "train" else 100
        gen = torch.Generator().manual_seed(classes * 7 + (split == "train"))
        images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=gen)
        labels = torch.randint(0, classes, (n,), generator=gen)
        return TensorDataset(images, labels, torch.arange(n), classes, f"{name}/{split}")

    datasets.register(name)(load)
    return name


def bench_scaling(
    dk: DK, mode: Mode, scratch: Path, replica_rows: list[Row]
) -> tuple[list[Row], dict[str, Any]]:
    """Seconds for one epoch as the dataset, the class count and the number of batched models
    grow.
    """
    rows: list[Row] = []
    curves: dict[str, Any] = {"dataset_size": [], "classes": [], "models": []}
    base = cell_run("teacher_1200")
    for n in mode.scaling_sizes:
        s = dk.run(base, common_overrides(dk.device, n, 1, dk.extra))
        size, seconds = s["transfer_set"]["size"], fit_seconds(s)
        note = "teacher_1200, one epoch (incl. the final eval + checkpoint)"
        rows.append(
            Row("scaling: dataset size", f"{size} images", size / seconds, seconds, size, note=note)
        )
        curves["dataset_size"].append((size, seconds))
    for c in mode.scaling_classes:
        name = register_synthetic(c, mode.scaling_classes_size)
        teacher_file = save_untrained(
            cell_run("teacher_1200")["model"], scratch / f"teacher-{c}", classes=c
        )
        b = distill_base(
            teacher_file, "precompute", scratch / "store" / f"synthetic-{c}.safetensors"
        )
        b["data"] = {"dataset": name}
        s = dk.run(
            b, common_overrides(dk.device, mode.scaling_classes_size, 1, dk.extra), "distill"
        )
        size, seconds = s["transfer_set"]["size"], fit_seconds(s)
        note = (
            "synthetic data, student 800-800, soft targets T=20 from stored outputs, one epoch of "
            f"{size}"
        )
        rows.append(
            Row("scaling: classes", f"{c} classes", size / seconds, seconds, size, note=note)
        )
        curves["classes"].append((c, seconds))
    for r in replica_rows:
        if r.wall_s:
            curves["models"].append((r.extra["models"], r.wall_s))
    return rows, curves


# ---------------------------------------------------------------- the teacher recipe


def bench_recipe(dk: DK, mode: Mode, full_teacher: bool, variant: list[str]) -> list[Row]:
    """The whole teacher recipe (teacher_1200, 3000 epochs): some epochs timed and extrapolated, or
    run.
    """
    base = cell_run("teacher_1200")
    target = base["optim"]["epochs"]
    own = ["progress=false", f"device={dk.device}", *dk.extra, *variant]
    rows = []
    if mode.recipe_epochs > 1:
        t1 = fit_seconds(dk.run(base, [*own, "optim.epochs=1"]))
        tn = fit_seconds(dk.run(base, [*own, f"optim.epochs={mode.recipe_epochs}"]))
        epoch_s = (tn - t1) / (mode.recipe_epochs - 1)
        # One epoch's end (final evaluation + checkpoint, + warm-up): an upper bound per event.
        end_s = max(t1 - epoch_s, 0.0)
        events = sum(
            1
            for e in range(1, target + 1)
            if e % base["eval_every"] == 0 or e % base["checkpoint_every"] == 0
        )
        total = target * epoch_s + events * end_s
        note = (
            f"EXTRAPOLATED: {target} × {epoch_s:.3f} s/epoch (measured over {mode.recipe_epochs} "
            "epochs)"
            f" + {events} eval/checkpoint epochs × {end_s:.2f} s"
        )
        rows.append(
            Row(
                "teacher recipe (3000 epochs)",
                "extrapolated" + suffix(variant),
                MNIST_TRAIN / epoch_s if epoch_s > 0 else None,
                total,
                MNIST_TRAIN * target,
                note=note,
                extra={"extrapolated": True, "epoch_s": epoch_s, "end_of_epoch_s": end_s},
            )
        )
    if full_teacher:
        s = dk.run(base, own)
        errors = (s.get("eval") or {}).get("test", {}).get("errors")
        rows.append(
            Row(
                "teacher recipe (3000 epochs)",
                "measured: the full run" + suffix(variant),
                MNIST_TRAIN * target / fit_seconds(s),
                s.get("wall_seconds", s["_call_seconds"]),
                MNIST_TRAIN * target,
                note=f"whole run() wall time; test errors {errors}",
                extra={"extrapolated": False, "train_seconds": fit_seconds(s)},
            )
        )
    return rows


def fastest_variant(rows: list[Row]) -> list[str]:
    """The overrides of the fastest darkknowledge teacher-step row (``[]``: the defaults)."""
    ours = [
        r
        for r in rows
        if r.benchmark == "teacher step"
        and r.variant.startswith("darkknowledge")
        and r.samples_per_s
    ]
    if not ours:
        return []
    best = max(ours, key=lambda r: r.samples_per_s).variant
    return best[best.index("[") + 1 : -1].split() if "[" in best else []


# ---------------------------------------------------------------- 7. the cpu scale


def cell_at_scale(name: str, scale: str) -> dict[str, Any]:
    """The ``run:`` section of an experiment cell with its ``scales.<scale>`` overrides applied.

    The benchmark's own overrides (epochs, subset size, no periodic evaluation) come after these,
    as ``dk reproduce``'s do, so whatever the cell's scale sets that a step's time depends on
    (optimizer, schedule, model, dropout, jitter, batch size, ``log_every``, ``threads``) is kept.
    """
    raw = read_yaml(CONFIGS / f"{name}.yaml")
    return apply_overrides(copy.deepcopy(dict(raw["run"] or {})), scale_overrides(raw, scale))


def threads_note(counts: list[int]) -> str:
    """``2 threads`` or ``1-2 threads`` from the thread counts the runs of a series used."""
    if not counts:
        return "threads not recorded"
    lo, hi = min(counts), max(counts)
    return f"{lo} thread{'s' if hi > 1 else ''}" if lo == hi else f"{lo}-{hi} threads"


def same_threads_window(
    step: Callable[[], None], m: Measure, device: torch.device, threads: list[int], used: list[int]
) -> Callable[[], tuple[float, int]]:
    """``plain_window`` run with the thread count darkknowledge's last run used (``threads[-1]``;
    ``threads=auto`` may have chosen fewer than PyTorch's default on a shared machine), so both
    sides of a ratio have the same cores; the counts it ran with are appended to ``used``."""
    window = plain_window(step, m, device)

    def measure() -> tuple[float, int]:
        if threads and device.type == "cpu":
            torch.set_num_threads(threads[-1])
        used.append(torch.get_num_threads())
        return window()

    return measure


def bench_cpu_scale(dk: DK, mode: Mode, device: torch.device, scratch: Path) -> list[Row]:
    """The teacher and student steps exactly as experiments/hinton2015's cpu scale trains them,
    darkknowledge vs plain PyTorch loops of the same recipe (interleaved, median of the repeats)."""
    m = mode.cpu_scale
    if m is None:
        return [
            Row(name, "darkknowledge", note="not in this mode (use --mode cpu)")
            for name in ("cpu scale: teacher step", "cpu scale: student step")
        ]
    return [*cpu_scale_teacher(dk, m, device), *cpu_scale_student(dk, m, device, scratch)]


def cpu_scale_teacher(dk: DK, m: Measure, device: torch.device) -> list[Row]:
    name = "cpu scale: teacher step"
    base = cell_at_scale("teacher_1200", "cpu")
    cfg = load_config(None, [], base=copy.deepcopy(base))
    o, spec = cfg.optim, cfg.model
    if o.name not in ("sgd", "paper_dropout") or spec["name"] != "mlp":
        why = f"the plain loop has no {o.name} optimizer / {spec['name']} model"
        return [Row(name, "darkknowledge", note=f"not measured: {why}")]
    data = transfer_set(base, m.train_size)
    step = plain_loops.teacher_step(
        data.images,
        data.labels,
        device,
        hidden=spec["hidden"],
        input_dropout=spec.get("input_dropout", 0.0),
        hidden_dropout=spec.get("hidden_dropout", 0.0),
        max_norm=spec.get("max_norm"),
        init_std=spec.get("init_std"),
        lr=o.lr,
        momentum=o.momentum if o.name == "sgd" else o.initial_momentum,
        jitter=cfg.data.jitter,
        batch_size=o.batch_size,
        optimizer=o.name,
        schedule=o.schedule,
        total_steps=o.epochs * m.steps_per_epoch,
        weight_decay=o.weight_decay,
    )
    recipe = (
        f"SGD momentum {o.momentum}, no dampening, {o.schedule}"
        if o.name == "sgd"
        else "the dropout paper's update"
    )
    dk_threads: list[int] = []
    plain_threads: list[int] = []
    ours = Series(
        name,
        "darkknowledge",
        dk.epochs(base, m, inspect=lambda d, s: dk_threads.append(torch.get_num_threads())),
        f"teacher_1200 at the cpu scale ({recipe}), batch {o.batch_size}, jitter {cfg.data.jitter}",
    )
    plain = Series(
        name,
        "plain PyTorch loop",
        same_threads_window(step, m, device, dk_threads, plain_threads),
        f"DataLoader(shuffle) + CPU jitter + torch.optim.SGD ({recipe}) + max-norm + loss.item()",
    )
    interleave([ours, plain], m.repeats)
    ours_row, plain_row = ours.row(), plain.row()
    ours_row.ratio, ours_row.ratio_label = paired_ratio(ours, plain), "× plain loop"
    for row, counts in ((ours_row, dk_threads), (plain_row, plain_threads)):
        row.extra["threads"] = counts
        if row.samples_per_s is not None:
            row.note += f"; {threads_note(counts)}"
    return [ours_row, plain_row]


def cpu_scale_student(dk: DK, m: Measure, device: torch.device, scratch: Path) -> list[Row]:
    name = "cpu scale: student step"
    teacher_spec = cell_at_scale("teacher_1200", "cpu")["model"]
    teacher_file = save_untrained(teacher_spec, scratch / "cpu-scale-teacher")
    base = cell_at_scale("student_800_soft_T20", "cpu")
    section = base.setdefault("teacher", {})
    section["checkpoints"] = [str(teacher_file)]
    own = load_config(None, [], base=copy.deepcopy(base))  # the cell's own teacher.outputs
    section["store"] = str(scratch / "cpu-scale-store" / "outputs.safetensors")
    stored_base = copy.deepcopy(base)
    stored_base["teacher"]["outputs"] = "precompute"
    live_base = copy.deepcopy(base)
    live_base["teacher"]["outputs"] = "live"
    live_base["teacher"]["store"] = None
    cfg = load_config(None, [], base=copy.deepcopy(stored_base))
    o, spec, method = cfg.optim, cfg.model, cfg.method
    if o.name != "sgd" or method["name"] != "soft_targets" or spec["name"] != "mlp":
        why = f"the plain loop has no {o.name} / {method['name']} / {spec['name']}"
        return [Row(name, "darkknowledge", note=f"not measured: {why}")]
    build_s = build_store(dk, stored_base, m.train_size, device)
    data = transfer_set(stored_base, m.train_size)
    dk_threads: list[int] = []  # every darkknowledge run's count, in order (the plain loops follow)
    own_threads: dict[str, list[int]] = {"stored": [], "live": []}

    def record(key: str) -> Callable[[Path, dict[str, Any]], None]:
        def inspect(_run_dir: Path, _summary: dict[str, Any]) -> None:
            dk_threads.append(torch.get_num_threads())
            own_threads[key].append(torch.get_num_threads())

        return inspect

    plain_threads: dict[str, list[int]] = {"stored": [], "live": []}
    plains = {}
    for outputs in ("stored", "live"):
        step = plain_loops.distill_step(
            data.images,
            data.labels,
            device,
            teacher_hidden=teacher_spec["hidden"],
            student_hidden=spec["hidden"],
            temperature=method["temperature"],
            soft_weight=method["soft_weight"],
            hard_weight=method["hard_weight"],
            lr=o.lr,
            momentum=o.momentum,
            total_steps=o.epochs * m.steps_per_epoch,
            batch_size=o.batch_size,
            teacher_outputs=outputs,
        )
        what = (
            "teacher logits computed once into a tensor"
            if outputs == "stored"
            else "teacher under no_grad on every batch"
        )
        plains[outputs] = Series(
            name,
            "plain PyTorch loop, "
            f"{'stored teacher outputs' if outputs == 'stored' else 'live teacher'}",
            same_threads_window(step, m, device, dk_threads, plain_threads[outputs]),
            f"DataLoader(shuffle) + {what} + SGD momentum {o.momentum} + {o.schedule} "
            "+ loss.item()",
        )
    recipe = (
        f"student_800_soft_T20 at the cpu scale (T={method['temperature']}, "
        f"{method['hard_weight']} hard, SGD momentum {o.momentum}, {o.schedule}), batch "
        f"{o.batch_size}"
    )
    stored = Series(
        name,
        "darkknowledge, stored teacher outputs",
        dk.epochs(stored_base, m, "distill", inspect=record("stored")),
        recipe
        + (
            "; the cpu scale's setting (teacher.outputs=precompute)"
            if own.teacher.outputs == "precompute"
            else ""
        ),
    )
    live = Series(
        name,
        "darkknowledge, live teacher",
        dk.epochs(live_base, m, "distill", inspect=record("live")),
        recipe
        + (
            "; the cpu scale's setting"
            if own.teacher.outputs == "live"
            else "; teacher.outputs=live"
        ),
    )
    interleave([stored, live, plains["stored"], plains["live"]], m.repeats)
    stored_row, live_row = stored.row(), live.row()
    stored_row.ratio = paired_ratio(stored, plains["stored"])
    stored_row.ratio_label = "× plain loop, stored outputs"
    live_row.ratio = paired_ratio(live, plains["live"])
    live_row.ratio_label = "× plain loop, live teacher"
    vs_live = paired_ratio(stored, plains["live"])
    stored_row.extra["ratio_vs_plain_live_loop"] = vs_live
    if vs_live is not None:
        stored_row.note += f"; {vs_live:.2f} × the plain live-teacher loop"
    rows = [stored_row, live_row]
    for row, key in ((stored_row, "stored"), (live_row, "live")):
        row.extra["threads"] = own_threads[key]
        if row.samples_per_s is not None:
            row.note += f"; {threads_note(own_threads[key])}"
    build = Row(
        name,
        "teacher-output store build (one-off)",
        m.train_size / build_s,
        build_s,
        m.train_size,
        note="compute + save, not in the per-epoch rate",
    )
    plain_rows = []
    for key, s in plains.items():
        row = s.row()
        row.extra["threads"] = plain_threads[key]
        if row.samples_per_s is not None:
            row.note += f"; {threads_note(plain_threads[key])}"
        plain_rows.append(row)
    return [*rows, build, *plain_rows]


# ---------------------------------------------------------------- 8. contention


def fresh_auto_threads() -> None:
    """Make the next ``threads=auto`` run measure the busy cores anew, as a new ``dk train``
    process does (within one process darkknowledge reuses a measurement for 30 s)."""
    from darkknowledge.train import threads as dk_threads

    if hasattr(dk_threads, "_MEASURED"):
        dk_threads._MEASURED = None


class Competitor:
    """The competing process: ``plain_loops.py compete``, a plain training loop (2 threads on a
    2-core machine: PyTorch's default, ``OMP_NUM_THREADS`` removed from its environment, unless
    ``threads`` is given). A context manager: leaving it (normally or by an exception) stops the
    process, and the process stops by itself when this one is gone or after ``max_seconds``."""

    def __init__(self, scratch: Path, threads: int | None, max_seconds: float = 1800.0) -> None:
        self.scratch, self.threads, self.max_seconds = scratch, threads, max_seconds
        self.proc: subprocess.Popen | None = None
        self.status = scratch / "competitor.json"
        self.log = scratch / "competitor.log"

    def __enter__(self) -> Competitor:
        self.status.unlink(missing_ok=True)
        env = dict(os.environ)
        if self.threads is None:
            for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                env.pop(key, None)
        cmd = [
            sys.executable,
            str(Path(plain_loops.__file__).resolve()),
            "compete",
            "--status",
            str(self.status),
            "--max-seconds",
            str(self.max_seconds),
        ]
        if self.threads is not None:
            cmd += ["--threads", str(self.threads)]
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 180
            while not self.status.exists():
                if self.proc.poll() is not None:
                    tail = self.log.read_text().strip().splitlines()[-1:] or ["no output"]
                    raise RuntimeError(
                        f"the competing process exited ({self.proc.returncode}): {tail[0][:200]}"
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError("the competing process did not start within 180 s")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def read(self) -> dict[str, Any]:
        for _ in range(50):  # written atomically; absent only before the first report
            try:
                return json.loads(self.status.read_text())
            except (OSError, ValueError):
                time.sleep(0.05)
        raise RuntimeError("cannot read the competing process's status")


def competitor_rate(
    before: dict[str, Any], after: dict[str, Any], batch: int = 100
) -> float | None:
    """The competitor's samples/s between two of its reports."""
    dt_s = after["seconds"] - before["seconds"]
    return (after["steps"] - before["steps"]) * batch / dt_s if dt_s > 0 else None


def bench_contention(
    dk: DK, mode: Mode, device: torch.device, scratch: Path, competitor_threads: int | None
) -> list[Row]:
    """The teacher step (teacher_1200 at the cpu scale) alone, and beside a competing 2-thread
    training process with ``threads=2`` (contending) and with ``threads=auto``."""
    name = "contention"
    labels = [
        "alone",
        "beside a 2-thread process, threads=2",
        "beside a 2-thread process, threads=auto",
    ]
    if device.type != "cpu":
        return [
            Row(name, v, note="not measured: a CPU benchmark (use --device cpu)") for v in labels
        ]
    m = mode.contention
    if m is None:
        return [Row(name, v, note="not in this mode") for v in labels]
    if os.environ.get("OMP_NUM_THREADS"):
        print(
            f"note: OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} caps PyTorch's default in this "
            "process, and so what threads=auto may use",
            file=sys.stderr,
        )
    base = cell_at_scale("teacher_1200", "cpu")
    used: dict[str, list[int]] = {"alone": [], "contended": [], "auto": []}
    state: dict[str, Any] = {"threads": None}  # the competitor's thread count, once started

    def measure(key: str, more: Callable[[], list[str]]) -> Callable[[], tuple[float, int]]:
        def run_it() -> tuple[float, int]:
            fresh_auto_threads()
            record = lambda d, s: used[key].append(torch.get_num_threads())  # noqa: E731
            return dk.epochs(base, m, more=more(), inspect=record)()

        return run_it

    alone = Series(name, labels[0], measure("alone", lambda: []))
    contended = Series(
        name, labels[1], measure("contended", lambda: [f"threads={state['threads']}"])
    )
    auto = Series(name, labels[2], measure("auto", lambda: ["threads=auto"]))
    rates: dict[str, list[float]] = {"alone": [], "contended": [], "auto": []}
    windows: dict[str, list[float]] = {"alone": [], "contended": [], "auto": []}
    competitor_error = None

    def timed(s: Series) -> bool:
        if s.error:
            return False
        try:
            seconds, s.samples = s.measure()
            s.seconds.append(seconds)
            return True
        except Exception as exc:  # a broken variant must not sink the other measurements
            s.error = error_text(exc)
            return False

    for _ in range(m.repeats):
        timed(alone)
        if competitor_error:
            continue
        try:
            with Competitor(scratch, competitor_threads) as comp:
                before = comp.read()
                state["threads"] = before["threads"]
                time.sleep(2.0)  # the competitor alone, for its own reference rate
                after = comp.read()
                if (r := competitor_rate(before, after)) is not None:
                    rates["alone"].append(r)
                    windows["alone"].append(after["seconds"] - before["seconds"])
                for key, s in (("contended", contended), ("auto", auto)):
                    before = comp.read()
                    ok = timed(s)
                    after = comp.read()
                    if ok and (r := competitor_rate(before, after)) is not None:
                        rates[key].append(r)
                        windows[key].append(after["seconds"] - before["seconds"])
        except Exception as exc:
            competitor_error = error_text(exc)
    n = state["threads"] or 2
    rows = []
    for key, s in (("alone", alone), ("contended", contended), ("auto", auto)):
        if competitor_error and key != "alone" and not s.seconds:
            s.error = f"the competing process failed: {competitor_error}"
        s.variant = s.variant.replace("2-thread", f"{n}-thread").replace(
            "threads=2", f"threads={n}"
        )
        row = s.row()
        row.extra["threads"] = used[key]
        setting = {
            "alone": "threads=auto (the default)",
            "contended": f"threads={n}",
            "auto": "threads=auto",
        }[key]
        if row.samples_per_s is not None:
            row.note = f"teacher_1200 at the cpu scale, {setting}: {threads_note(used[key])}" + (
                "" if key == "alone" else f"; beside a plain {n}-thread training loop"
            )
        if key != "alone":
            row.ratio, row.ratio_label = paired_ratio(s, alone), "× alone"
        rows.append(row)
    for key, label in (
        ("alone", f"the competing {n}-thread process, alone"),
        ("contended", f"the competing {n}-thread process, beside threads={n}"),
        ("auto", f"the competing {n}-thread process, beside threads=auto"),
    ):
        if not rates[key]:
            rows.append(Row(name, label, note=competitor_error or "not measured"))
            continue
        rate = statistics.median(rates[key])
        wall = statistics.median(windows[key])
        row = Row(
            name,
            label,
            rate,
            wall,
            round(rate * wall),
            note="plain loop (784-1200-1200-10, SGD, batch 100, random images); "
            + ("2 s on its own" if key == "alone" else "over darkknowledge's two runs"),
            extra={"repeats_samples_per_s": rates[key], "threads": n},
        )
        if key != "alone" and rates["alone"]:
            row.ratio = rate / statistics.median(rates["alone"])
            row.ratio_label = "× its rate alone"
        rows.append(row)
    return rows


# ---------------------------------------------------------------- 9. ensemble

ENSEMBLE_MEMBERS = 10


def ensemble_member_base() -> dict[str, Any]:
    """An ordinary ``dk train`` config of one ensemble member: Fashion-MNIST, 784-500-500-10."""
    return {
        "data": {"dataset": "fashion_mnist"},
        "model": {"name": "mlp", "hidden": [500, 500]},
        "method": {"name": "hard_targets"},
        "optim": {"name": "sgd", "lr": 0.05, "batch_size": 100},
        "log_every": 100,  # as the experiment configs; the default (1) adds a metrics line a step
    }


def ensemble_student_base(members: list[Path], store: Path) -> dict[str, Any]:
    """The student of the same architecture, soft targets from ``members`` (stored outputs)."""
    base = ensemble_member_base()
    base["method"] = {"name": "soft_targets", "temperature": 5, "hard_weight": 0.5}
    base["teacher"] = {
        "checkpoints": [str(p) for p in members],
        "outputs": "precompute",
        "store": str(store),
    }
    return base


def whole_runs(
    dk: DK,
    base: dict[str, Any],
    m: Measure,
    epochs: int,
    runs: list[list[str]],
    members: int,
    loop_seconds: list[float],
    inspect: Callable[[int, Path, dict[str, Any]], None],
) -> Callable[[], tuple[float, int]]:
    """A measurement: the summed seconds of whole ``run()`` calls (one per entry of ``runs``, in
    turn), and the member-samples they trained (``members`` × epochs × images). The summed
    ``train_seconds`` (training loops only) of the same calls are appended to ``loop_seconds``."""

    def measure() -> tuple[float, int]:
        call = loop = 0.0
        size = m.train_size
        for i, more in enumerate(runs):
            overrides = common_overrides(dk.device, m.train_size, epochs, [*dk.extra, *more])
            summary = dk.run(base, overrides, "train", lambda d, s, i=i: inspect(i, d, s))
            call += summary["_call_seconds"]
            loop += fit_seconds(summary)
            size = (summary.get("transfer_set") or {}).get("size", size)
        loop_seconds.append(loop)
        return call, members * epochs * size

    return measure


def paired_seconds_ratio(a: list[float], b: list[float]) -> float | None:
    """Median over repeats of b / a (the rate of a over the rate of b for the same work)."""
    pairs = [y / x for x, y in zip(a, b, strict=False) if x > 0 and y > 0]
    return statistics.median(pairs) if pairs and len(a) == len(b) else None


def bench_ensemble(dk: DK, mode: Mode, device: torch.device, scratch: Path) -> list[Row]:
    """(a) 10 ensemble members trained as one batched run vs 10 runs one after another; (b) a
    student's epoch distilled from the 10 members vs from member 0 alone, from stored outputs."""
    train_name, distill_name = "ensemble: 10 members trained", "ensemble: distillation epoch"
    n = ENSEMBLE_MEMBERS
    m = mode.ensemble
    if m is None:
        return [Row(name, "all", note="not in this mode") for name in (train_name, distill_name)]
    epochs = mode.ensemble_epochs
    base = ensemble_member_base()
    seeds = list(range(n))
    member_dir = scratch / "ensemble-members"
    member_files = [member_dir / str(k) / "model.safetensors" for k in seeds]
    threads: dict[str, list[int]] = {"batched": [], "sequential": []}
    trained: list[int] = []

    def keep_member(k: int, source: Path) -> None:
        """Keep member k's model file (the first that a run writes) for the distillation part."""
        if not member_files[k].exists() and source.is_file():
            member_files[k].parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, member_files[k])

    def inspect_batched(_i: int, run_dir: Path, summary: dict[str, Any]) -> None:
        threads["batched"].append(torch.get_num_threads())
        trained.append(trained_models(run_dir, summary))
        for k in seeds:
            keep_member(k, run_dir / "replicas" / str(k) / "model.safetensors")

    def inspect_sequential(i: int, run_dir: Path, _summary: dict[str, Any]) -> None:
        threads["sequential"].append(torch.get_num_threads())
        keep_member(i, run_dir / "model.safetensors")

    size = f"{epochs} epoch{'s' if epochs > 1 else ''} over {m.train_size:,} Fashion-MNIST images"
    o = load_config(None, [], base=copy.deepcopy(base)).optim
    recipe = (
        f"784-500-500-10 MLP, hard_targets, {o.name} lr {o.lr:g} (momentum {o.momentum:g}, "
        f"{o.schedule}), batch {o.batch_size}, log_every {base['log_every']}, {size}"
    )
    what = (
        "wall = whole run() calls in this process (data loading, init, training loop, final "
        f"eval of 100 test images, model files); samples/s = member-samples ({n} × epochs × images)"
    )
    loops: dict[str, list[float]] = {"batched": [], "sequential": []}
    replicas = replica_overrides(n)
    sequential = Series(
        train_name,
        f"sequential: {n} runs one after another, seed=0..{n - 1}",
        whole_runs(
            dk,
            base,
            m,
            epochs,
            [[f"seed={k}"] for k in seeds],
            n,
            loops["sequential"],
            inspect_sequential,
        ),
        f"{recipe}; {what}",
    )
    series = [sequential]
    batched = None
    if replicas is not None:
        batched = Series(
            train_name,
            f"batched: one run, {' '.join(replicas)}",
            whole_runs(dk, base, m, epochs, [replicas], n, loops["batched"], inspect_batched),
            f"{recipe}; {what}",
        )
        series.insert(0, batched)
    # One untimed small run of each kind first, so that neither timed variant pays the process's
    # one-off costs (reading the dataset files into the page cache, first kernels, CUDA context).
    warm = common_overrides(dk.device, min(m.train_size, 1000), 1, dk.extra)
    for more in ([], replicas or []):
        try:
            dk.run(base, [*warm, *more])
        except Exception:  # the timed runs report any error on their rows
            pass
    interleave(series, m.repeats)
    if batched is not None and not batched.error and any(t != n for t in trained):
        batched.error = (
            f"not available: {' '.join(replicas)} was accepted but the run trained "
            f"{min(trained)} model(s)"
        )
    rows = []
    for key, s in (("batched", batched), ("sequential", sequential)):
        if s is None:
            why = (
                "no `replicas` config"
                if not has_field("replicas")
                else "a `replicas` config of an unknown shape"
            )
            rows.append(
                Row(
                    train_name,
                    "batched: one run",
                    note=f"not available: this darkknowledge has {why}",
                )
            )
            continue
        row = s.row()
        row.extra.update(
            {"models": n, "epochs": epochs, "threads": threads[key], "train_loop_s": loops[key]}
        )
        if row.samples_per_s is not None:
            loop = statistics.median(loops[key])
            row.extra["train_loop_samples_per_s"] = s.samples / loop if loop > 0 else None
            row.note += f"; training loops alone {loop:.3g} s; {threads_note(threads[key])}"
        rows.append(row)
    ratio_row = Row(train_name, "batched ÷ sequential (member-samples/s)")
    if batched is not None and (r := paired_ratio(batched, sequential)) is not None:
        ratio_row.ratio, ratio_row.ratio_label = r, "× sequential"
        loop_r = paired_seconds_ratio(loops["batched"], loops["sequential"])
        ratio_row.extra["train_loop_ratio"] = loop_r
        ratio_row.note = (
            "median over repeats of the batched run's samples/s ÷ the 10 sequential runs' "
            "(whole run() calls; > 1: batching is faster)"
            + (f"; training loops alone {loop_r:.2f} ×" if loop_r is not None else "")
        )
    else:
        ratio_row.note = "not measured: " + (
            (batched.error if batched is not None else None) or sequential.error or "no batched run"
        )
    rows.append(ratio_row)
    return rows + ensemble_distill(dk, m, device, scratch, member_files, distill_name)


def ensemble_distill(
    dk: DK, m: Measure, device: torch.device, scratch: Path, members: list[Path], name: str
) -> list[Row]:
    """A student's epoch from stored outputs of all members vs member 0, and the stores' builds."""
    counts = (len(members), 1)
    labels = {k: f"{k} member{'s' if k > 1 else ''}" for k in counts}
    if not all(p.is_file() for p in members):
        why = "not measured: the member models were not trained (see the rows above)"
        return [Row(name, f"student from {labels[k]}, stored outputs", note=why) for k in counts]
    builds: dict[int, list[float]] = {k: [] for k in counts}
    bases: dict[int, dict[str, Any]] = {}
    build_error = None
    try:
        for r in range(m.repeats):  # each build into a fresh directory: a store is reused if there
            for k in counts:
                store = scratch / "ensemble-store" / f"{k}-{r}" / "outputs.safetensors"
                bases[k] = ensemble_student_base(members[:k], store)
                builds[k].append(build_store(dk, bases[k], m.train_size, device))
                if r:
                    shutil.rmtree(scratch / "ensemble-store" / f"{k}-{r - 1}", ignore_errors=True)
    except Exception as exc:  # the per-epoch rows can still be measured (each run builds its store)
        build_error = error_text(exc)
        bases = {
            k: ensemble_student_base(
                members[:k], scratch / "ensemble-store" / f"{k}-run" / "outputs.safetensors"
            )
            for k in counts
        }
    cfg = load_config(None, [], base=copy.deepcopy(bases[1]))
    o, method = cfg.optim, cfg.method
    student = (
        f"784-500-500-10 student, soft_targets T={method['temperature']:g} + "
        f"{method['hard_weight']:g} × hard, {o.name} lr {o.lr:g} (momentum {o.momentum:g}, "
        f"{o.schedule}), batch {o.batch_size}, Fashion-MNIST {m.train_size:,} images"
    )
    series = {
        k: Series(
            name,
            f"student from {labels[k]}, stored outputs",
            dk.epochs(bases[k], m, "distill"),
            f"{student}; teacher.outputs=precompute from {labels[k]} ({cfg.teacher.combine} "
            "mean); "
            f"{m.long - m.short} epoch{'s' if m.long - m.short > 1 else ''} timed ({m.long} minus "
            f"{m.short}); the store built "
            "beforehand, not in the rate",
        )
        for k in counts
    }
    interleave(list(series.values()), m.repeats)
    rows = []
    for k, s in series.items():
        row = s.row()
        if row.wall_s is not None:
            per_epoch = row.wall_s / (m.long - m.short)
            row.extra["epoch_s"] = per_epoch
            row.note += f"; {per_epoch:.3g} s per epoch"
        if k != 1:
            row.ratio, row.ratio_label = paired_ratio(s, series[1]), "× 1 member's samples/s"
        rows.append(row)
    for k in counts:
        if build_error or not builds[k]:
            rows.append(
                Row(
                    name,
                    f"teacher-output store build, {labels[k]} (one-off)",
                    note=build_error or "not measured",
                )
            )
            continue
        wall = statistics.median(builds[k])
        row = Row(
            name,
            f"teacher-output store build, {labels[k]} (one-off)",
            m.train_size / wall,
            wall,
            m.train_size,
            note=f"the teacher's forward ({labels[k]}) over the {m.train_size:,} images + save + "
            f"load, into a new directory each repeat (median of {len(builds[k])}); not in the "
            "per-epoch rate",
            extra={"repeats_s": builds[k], "members": k},
        )
        if k != 1 and builds[1]:
            row.ratio = wall / statistics.median(builds[1])
            row.ratio_label = "× 1 member's build time"
        rows.append(row)
    return rows


# ---------------------------------------------------------------- environment and output


def changed_paths() -> list[str]:
    try:
        status = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return [ln[3:] for ln in status.splitlines() if not ln[3:].startswith("benchmarks/results/")]


def git_sha() -> str:
    try:
        cmd = ["git", "rev-parse", "HEAD"]
        sha = subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):  # a copy of the tree outside git
        return os.environ.get("DARKKNOWLEDGE_GIT_SHA") or "unknown"
    return sha + ("-dirty" if changed_paths() else "")


def device_info(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        slug = "cuda-" + "-".join(name.lower().split())
        return {"type": "cuda", "name": name, "slug": slug, "cuda": torch.version.cuda}
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"type": "cpu", "name": name, "slug": "cpu"}


def features() -> dict[str, Any]:
    """Which optional RunConfig keys this darkknowledge has (other engineers are adding them)."""
    found: dict[str, Any] = {
        k: has_field(k) for k in ("replicas", "train_step", "precision", "sync_every", "compile")
    }
    found["replicas_override_for_K=2"] = replica_overrides(2)
    return found


def default_variants(arg: str, device: torch.device, mode_name: str) -> list[list[str]]:
    """Extra darkknowledge configs timed beside the defaults in the teacher and distillation
    steps.
    """
    if arg == "none":
        return []
    if arg != "auto":
        return [v.split() for v in arg.split(";") if v.strip()]
    if device.type != "cuda" or mode_name != "full" or not has_field("train_step"):
        return []
    # Each run compiles afresh (twice per repeat), so plain `train_step=compile` is left out.
    out = [["train_step=cuda_graph"]]
    if has_field("precision"):
        out.append(["train_step=cuda_graph", "precision=bf16"])
    return out


class CPUShare:
    """CPUs kept busy by *other* processes: machine-wide busy time (/proc/stat) minus this process
    tree's.
    """

    def __init__(self) -> None:
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.start = self._sample()

    def _sample(self) -> tuple[float, float, float] | None:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / self.tick  # all but idle and iowait
        t = os.times()
        mine = t.user + t.system + t.children_user + t.children_system
        return time.monotonic(), busy, mine

    def others(self) -> float | None:
        """Average number of CPUs busy with other processes since this object was made."""
        end = self._sample()
        if self.start is None or end is None or end[0] <= self.start[0]:
            return None
        other = (end[1] - self.start[1]) - (end[2] - self.start[2])
        return max(other, 0.0) / (end[0] - self.start[0])


def write_outputs(results: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    stamp = results["date_utc"].replace(":", "").replace("-", "")
    stem = f"{results['device']['slug']}-{stamp}-{results['mode']}"
    json_path, csv_path = out / f"{stem}.json", out / f"{stem}.csv"
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    columns = [
        "benchmark",
        "variant",
        "samples_per_s",
        "wall_s",
        "samples",
        "ratio",
        "ratio_label",
        "note",
    ]
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*columns, "device", "torch", "git_sha", "mode", "date_utc"])
        for r in results["rows"]:
            torch_version = r["extra"].get("torch", results["torch"])
            context = [
                results["device"]["name"],
                torch_version,
                results["git_sha"],
                results["mode"],
                results["date_utc"],
            ]
            w.writerow([*(r[c] for c in columns), *context])
    return json_path, csv_path


def plot_scaling(curves: dict[str, Any], path: Path, title: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = [
        ("dataset_size", "images in the epoch", "teacher_1200: one epoch"),
        ("classes", "classes", "distillation, stored outputs: one epoch"),
        ("models", "batched models K", "teacher_1200: K models in one step (timed epochs)"),
    ]
    for ax, (key, xlabel, heading) in zip(axes, panels, strict=True):
        pts = curves.get(key) or []
        ax.set_title(heading, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("seconds")
        if not pts:
            ax.text(0.5, 0.5, "not available", ha="center", va="center", transform=ax.transAxes)
            continue
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, "o-", label="measured")
        if key == "models":
            ax.plot(xs, [ys[0] * x for x in xs], ":", color="gray", label="K × one model")
            ax.plot(xs, [2 * ys[0] for _ in xs], "--", color="red", label="target: 2 × one")
        else:
            if key == "dataset_size":
                ax.plot(xs, [ys[-1] * x / xs[-1] for x in xs], ":", color="gray", label="linear")
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="darkknowledge performance benchmarks (numbers, not tests)"
    )
    p.add_argument("--mode", choices=sorted(MODES), default="reduced")
    p.add_argument(
        "--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument(
        "--torchdistill-python", default=None, help="python of a venv with torchdistill==1.1.5"
    )
    p.add_argument(
        "--only",
        default=None,
        help=f"comma-separated subset of {','.join(BENCHMARKS)} (default: the mode's own set; "
        "cpu mode: cpu_scale,contention; reduced: the first six and contention; full: the "
        "first six; smoke: all)",
    )
    p.add_argument(
        "--full-teacher", action="store_true", help="really run the 3000-epoch teacher recipe"
    )
    p.add_argument(
        "--dk-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra config override for every darkknowledge run",
    )
    p.add_argument(
        "--dk-variants",
        default="auto",
        help="extra darkknowledge configs timed in the teacher and distillation steps: 'auto' "
        "(on CUDA in full mode: train_step=cuda_graph; train_step=cuda_graph precision=bf16, where "
        "these keys exist), 'none', or 'k=v k=v;k=v'",
    )
    p.add_argument(
        "--competitor-threads",
        type=int,
        default=None,
        help="threads of the competing process in the contention benchmark (default: PyTorch's "
        "default, one per core, with OMP_NUM_THREADS removed from its environment)",
    )
    p.add_argument("--note", default="", help="free text stored in the results' notes")
    args = p.parse_args(argv)
    if args.only is None:
        only = set(MODES[args.mode].default_only)
    else:
        only = {s.strip() for s in args.only.split(",") if s.strip()}
    if only - set(BENCHMARKS):
        p.error(
            f"unknown benchmark(s) {sorted(only - set(BENCHMARKS))}; choose from "
            f"{', '.join(BENCHMARKS)}"
        )
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available")

    mode = MODES[args.mode]
    device = torch.device(args.device)
    load_start, cpu_share, started = os.getloadavg(), CPUShare(), time.perf_counter()
    sha, dirty = git_sha(), changed_paths()
    source = Path(darkknowledge.__file__).resolve().parent
    if not source.is_relative_to(ROOT / "src"):  # e.g. PYTHONPATH points at another checkout
        sha += f" (NOT the imported darkknowledge: {source})"
    variants = default_variants(args.dk_variants, device, args.mode)
    rows: list[Row] = []
    curves: dict[str, Any] = {}
    td_info: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}

    with tempfile.TemporaryDirectory(prefix="dk-bench-") as tmp:
        scratch = Path(tmp)
        dk = DK(args.device, scratch, args.dk_override)

        def section(name: str, fn: Callable[[], Any]) -> Any:
            print(
                f"[{time.perf_counter() - started:6.1f}s] {name} ...", file=sys.stderr, flush=True
            )
            t0, share = time.perf_counter(), CPUShare()
            out = fn()
            others = share.others()
            sections[name] = {
                "seconds": round(time.perf_counter() - t0, 2),
                "other_processes_cpus": None if others is None else round(others, 2),
            }
            return out

        distill_rows: list[Row] = []
        replica_rows: list[Row] = []
        if "teacher" in only:
            rows += section("teacher", lambda: bench_teacher(dk, mode, device, variants))
        if "distill" in only or "torchdistill" in only:
            distill_rows = section(
                "distill", lambda: bench_distill(dk, mode, device, scratch, variants)
            )
            rows += distill_rows
        if "replicas" in only or "scaling" in only:
            replica_rows = section("replicas", lambda: bench_replicas(dk, mode))
            rows += replica_rows
        if "torchdistill" in only:
            python = args.torchdistill_python
            td_rows, td_info = section(
                "torchdistill", lambda: bench_torchdistill(python, mode, args.device, distill_rows)
            )
            rows += td_rows
        if "scaling" in only:
            scaling_rows, curves = section(
                "scaling", lambda: bench_scaling(dk, mode, scratch, replica_rows)
            )
            rows += scaling_rows
        if "recipe" in only and (mode.recipe_epochs > 1 or args.full_teacher):
            best = fastest_variant(rows)
            rows += section("recipe", lambda: bench_recipe(dk, mode, args.full_teacher, best))
        if "cpu_scale" in only:
            rows += section("cpu_scale", lambda: bench_cpu_scale(dk, mode, device, scratch))
        if "contention" in only:
            threads = args.competitor_threads
            rows += section(
                "contention", lambda: bench_contention(dk, mode, device, scratch, threads)
            )
        if "ensemble" in only:
            rows += section("ensemble", lambda: bench_ensemble(dk, mode, device, scratch))

    others = cpu_share.others()
    cpus = os.cpu_count() or 1
    info = device_info(device)
    results = {
        "schema": 1,
        "mode": args.mode,
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_sha": sha,
        "uncommitted_paths": dirty,
        "darkknowledge_source": str(source),
        "device": info,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": cpus,
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "features": features(),
        "dk_overrides": args.dk_override,
        "dk_variants": [" ".join(v) for v in variants],
        "benchmarks": [b for b in BENCHMARKS if b in only],
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "competitor_threads": args.competitor_threads,
        "settings": asdict(mode),
        "torchdistill": {
            k: td_info.get(k)
            for k in ("torchdistill", "torch", "python", "torch_threads", "criterion")
        }
        if td_info
        else None,
        "notes": {
            "loadavg_start": [round(x, 2) for x in load_start],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            "other_processes_cpus": None if others is None else round(others, 2),
            "busy": others is not None and others > 0.25 * cpus,
            "mode": mode.notes,
            "text": args.note,
        },
        "sections": sections,
        "total_seconds": round(time.perf_counter() - started, 2),
        "rows": [asdict(r) for r in rows],
    }
    results["targets"] = report.evaluate_targets(results)
    json_path, csv_path = write_outputs(results, args.out)
    png = None
    if curves:
        title = f"darkknowledge scaling: {info['name']}, {args.mode} mode, {results['date_utc']}"
        png = plot_scaling(curves, args.out / f"scaling-{info['slug']}.png", title)
    print(report.markdown(results))
    print(f"\nwrote {json_path}\n      {csv_path}" + (f"\n      {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
