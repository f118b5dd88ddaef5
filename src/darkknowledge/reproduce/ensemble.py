"""The ensemble cell (paper §4, Table 1, as an analogue on images): a baseline single model, an
ensemble of N of them that differ only by seed, and one model of the same architecture distilled
from the ensemble; then, beyond the paper, how many members are worth it.

For each dataset of the scale:

1. the ensemble trains as one batched run (``ensemble.members=N``); the baseline is the mean
   test accuracy of its members (each is exactly the ordinary run with its seed); the ensemble
   is the arithmetic mean of their distributions (the geometric one is recorded too);
2. the students (soft targets from the ensemble at T, the hard term at the paper's weight) train
   at every T of the grid and every step size of ``step_sizes`` as one batched run; both are
   chosen on the validation split, which every run of the cell holds out, so the chosen student
   is the one reported (nothing retrained, nothing chosen on test);
3. students distilled from the first m members (m < N) at the chosen T and step size, and the
ensembles of
   the first m members (their models are already trained), give accuracy against member count.

Rows: ``<metric>_<dataset>`` (accuracy in %, the gain in points, the share of the gain kept as
a fraction), and per member count the variant ``<dataset>_m<m>``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import torch

from darkknowledge.errors import DKError, NonFiniteLossError
from darkknowledge.models import load_model
from darkknowledge.reproduce.results import append_results
from darkknowledge.teachers import member_files
from darkknowledge.train import combined_logits, predict_logits, prepare_data

if TYPE_CHECKING:
    from darkknowledge.reproduce.runner import Cell, Context


def _per_scale(spec: dict[str, Any], key: str, scale: str) -> Any:
    value = spec.get(key)
    return value.get(scale) if isinstance(value, dict) else value


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * float((logits.argmax(dim=-1) == labels).float().mean())


def cell_ensemble(ctx: Context, cell: Cell) -> None:
    spec = cell.ensemble
    members = int(spec["members"])
    temps = [float(t) for t in spec["temperatures"]]
    lrs = [float(v) for v in spec.get("step_sizes") or [cell.run.get("optim", {}).get("lr", 0.1)]]
    counts = sorted(int(m) for m in spec.get("counts") or [members])
    datasets = _per_scale(spec, "datasets", ctx.scale) or [
        cell.run.get("data", {}).get("dataset", "mnist")
    ]
    student = list(spec.get("student") or [])
    if members < 2 or any(not 1 <= m <= members for m in counts):
        raise DKError(
            f"cell {cell.id}: ensemble.members={members} with counts {counts}",
            "use members ≥ 2 and counts between 1 and members",
        )
    for dataset in datasets:
        _one_dataset(ctx, cell, dataset, members, temps, lrs, counts, student)
        if ctx.rows:  # each dataset's rows as soon as it is done: a stopped command keeps them
            append_results(ctx.exp_dir / "results.csv", ctx.rows)
            ctx.rows = []


def _one_dataset(
    ctx: Context,
    cell: Cell,
    dataset: str,
    members: int,
    temps: list[float],
    lrs: list[float],
    counts: list[int],
    student: list[str],
) -> None:
    tag = dataset
    where = [f"data.dataset={dataset}"]
    ens_cfg = ctx.config(
        cell, [*where, f"ensemble.members={members}"], name=f"{cell.id}_{tag}_ensemble"
    )
    ens = ctx.train(ens_cfg, "train")
    ens_dir = ens["run_dir"]
    ctx.record_speed(cell.id, ens, variant=f"{tag}_ensemble")
    splits = prepare_data(ens_cfg.data)
    if splits.valid is None:
        raise DKError(
            f"cell {cell.id} needs a validation split to choose T",
            "set data.validation_size in its run section",
        )
    logits = {}
    for name, ds in (("valid", splits.valid), ("test", splits.test)):
        logits[name] = torch.stack(
            [predict_logits(load_model(f), ds) for f in member_files(ens_dir)]
        )
    labels = splits.test.labels
    member_acc = [_accuracy(z, labels) for z in logits["test"]]
    baseline = sum(member_acc) / len(member_acc)
    ensemble = _accuracy(combined_logits(logits["test"], "arithmetic"), labels)
    ctx.record(cell.id, f"baseline_accuracy_{tag}", baseline, ens)
    ctx.record(cell.id, f"member_accuracy_min_{tag}", min(member_acc), ens)
    ctx.record(cell.id, f"member_accuracy_max_{tag}", max(member_acc), ens)
    ctx.record(cell.id, f"ensemble_accuracy_{tag}", ensemble, ens)
    ctx.record(
        cell.id,
        f"ensemble_geometric_accuracy_{tag}",
        _accuracy(combined_logits(logits["test"], "geometric"), labels),
        ens,
    )
    for m in counts:
        ctx.record(
            cell.id,
            "ensemble_accuracy",
            _accuracy(combined_logits(logits["test"][:m], "arithmetic"), labels),
            ens,
            variant=f"{tag}_m{m}",
        )

    # the students at every (T, step size) as one batched run; both chosen on the validation split
    teach = lambda paths: f"teacher.checkpoints={json.dumps(paths)}"  # noqa: E731
    grid = [(t, lr) for lr in lrs for t in temps]
    s, grid = _students(
        ctx, cell, [*where, *student, teach([ens_dir])], grid, f"{cell.id}_{tag}_students"
    )
    ctx.record_speed(cell.id, s, variant=f"{tag}_students")
    valid_errors = [r["eval"]["valid"]["errors"] for r in s["replicas"]]
    for (t, lr), e in zip(grid, valid_errors, strict=True):
        ctx.record(cell.id, "select_valid_errors", e, s, variant=f"{tag}_T{t:g}_lr{lr:g}")
    best = valid_errors.index(min(valid_errors))  # ties: the first listed
    (chosen, chosen_lr), distilled = (
        grid[best],
        100.0 * s["replicas"][best]["eval"]["test"]["accuracy"],
    )
    ctx.record(cell.id, f"selected_temperature_{tag}", chosen, s)
    ctx.record(cell.id, f"selected_lr_{tag}", chosen_lr, s)
    ctx.record(cell.id, f"distilled_accuracy_{tag}", distilled, s)
    ctx.record(cell.id, "distilled_accuracy", distilled, s, variant=f"{tag}_m{members}")
    gain = ensemble - baseline
    ctx.record(cell.id, f"gain_{tag}", gain, s)
    if gain > 0:
        ctx.record(cell.id, f"gain_kept_{tag}", (distilled - baseline) / gain, s)
    kept = (
        f"share of the gain kept {(distilled - baseline) / gain:.2f}"
        if gain > 0
        else "the ensemble gained nothing"
    )
    print(
        f"[{ctx.scale} seed {ctx.seed}] {cell.id} {tag}: baseline {baseline:.2f}% (members "
        f"{min(member_acc):.2f}-{max(member_acc):.2f}), ensemble of {members} {ensemble:.2f}%, "
        f"distilled at T={chosen:g}, step size {chosen_lr:g}: {distilled:.2f}%; {kept}",
        flush=True,
    )

    # beyond the paper: students of the first m members, at the chosen T
    for m in counts:
        if m == members:
            continue
        paths = [str(f) for f in member_files(ens_dir)[:m]]
        r = ctx.train(
            ctx.config(
                cell,
                [
                    *where,
                    *student,
                    teach(paths),
                    f"method.temperature={chosen}",
                    f"optim.lr={chosen_lr}",
                ],
                name=f"{cell.id}_{tag}_students_m{m}",
            ),
            "distill",
        )
        ctx.record(
            cell.id,
            "distilled_accuracy",
            100.0 * r["eval"]["test"]["accuracy"],
            r,
            variant=f"{tag}_m{m}",
        )


def _students(
    ctx: Context, cell: Cell, extra: list[str], grid: list[tuple[float, float]], name: str
) -> tuple[dict[str, Any], list[tuple[float, float]]]:
    """The students at every (temperature, step size) of ``grid`` as one batched run (replicas
    zip ``method.temperature`` and ``optim.lr``); a student that diverges drops out (said so) and
    the others train again, still batched. Returns the run and the grid points it holds."""
    grid = list(grid)
    while True:
        if len(grid) > 1:
            sweep = [
                f"replicas.method.temperature={json.dumps([t for t, _ in grid])}",
                f"replicas.optim.lr={json.dumps([lr for _, lr in grid])}",
            ]
        else:
            sweep = [f"method.temperature={grid[0][0]}", f"optim.lr={grid[0][1]}"]
        try:
            s = ctx.train(
                ctx.config(
                    cell,
                    [*extra, *sweep],
                    name=name if len(grid) > 1 else f"{name}_T{grid[0][0]:g}_lr{grid[0][1]:g}",
                ),
                "distill",
            )
        except NonFiniteLossError as exc:
            k = exc.replica if len(grid) > 1 else None
            if k is None:
                raise
            print(
                f"[{ctx.scale} seed {ctx.seed}] {cell.id}: the student at T={grid[k][0]:g}, step "
                f"size {grid[k][1]:g} diverged ({exc}); the others train again",
                flush=True,
            )
            grid.pop(k)
            continue
        return (s if len(grid) > 1 else {**s, "replicas": [{"eval": s["eval"]}]}), grid
