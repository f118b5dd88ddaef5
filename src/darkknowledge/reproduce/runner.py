"""``dk reproduce``: run an experiment's table cells, record rows, regenerate its README.

An experiment folder (``experiments/hinton2015``) holds one YAML per table cell under
``configs/``, ``claims.yaml`` (the paper's numbers) and ``results.csv`` (our measured rows).
A cell names its ``kind``; the kinds are the small functions below. Runs go to
``runs/<experiment>/<scale>/seed<k>/<cell>-<config hash>``; a finished run with the same
config is reused (a teacher is trained once and serves every student of that seed), an
unfinished one is resumed from its latest checkpoint.

With several seeds, cells run one after another for all seeds (cell-major), a ``select:``
hyperparameter is chosen once, on the first seed's validation split, and reused by the other
seeds, and the seeds of a ``train`` cell (the teacher, the hard-label student) train together as
one batched run (``replicas.seeds``) whose replicas are placed where each seed's own run goes.
Rows are appended to ``results.csv`` after every cell, so an interrupted command keeps what
it finished.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from darkknowledge.config import (
    RunConfig,
    apply_overrides,
    build_dataclass,
    read_yaml,
    scale_overrides,
)
from darkknowledge.errors import DKError, NonFiniteLossError
from darkknowledge.models import batchable, load_model
from darkknowledge.provenance import source_sha
from darkknowledge.reproduce.ensemble import cell_ensemble
from darkknowledge.reproduce.report import write_report
from darkknowledge.reproduce.results import append_results
from darkknowledge.reproduce.specialists import cell_specialists
from darkknowledge.train import predict_logits, prepare_data, run
from darkknowledge.train.checkpoint import list_checkpoints

SCALES = ("smoke", "cpu", "full")
# Overrides that change how a run executes or reports, not what it computes: rows of a command
# given only these keep their scale's label. Any other override (data.train_size=..., bf16, ...)
# labels its rows ``<scale>-custom``, which the README's smoke/full columns leave out.
EXECUTION_ONLY = (
    "train_step",
    "sync_every",
    "threads",
    "progress",
    "log_every",
    "checkpoint_every",
    "checkpoint_every_steps",
    "tensorboard",
)


@dataclass
class Cell:
    id: str
    kind: str
    run: dict[str, Any]
    scales: dict[str, list[str]]
    teacher: str | None = None
    reference: str | None = None
    sweep: dict[str, Any] = field(default_factory=dict)
    offset: dict[str, Any] = field(default_factory=dict)
    select: dict[str, Any] = field(default_factory=dict)
    # {path, scales}: a trained run in the repository
    shipped: dict[str, Any] = field(default_factory=dict)
    # an ensemble cell: members, datasets, temperatures, ...
    ensemble: dict[str, Any] = field(default_factory=dict)
    # a specialists cell: clusters, train, student
    specialists: dict[str, Any] = field(default_factory=dict)
    # scales at which the cell runs only when named (--only): kept out of that scale's whole table
    on_request: list[str] = field(default_factory=list)


def find_experiment(name: str, root: str | Path | None) -> Path:
    candidates = (
        [Path(root) / name]
        if root
        else [
            Path.cwd() / "experiments" / name,
            Path(__file__).resolve().parents[3] / "experiments" / name,
        ]
    )
    for c in candidates:
        if (c / "configs").is_dir():
            return c
    raise DKError(
        f"experiment {name!r} not found (looked in {', '.join(str(c) for c in candidates)})",
        "run from the repository root or pass --root path/to/experiments",
    )


def load_cells(exp_dir: Path) -> dict[str, Cell]:
    cells = {}
    for path in sorted((exp_dir / "configs").glob("*.yaml")):
        raw = read_yaml(path)
        scales = {scale: scale_overrides(raw, scale) for scale in (raw.get("scales") or {})}
        cell = Cell(
            id=raw["cell"],
            kind=raw["kind"],
            run=raw.get("run") or {},
            scales=scales,
            teacher=raw.get("teacher"),
            reference=raw.get("reference"),
            sweep=raw.get("sweep") or {},
            offset=raw.get("offset") or {},
            select=raw.get("select") or {},
            shipped=raw.get("shipped") or {},
            ensemble=raw.get("ensemble") or {},
            specialists=raw.get("specialists") or {},
            on_request=list(raw.get("on_request") or []),
        )
        if cell.kind not in KINDS:
            raise DKError(
                f"{path}: unknown cell kind {cell.kind!r}", f"use one of {', '.join(KINDS)}"
            )
        cells[cell.id] = cell
    return cells


class Context:
    """What every cell function needs: scale, seed, where runs go, and row recording."""

    def __init__(
        self,
        exp_dir: Path,
        cells: dict[str, Cell],
        scale: str,
        seed: int,
        overrides: list[str],
        device: str,
        runs_root: Path,
        selected: dict[str, list[str]] | None = None,
        ranking: dict[str, list[tuple[Any, float]]] | None = None,
        retrain: bool = False,
    ) -> None:
        self.exp_dir, self.cells, self.scale, self.seed = exp_dir, cells, scale, seed
        self.retrain = retrain  # train cells that ship a trained run anew
        self.overrides, self.device, self.runs_root = overrides, device, runs_root
        self.rows: list[dict[str, Any]] = []
        self.done: dict[str, dict[str, Any]] = {}  # cell id → summary of its main run
        self.last_summary: dict[str, Any] = {}  # the last run a select step trained (for its rows)
        # cell id → overrides chosen on the validation split; shared by the seeds of one command
        self.selected: dict[str, list[str]] = {} if selected is None else selected
        # cell id → [(value, validation errors)], best first: the fallbacks of a rejected final run
        self.ranking: dict[str, list[tuple[Any, float]]] = {} if ranking is None else ranking
        self.sha = source_sha()  # rows of runs whose summary names no commit (older runs)
        custom = any(o.split("=", 1)[0].strip() not in EXECUTION_ONLY for o in overrides)
        self.label = f"{scale}-custom" if custom else scale  # the rows' scale column

    def config(self, cell: Cell, extra: list[str] = (), name: str | None = None) -> RunConfig:
        extra = [*self.selected.get(cell.id, []), *extra]
        data = copy.deepcopy(cell.run)
        data.update(seed=self.seed, device=self.device, progress=True)
        if cell.teacher:
            data.setdefault("teacher", {})["checkpoints"] = [self.done[cell.teacher]["run_dir"]]
        data = apply_overrides(data, cell.scales.get(self.scale, []) + list(extra) + self.overrides)
        cfg = build_dataclass(RunConfig, data, "")
        cfg.run_dir = str(
            self.runs_root
            / self.scale
            / f"seed{self.seed}"
            / f"{name or cell.id}-{cfg.hash()[:10]}"
        )
        return cfg

    def train(self, cfg: RunConfig, kind: str) -> dict[str, Any]:
        """Run ``cfg`` unless an identical finished run exists; resume an unfinished one."""
        run_dir = Path(cfg.run_dir)
        summary = finished_run(cfg)
        if summary is not None:
            summary["reused"] = True
            summary["run_dir"] = str(run_dir)
            return summary
        started = list_checkpoints(run_dir / "checkpoints") or (run_dir / "generations").is_dir()
        resume = "auto" if started else "never"
        summary = run(cfg, kind=kind, resume=resume)
        summary["run_dir"] = str(run_dir)
        return summary

    def record(
        self, cell: str, metric: str, value: float, summary: dict[str, Any], variant: str = ""
    ) -> None:
        self.rows.append(
            {
                "cell": cell,
                "variant": variant,
                "scale": self.label,
                "seed": self.seed,
                "device": summary["device"],
                "metric": metric,
                "value": _fmt(value),
                # a reused run keeps the commit and date of the command that trained it
                "wall_seconds": f"{summary['wall_seconds']:.1f}",
                "git_sha": summary.get("git_sha") or self.sha,
                "date": summary.get("finished_utc")
                or dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "config_hash": summary["config_hash"][:10],
            }
        )

    def record_speed(self, cell: str, summary: dict[str, Any], variant: str = "") -> None:
        """The machine's training speed in this run: examples seen per second of training
        (every model of a batched run counted)."""
        models = len(summary.get("replicas") or [None])
        seen = summary["transfer_set"]["size"] * summary["epochs"] * models
        if summary.get("train_seconds"):
            self.record(
                cell, "samples_per_s", seen / summary["train_seconds"], summary, variant=variant
            )


def finished_run(cfg: RunConfig, run_dir: str | Path | None = None) -> dict[str, Any] | None:
    """The summary of a finished run of exactly ``cfg`` in ``run_dir`` (default: its own), else
    None.
    """
    path = Path(run_dir or cfg.run_dir) / "summary.json"
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    return summary if summary.get("config_hash") == cfg.hash() else None


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.6g}"


# ------------------------------------------------------------------ cell kinds


def select_on_validation(ctx: Context, cell: Cell, kind: str) -> None:
    """Choose one hyperparameter (``select.key``) on the validation split, never on test.

    Each candidate trains on the transfer set minus a held-out validation split; the value
    with fewest validation errors (ties: the first listed) is then used for the cell's real
    run on the whole transfer set. The first seed chooses; later seeds of the same command
    reuse its choice (``Context.selected`` is shared). Step-size candidates of an SGD-family
    optimizer train as one batched run (``replicas.optim.lr``, each replica equal to its own
    run); ``select: {batched: false}``, another key or a diverging candidate trains them one by
    one. Used for the students' step size: high-T soft targets need a step size of their own
    (PAPER.md §6).
    """
    sel = cell.select
    if not sel or cell.id in ctx.selected:  # nothing to choose, or chosen on an earlier seed
        return
    # this scale keeps the value as configured
    if "scales" in sel and ctx.scale not in sel["scales"]:
        return
    key, values = sel["key"], sel["values"]
    scores = _select_batched(ctx, cell, kind, key, values) if sel.get("batched", True) else None
    if scores is None:
        scores = _select_one_by_one(ctx, cell, kind, key, values)
    if all(math.isinf(x) for x in scores):
        raise DKError(
            f"cell {cell.id}: every candidate {key} in {values} diverged",
            f"add smaller values to select.values in {cell.id}.yaml",
        )
    # best first; ties keep the listed order (sorted is stable); diverged candidates drop out
    ctx.ranking[cell.id] = sorted(
        ((v, x) for v, x in zip(values, scores, strict=True) if not math.isinf(x)),
        key=lambda vx: vx[1],
    )
    ctx.selected[cell.id] = [f"{key}={ctx.ranking[cell.id][0][0]}"]


def _candidate_overrides(ctx: Context, cell: Cell) -> list[str]:
    """What a candidate run changes: the validation split it is scored on, and the scale's
    ``select.candidate`` overrides (a shorter schedule, where the cell's budget needs one)."""
    sel = cell.select
    size = (
        sel["validation_size"][ctx.scale]
        if isinstance(sel["validation_size"], dict)
        else sel["validation_size"]
    )
    extra = sel.get("candidate") or {}
    extra = extra.get(ctx.scale, []) if isinstance(extra, dict) else extra
    return [f"data.validation_size={size}", *extra]


def _select_batched(
    ctx: Context, cell: Cell, kind: str, key: str, values: list
) -> list[float] | None:
    """Validation errors of the step-size candidates trained as one batched run
    (``replicas.optim.lr``, each replica equal to its candidate's own run); None when the
    candidates cannot be batched (another key, another optimizer), and they are then trained one
    by one. A diverging candidate's score is inf."""
    probe = ctx.config(cell)
    if (
        key != "optim.lr"
        or not batchable(probe.model["name"])
        or len(values) < 2
        or probe.optim.name not in ("sgd", "paper_dropout")
        or probe.optim.weight_decay
    ):
        return None
    runs = _batched_step_sizes(
        ctx,
        cell,
        kind,
        values,
        _candidate_overrides(ctx, cell),
        f"{cell.id}_select_{key}",
        "select",
    )
    if runs is None:
        return None
    scores = []
    for value, r in zip(values, runs, strict=True):
        if r is None:
            scores.append(math.inf)
            continue
        scores.append(r["eval"]["valid"]["errors"])
        ctx.record(cell.id, "select_valid_errors", scores[-1], r, variant=f"{key}={value}")
        ctx.last_summary = r
        print(
            f"[{ctx.scale} seed {ctx.seed}] {cell.id} select {key}={value}: {scores[-1]} "
            f"validation errors / {r['eval']['valid']['n']} (candidates as one batched run, "
            f"{r['wall_seconds']:.1f}s on {r['device']})",
            flush=True,
        )
    return scores


def _batched_step_sizes(
    ctx: Context, cell: Cell, kind: str, values: list, extra: list[str], name: str, what: str
) -> list[dict[str, Any] | None] | None:
    """Runs of the cell with each step size in ``values``, trained as one batched run
    (``replicas.optim.lr``): one summary per value (its replica's evaluation), None for a value
    that diverged. A diverging step size drops out and the others train again, still batched (a
    diverging replica stops the whole batched run); None when the divergence names no replica."""
    runs: dict[int, dict[str, Any] | None] = {}
    left = list(range(len(values)))
    while left:
        lrs = [float(values[i]) for i in left]
        overrides = (
            [f"replicas.optim.lr={json.dumps(lrs)}"] if len(lrs) > 1 else [f"optim.lr={lrs[0]}"]
        )
        try:
            s = ctx.train(
                ctx.config(
                    cell, [*overrides, *extra], name=name if len(lrs) > 1 else f"{name}={lrs[0]}"
                ),
                kind,
            )
        except NonFiniteLossError as exc:
            k = exc.replica if len(lrs) > 1 else 0
            if k is None:
                return None
            print(
                f"[{ctx.scale} seed {ctx.seed}] {cell.id} {what} optim.lr={values[left[k]]}: "
                f"diverged ({exc}); the others train again",
                flush=True,
            )
            runs[left.pop(k)] = None
            continue
        for i, r in zip(left, s["replicas"] if len(lrs) > 1 else [s], strict=True):
            runs[i] = {**s, "eval": r["eval"]}
        break
    return [runs[i] for i in range(len(values))]


def _select_one_by_one(ctx: Context, cell: Cell, kind: str, key: str, values: list) -> list[float]:
    scores = []
    for value in values:
        cfg = ctx.config(
            cell,
            [f"{key}={value}", *_candidate_overrides(ctx, cell)],
            name=f"{cell.id}_select_{key}={value}",
        )
        try:
            s = ctx.train(cfg, kind)
        except NonFiniteLossError as exc:  # a step size too large for this loss: not a candidate
            scores.append(math.inf)
            print(
                f"[{ctx.scale} seed {ctx.seed}] {cell.id} select {key}={value}: diverged ({exc})",
                flush=True,
            )
            continue
        scores.append(s["eval"]["valid"]["errors"])
        ctx.record(cell.id, "select_valid_errors", scores[-1], s, variant=f"{key}={value}")
        ctx.last_summary = s
        print(
            f"[{ctx.scale} seed {ctx.seed}] {cell.id} select {key}={value}: {scores[-1]} "
            f"validation errors / {s['eval']['valid']['n']}, {s['wall_seconds']:.1f}s on "
            f"{s['device']}",
            flush=True,
        )
    return scores


# a final run worse than this on the validation images is rejected
REJECT_FACTOR, REJECT_SLACK = 1.5, 5


def train_selected(ctx: Context, cell: Cell, kind: str) -> dict[str, Any]:
    """The cell's run with the value chosen on the validation split, checked, with a fallback.

    A chosen value can still train to a bad run on the whole transfer set (a step size at the
    edge of stability: the smoke scale's logit matching once chose ``optim.lr=0.01`` on 105
    validation errors of 2000 and then ended at 1898 test errors of 10000). The final run has
    trained on the validation images, so it should do better on them than its candidate, which
    never saw them, did; a run that makes more than ``REJECT_FACTOR`` × (+ ``REJECT_SLACK``) its
    candidate's errors on them (or diverges) is rejected, said so in the output and in a
    ``select_rejected`` row, and the next candidate (by validation errors) is trained instead. The
    margin keeps a sound run that still holds the split out (a reduced config) from being
    rejected for noise. The check reads the validation split only, never the test set.
    """
    ranking = ctx.ranking.get(cell.id)
    if not ranking:  # nothing selected at this scale: the configured value
        return ctx.train(ctx.config(cell), kind)
    key = cell.select["key"]
    for i, (value, held_out) in enumerate(ranking):
        ctx.selected[cell.id] = [f"{key}={value}"]
        cfg = ctx.config(cell)
        try:
            s = ctx.train(cfg, kind)
        except NonFiniteLossError as exc:
            seen, n, s, why = math.inf, 0, ctx.last_summary, f"diverged ({exc})"
        else:
            seen, n = _errors_on_validation_images(ctx, cell, cfg.run_dir)
            why = (
                f"{seen} errors on the {n} validation images it trained on, more than "
                f"{REJECT_FACTOR:g} × {held_out:g} + {REJECT_SLACK} (its candidate's errors on "
                "them, unseen)"
            )
        if seen <= REJECT_FACTOR * held_out + REJECT_SLACK:
            ctx.ranking[cell.id] = ranking[i:]  # later seeds start from the value that held
            ctx.record(cell.id, f"selected_{key}", float(value), s)
            ctx.record(cell.id, "final_errors_on_valid_images", seen, s)
            return s
        ctx.record(cell.id, "select_rejected", seen, s, variant=f"{key}={value}")
        nxt = (
            f"; trying {key}={ranking[i + 1][0]}, the next best on validation"
            if i + 1 < len(ranking)
            else ""
        )
        print(
            f"[{ctx.scale} seed {ctx.seed}] {cell.id}: WARNING the run with the selected "
            f"{key}={value} is rejected: {why}{nxt}",
            flush=True,
        )
    raise DKError(
        f"cell {cell.id}: every {key} candidate that did well on validation trained to a rejected "
        "run on the whole transfer set",
        f"add smaller values to select.values in {cell.id}.yaml",
    )


def _errors_on_validation_images(ctx: Context, cell: Cell, run_dir: str) -> tuple[int, int]:
    """Errors of the model in ``run_dir`` on the select step's validation images."""
    cfg = ctx.config(cell, _candidate_overrides(ctx, cell))
    valid = prepare_data(cfg.data).valid
    logits = predict_logits(load_model(run_dir), valid)
    return int((logits.argmax(dim=1) != valid.labels).sum()), len(valid)


def shipped_run(ctx: Context, cell: Cell) -> dict[str, Any] | None:
    """The summary of the trained run the repository ships for this cell at this scale, or None.

    The smoke scale distils from the cpu scale's teacher, shipped in the repository
    (``experiments/hinton2015/shipped/``), so that minutes of CPU show the paper's effects with a
    paper-grade teacher; ``--retrain-teacher`` trains the smoke scale's own teacher instead. Its
    checksum is verified and its test errors are measured again here, not copied from its summary.
    """
    spec = cell.shipped
    if not spec or ctx.scale not in spec.get("scales", []) or ctx.retrain:
        return None
    where = ctx.exp_dir / spec["path"]
    fix = f"restore it (git checkout -- {where}) or pass --retrain-teacher to train one"
    try:
        summary = json.loads((where / "summary.json").read_text())
        digest = hashlib.sha256((where / "model.safetensors").read_bytes()).hexdigest()
    except (OSError, ValueError) as exc:
        raise DKError(
            f"the shipped run of {cell.id} in {where} cannot be read ({exc.__class__.__name__})",
            fix,
        ) from None
    if digest != summary.get("model_sha256"):
        raise DKError(
            f"the shipped model of {cell.id} ({where / 'model.safetensors'}) does not match its "
            "checksum",
            fix,
        )
    test = prepare_data(ctx.config(cell).data).test
    logits = predict_logits(load_model(where), test)
    errors = int((logits.argmax(dim=1) != test.labels).sum())
    # the path as the user's runs name it: relative, so config hashes do not depend on the clone's
    # place
    try:
        run_dir = str(where.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        run_dir = str(where)
    t0 = summary["eval"]["test"]
    print(
        f"[{ctx.scale} seed {ctx.seed}] {cell.id}: the shipped {spec.get('trained_at', '')} run "
        f"({where}, trained at {summary.get('git_sha', '?')[:10]}): {errors} test errors / "
        f"{len(test)} (its summary: {t0['errors']} / {t0['n']})",
        flush=True,
    )
    return {
        **summary,
        "eval": {"test": {"errors": errors, "n": len(test)}},
        "run_dir": run_dir,
        "reused": True,
        "shipped": True,
    }


def cell_train(ctx: Context, cell: Cell, kind: str = "train") -> None:
    shipped = shipped_run(ctx, cell)
    if shipped is not None:
        ctx.done[cell.id] = shipped
        ctx.record(cell.id, "test_errors", shipped["eval"]["test"]["errors"], shipped, variant="")
        return
    select_on_validation(ctx, cell, kind)
    s = train_selected(ctx, cell, kind)
    ctx.done[cell.id] = s
    ctx.record(cell.id, "test_errors", s["eval"]["test"]["errors"], s)
    ctx.record_speed(cell.id, s)
    if "valid" in s["eval"]:
        ctx.record(cell.id, "valid_errors", s["eval"]["valid"]["errors"], s)
    record_generations(ctx, cell, s)


def record_generations(ctx: Context, cell: Cell, s: dict[str, Any]) -> None:
    """A born-again run (``generations=N``): each generation's test errors (variant ``gen<k>``)
    and those of their ensemble (variant ``ensemble``, the arithmetic mean at T = 1)."""
    for g in s.get("generations") or []:
        errors = g["eval"]["test"]["errors"]
        ctx.record(cell.id, "test_errors", errors, s, variant=f"gen{g['generation']}")
    ensemble = (s.get("ensemble") or {}).get("test")
    if ensemble:
        ctx.record(cell.id, "test_errors", ensemble["arithmetic"]["errors"], s, variant="ensemble")


def train_seeds_together(ctxs: list[Context], cell: Cell) -> None:
    """Train a ``train`` cell for every seed as one batched run (``replicas.seeds``).

    Replica ``k`` is exactly seed ``k``'s own run (docs/performance.md), so its files are copied
    to where that run goes; ``cell_train`` then finds each seed's run finished and reuses it.
    Rows of these seeds share the batched run's wall time. A replica whose config differs from
    its seed's run (it should not) is not placed, and that seed trains alone; so does every seed
    of a model that replicas cannot batch (a CNN).
    """
    first = ctxs[0]
    if shipped_run(first, cell) is not None:  # every seed's students distil from the shipped run
        return
    select_on_validation(first, cell, "train")
    if not batchable(first.config(cell).model["name"]):  # each seed trains alone (cell_train)
        return
    targets = [ctx.config(cell) for ctx in ctxs]
    if all(finished_run(t) is not None for t in targets):
        return
    seeds = [ctx.seed for ctx in ctxs]
    batched = first.config(cell, [f"replicas.seeds={json.dumps(seeds)}"], name=f"{cell.id}_seeds")
    s = first.train(batched, "train")
    print(
        f"[{first.scale}] {cell.id}: seeds {seeds} trained as one batched run, "
        f"{s['wall_seconds']:.1f}s on {s['device']}",
        flush=True,
    )
    for target, replica in zip(targets, batched.replica_configs(), strict=True):
        if finished_run(target) is not None:
            continue
        if finished_run(target, replica.run_dir) is None:
            print(
                f"[{first.scale}] {cell.id} seed {replica.seed}: the batched replica's config "
                "differs from the seed's run; training it alone",
                flush=True,
            )
            continue
        Path(target.run_dir).mkdir(parents=True, exist_ok=True)
        for f in Path(replica.run_dir).iterdir():
            if f.is_file():
                shutil.copy2(f, Path(target.run_dir) / f.name)


def cell_distill(ctx: Context, cell: Cell) -> None:
    cell_train(ctx, cell, kind="distill")


def cell_sweep(ctx: Context, cell: Cell) -> None:
    """Students of each width across temperatures. With ``batched: true`` (the default) the
    students of one width train together as one batched computation (``replicas``), each
    exactly as its own run would (docs/performance.md); rows then share that run's wall time."""
    temps = cell.sweep["temperatures"]
    widths = cell.sweep["widths"]
    # per scale, or one list for all
    widths = widths[ctx.scale] if isinstance(widths, dict) else widths
    for width in widths:
        hidden = [f"model.hidden=[{width},{width}]", *_width_overrides(cell, width, ctx.scale)]
        if cell.sweep.get("batched", True):
            cfg = ctx.config(
                cell,
                [*hidden, f"replicas.method.temperature={json.dumps(temps)}"],
                name=f"{cell.id}_w{width}",
            )
            s = ctx.train(cfg, "distill")
            ctx.record_speed(cell.id, s, variant=f"w{width}")
            for temp, replica in zip(temps, s["replicas"], strict=True):
                variant = f"w{width}_T{temp:g}"
                ctx.record(
                    cell.id, "test_errors", replica["eval"]["test"]["errors"], s, variant=variant
                )
                _say(ctx, f"{cell.id} {variant}", {**s, "eval": replica["eval"]})
            continue
        for temp in temps:
            variant = f"w{width}_T{temp:g}"
            cfg = ctx.config(
                cell, [*hidden, f"method.temperature={temp}"], name=f"{cell.id}_{variant}"
            )
            s = ctx.train(cfg, "distill")
            ctx.record(cell.id, "test_errors", s["eval"]["test"]["errors"], s, variant=variant)
            _say(ctx, f"{cell.id} {variant}", s)


def _width_overrides(cell: Cell, width: int, scale: str) -> list[str]:
    """``sweep.per_width``: overrides for the students of one width (after the scale's own), as
    one list for every scale or a mapping scale → list."""
    extra = (cell.sweep.get("per_width") or {}).get(width) or []
    extra = extra.get(scale, []) if isinstance(extra, dict) else extra
    if not isinstance(extra, list) or not all(isinstance(o, str) for o in extra):
        raise DKError(
            f"cell {cell.id}: sweep.per_width.{width} must be a list of key=value overrides (or "
            "scale: list)",
            "write it as e.g. {30: [optim.lr=0.02]}",
        )
    return extra


def errors_with_offsets(
    logits: torch.Tensor, labels: torch.Tensor, classes: list[int], offsets: torch.Tensor
) -> torch.Tensor:
    """Errors for each bias offset added to the logits of ``classes``: (len(offsets),)."""
    shifted = logits.unsqueeze(0).repeat(len(offsets), 1, 1)
    shifted[:, :, classes] += offsets.view(-1, 1, 1)
    return (shifted.argmax(dim=2) != labels.unsqueeze(0)).sum(dim=1)


def best_offset(
    logits: torch.Tensor, labels: torch.Tensor, classes: list[int], offsets: torch.Tensor
) -> float:
    """The offset with fewest errors (ties: the smallest magnitude, i.e. the first in the grid)."""
    errs = errors_with_offsets(logits, labels, classes, offsets)
    return float(offsets[int(torch.argmin(errs))])


def cell_offset(ctx: Context, cell: Cell) -> None:
    """Omitted classes (§3): errors before and after shifting the bias of the affected classes.

    (a) the offset is chosen on the validation split; (b) on the test set, as the paper did
    (labelled ``test_tuned``). Both are reported; only (a) is a fair generalization estimate.
    """
    cfg = ctx.config(cell)
    s = ctx.train(cfg, "distill")
    ctx.done[cell.id] = s
    ctx.record_speed(cell.id, s)
    classes = [int(c) for c in cell.offset["classes"]]
    start, stop, step = cell.offset["grid"]
    sign = 1.0 if cell.offset["direction"] == "raise" else -1.0
    offsets = sign * torch.arange(start, stop + step / 2, step, dtype=torch.float32)
    splits = prepare_data(cfg.data)
    if splits.valid is None:
        raise DKError(
            f"cell {cell.id} needs a validation split to choose its offset",
            "set data.validation_size",
        )
    model = load_model(cfg.run_dir)
    logits = {
        name: predict_logits(model, ds)
        for name, ds in (("valid", splits.valid), ("test", splits.test))
    }
    test_labels = splits.test.labels
    on = torch.isin(test_labels, torch.tensor(classes))
    tag = "_".join(str(c) for c in classes)

    def report(suffix: str, offset: float) -> None:
        errs = errors_with_offsets(logits["test"], test_labels, classes, torch.tensor([offset]))[0]
        errs_on = errors_with_offsets(
            logits["test"][on], test_labels[on], classes, torch.tensor([offset])
        )[0]
        ctx.record(cell.id, f"test_errors{suffix}", int(errs), s)
        ctx.record(cell.id, f"test_error_rate{suffix}", 100.0 * float(errs) / len(test_labels), s)
        ctx.record(cell.id, f"test_errors_on_{tag}{suffix}", int(errs_on), s)

    report("", 0.0)
    valid_offset = best_offset(logits["valid"], splits.valid.labels, classes, offsets)
    ctx.record(cell.id, "offset_valid", valid_offset, s)
    report("_valid_offset", valid_offset)
    test_offset = best_offset(logits["test"], test_labels, classes, offsets)
    ctx.record(cell.id, "offset_test_tuned", test_offset, s)
    report("_test_tuned_offset", test_offset)


def cell_regularizer(ctx: Context, cell: Cell) -> None:
    """Soft targets as a regularizer (§6): a small transfer set, hard+early stopping vs soft."""
    ref = ctx.done[cell.reference]
    hard_cfg = ctx.config(
        cell,
        ["method={name: hard_targets}", "select_best_on=valid", "eval_every=1"],
        name=f"{cell.id}_hard",
    )
    hard = ctx.train(hard_cfg, "train")
    _say(ctx, f"{cell.id} hard (early stopping at epoch {hard.get('best_epoch')})", hard)
    soft = _soft_arm(ctx, cell)
    _say(ctx, f"{cell.id} soft", soft)
    ctx.done[cell.id] = soft
    h, s_, full = (
        hard["eval"]["test"]["errors"],
        soft["eval"]["test"]["errors"],
        ref["eval"]["test"]["errors"],
    )
    ctx.record(cell.id, "hard_test_errors", h, hard)
    ctx.record(cell.id, "hard_best_epoch", hard.get("best_epoch") or 0, hard)
    ctx.record(cell.id, "soft_test_errors", s_, soft)
    ctx.record(cell.id, "full_data_hard_test_errors", full, ref)
    if h != full:
        ctx.record(cell.id, "gap_closed", (h - s_) / (h - full), soft)


def _soft_arm(ctx: Context, cell: Cell) -> dict[str, Any]:
    """The soft-target run of a regularizer cell; with ``select:``, its step size chosen on the
    validation split. The candidates train on the cell's own transfer set (the validation split
    is already held out of it), so the best candidate is the run: nothing is retrained. Step
    sizes train as one batched run (``replicas.optim.lr``); a diverging one drops out."""
    sel = cell.select
    if not sel or ("scales" in sel and ctx.scale not in sel["scales"]):
        return ctx.train(ctx.config(cell, name=f"{cell.id}_soft"), "distill")
    key, values = sel["key"], sel["values"]
    if key != "optim.lr":
        raise DKError(
            f"cell {cell.id}: select.key={key} is not supported for a regularizer cell",
            "select optim.lr",
        )
    runs = _batched_step_sizes(
        ctx, cell, "distill", values, [], f"{cell.id}_soft_select", "soft arm"
    )
    if runs is None:  # a divergence that names no replica: one by one
        runs = []
        for value in values:
            try:
                runs.append(
                    ctx.train(
                        ctx.config(
                            cell, [f"optim.lr={value}"], name=f"{cell.id}_soft_{key}={value}"
                        ),
                        "distill",
                    )
                )
            except NonFiniteLossError:
                runs.append(None)
    scores = [math.inf if r is None else r["eval"]["valid"]["errors"] for r in runs]
    if all(math.isinf(x) for x in scores):
        raise DKError(
            f"cell {cell.id}: every soft-arm {key} in {values} diverged",
            f"add smaller values to select.values in {cell.id}.yaml",
        )
    for value, r in zip(values, runs, strict=True):
        if r is not None:
            ctx.record(
                cell.id,
                "soft_select_valid_errors",
                r["eval"]["valid"]["errors"],
                r,
                variant=f"{key}={value}",
            )
    best = scores.index(min(scores))
    ctx.record(cell.id, f"soft_selected_{key}", float(values[best]), runs[best])
    return runs[best]


KINDS: dict[str, Callable[[Context, Cell], None]] = {
    "train": cell_train,
    "distill": cell_distill,
    "sweep": cell_sweep,
    "offset": cell_offset,
    "regularizer": cell_regularizer,
    "ensemble": cell_ensemble,
    "specialists": cell_specialists,
}


def _say(ctx: Context, what: str, s: dict[str, Any]) -> None:
    t = s["eval"]["test"]
    tag = " (reused)" if s.get("reused") else ""
    print(
        f"[{ctx.scale} seed {ctx.seed}] {what}: {t['errors']} test errors / {t['n']}, "
        f"{s['wall_seconds']:.1f}s on {s['device']}{tag}",
        flush=True,
    )


def _order(cells: dict[str, Cell], only: list[str] | None, scale: str | None = None) -> list[str]:
    """The cells to run, each after the cells it needs; without ``only``, every cell but those
    that run at ``scale`` only when named (``on_request``)."""
    wanted = [c for c in cells if scale not in cells[c].on_request] if not only else only
    unknown = [c for c in wanted if c not in cells]
    if unknown:
        raise DKError(f"unknown cell(s) {', '.join(unknown)}", f"choose from {', '.join(cells)}")
    order: list[str] = []

    def visit(cid: str) -> None:
        cell = cells[cid]
        for dep in (cell.teacher, cell.reference):
            if dep and dep not in order:
                visit(dep)
        if cid not in order:
            order.append(cid)

    for cid in wanted:
        visit(cid)
    return order


def report_only(experiment: str, root: str | None = None) -> int:
    """Regenerate the experiment README's table (and plot) from ``results.csv``; train nothing."""
    print(write_report(find_experiment(experiment, root)))
    return 0


def reproduce(
    experiment: str,
    only: list[str] | None = None,
    scale: str = "smoke",
    seeds: int = 1,
    root: str | None = None,
    device: str = "auto",
    overrides: list[str] = (),
    runs_root: str | None = None,
    batch_seeds: bool = True,
    retrain_teacher: bool = False,
) -> int:
    """Run the cells (and what they depend on), append rows, regenerate and print the table.

    ``batch_seeds``: train the seeds of each ``train`` cell as one batched run (default);
    False trains every seed's run on its own. ``retrain_teacher``: train the cells that ship a
    trained run (the smoke scale's teacher) instead of using it.
    """
    if scale not in SCALES:
        raise DKError(f"unknown scale {scale!r}", f"choose {' or '.join(SCALES)}")
    if seeds < 1:
        raise DKError(f"--seeds {seeds} must be ≥ 1", "give a positive number of seeds")
    exp_dir = find_experiment(experiment, root)
    cells = load_cells(exp_dir)
    order = _order(cells, only, scale)
    runs = Path(runs_root) if runs_root else Path("runs") / experiment
    started = time.perf_counter()
    selected: dict[str, list[str]] = {}
    ranking: dict[str, list[tuple[Any, float]]] = {}
    ctxs = [
        Context(
            exp_dir,
            cells,
            scale,
            seed,
            list(overrides),
            device,
            runs,
            selected,
            ranking,
            retrain_teacher,
        )
        for seed in range(seeds)
    ]
    for cid in order:
        cell = cells[cid]
        if batch_seeds and seeds > 1 and cell.kind == "train":
            train_seeds_together(ctxs, cell)
        for ctx in ctxs:
            KINDS[cell.kind](ctx, cell)
            if cell.kind in ("train", "distill", "offset"):
                _say(ctx, cid, ctx.done[cid])
            if ctx.rows:
                append_results(exp_dir / "results.csv", ctx.rows)
                ctx.rows = []
    table = write_report(exp_dir)
    print(table)
    print(
        f"\n{len(order)} cells × {seeds} seed(s) at {scale} scale in "
        f"{time.perf_counter() - started:.0f}s; rows appended to {exp_dir / 'results.csv'}"
    )
    return 0


def dump_cells(exp_dir: Path) -> str:
    return yaml.safe_dump({cid: c.kind for cid, c in load_cells(exp_dir).items()})
