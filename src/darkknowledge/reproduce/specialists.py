"""The specialists cell (paper §5, Tables 3 and 4), and the debt the paper leaves: the whole
system distilled back into one network of the generalist's size.

1. the generalist trains as an ordinary run (the cell's ``run:``, validation held out);
2. clusters of confusable classes come from its predictions over the training images alone;
3. the specialists train as one batched model (``darkknowledge.specialists.train``) and are saved
   as model files, with the clusters, in a directory keyed by everything they depend on;
4. the system (generalist + active specialists + the KL combination) is evaluated on the test set
   in the shape of Tables 3 and 4;
5. one student of the generalist's architecture learns the system's combined distributions over
   the training images; its accuracy and inference cost are set beside the system's.

Rows (variant ""): ``top1_generalist``, ``top1_with_specialists``, ``relative_gain``,
``conditional_*``, ``top1_distilled``, ``gain_kept``, parameters and latency; per number of
covering specialists, the variant ``covering<k>``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from darkknowledge.data import atomic_write_bytes
from darkknowledge.errors import DKError
from darkknowledge.models import BatchedMLP, build_model, load_model, save_model
from darkknowledge.provenance import source_sha
from darkknowledge.specialists.clusters import clusters_from_covariance, streamed_covariance
from darkknowledge.specialists.evaluate import specialist_tables
from darkknowledge.specialists.system import DistillSettings, accuracy, distill_into_one, predict
from darkknowledge.specialists.train import SpecialistSettings, train_specialists
from darkknowledge.train import predict_logits, prepare_data

if TYPE_CHECKING:
    from darkknowledge.reproduce.runner import Cell, Context


def _at_scale(value: Any, scale: str) -> Any:
    return value.get(scale) if isinstance(value, dict) and scale in value else value


def _settings(spec: dict[str, Any], scale: str) -> dict[str, Any]:
    return {k: _at_scale(v, scale) for k, v in (spec or {}).items()}


def _stage(ctx: Context, seconds: float, key: str) -> dict[str, Any]:
    """What a row needs of a stage that is not an ordinary run (its own key as the config hash)."""
    return {
        "device": "cpu",
        "wall_seconds": seconds,
        "config_hash": key,
        "git_sha": source_sha(),
        "finished_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _latency_ms(fn: Any, x: torch.Tensor, repeats: int = 200) -> float:
    """Median milliseconds per single-image call of ``fn`` (after a warm-up)."""
    times = []
    with torch.no_grad():
        for i in range(repeats + 10):
            xi = x[i % len(x)].unsqueeze(0)
            t0 = time.perf_counter()
            fn(xi)
            if i >= 10:
                times.append(time.perf_counter() - t0)
    return 1000.0 * sorted(times)[len(times) // 2]


def cell_specialists(ctx: Context, cell: Cell) -> None:
    spec = cell.specialists
    _check(spec)
    cl, tr, st = (
        _settings(spec.get("clusters"), ctx.scale),
        _settings(spec.get("train"), ctx.scale),
        _settings(spec.get("student"), ctx.scale),
    )
    top_n = int(spec.get("top_n", 1))
    gen_cfg = ctx.config(cell, name=f"{cell.id}_generalist")
    gen = ctx.train(gen_cfg, "train")
    ctx.record(cell.id, "generalist_test_errors", gen["eval"]["test"]["errors"], gen)
    splits = prepare_data(gen_cfg.data)
    generalist = load_model(gen["run_dir"])

    # clusters and specialists, keyed by what they depend on; trained once
    # "recipe" numbers how clusters and specialists are made: bump it when that code changes
    key = hashlib.sha256(
        json.dumps(
            {"generalist": gen["config_hash"], "clusters": cl, "train": tr, "recipe": 4},
            sort_keys=True,
        ).encode()
    ).hexdigest()
    where = Path(gen_cfg.run_dir).parent / f"{cell.id}_specialists-{key[:10]}"
    done = where / "summary.json"
    if done.is_file():
        saved = json.loads(done.read_text())
        clusters = torch.tensor(saved["clusters"], dtype=torch.bool)
        specialists = BatchedMLP.from_models(
            [load_model(where / "replicas" / str(m)) for m in range(len(clusters))]
        )
        seconds, cluster_seconds = saved["seconds"], saved["cluster_seconds"]
    else:
        clusters, cluster_seconds = _clusters(generalist, splits, cl, where / "clusters.json")
        settings = SpecialistSettings(**tr)
        soft = (
            predict_logits(generalist, splits.train).div(settings.temperature).softmax(dim=1)
            if settings.soft_weight
            else None
        )
        # an interrupted command continues from the last checkpoint (every 500 steps)
        specialists, info = train_specialists(
            generalist, clusters, splits.train, settings, soft, checkpoints=where / "checkpoints"
        )
        seconds = cluster_seconds + info["seconds"]
        for m, model in enumerate(specialists.unstack()):
            (where / "replicas" / str(m)).mkdir(parents=True, exist_ok=True)
            save_model(model, where / "replicas" / str(m) / "model.safetensors")
        atomic_write_bytes(
            done,
            json.dumps(
                {
                    "clusters": clusters.int().tolist(),
                    "seconds": seconds,
                    "cluster_seconds": cluster_seconds,
                    "settings": tr,
                    "generalist": gen["run_dir"],
                },
                indent=1,
            ).encode(),
        )
        shutil.rmtree(where / "checkpoints", ignore_errors=True)  # the replicas hold the result
        print(
            f"[{ctx.scale} seed {ctx.seed}] {cell.id}: {len(clusters)} clusters of "
            f"{int(cl['size'])} classes in {cluster_seconds:.1f}s; specialists trained as one "
            f"batched model in {info['seconds']:.1f}s",
            flush=True,
        )
    stage = _stage(ctx, seconds, key)
    ctx.record(cell.id, "specialists", len(clusters), stage)
    ctx.record(cell.id, "cluster_seconds", cluster_seconds, stage)
    ctx.record(cell.id, "specialists_seconds", seconds - cluster_seconds, stage)
    ctx.record(cell.id, "classes_covered", int(clusters.any(dim=0).sum()), stage)

    t = _evaluate(ctx, cell, stage, (generalist, specialists, clusters, top_n), splits)
    distilled = (
        _distill_into_one(
            ctx,
            cell,
            (generalist, specialists, clusters, top_n),
            splits,
            st,
            t,
            key,
            where,
            gen_cfg,
        )
        if st
        else None
    )

    # inference cost: parameters and single-image latency on this CPU
    x = splits.test.features(torch.arange(min(200, len(splits.test))))
    gen_params = sum(p.numel() for p in generalist.parameters())
    ctx.record(cell.id, "parameters_generalist", gen_params, stage)
    ctx.record(
        cell.id,
        "parameters_system",
        gen_params + sum(p.numel() for p in specialists.parameters()),
        stage,
    )
    ctx.record(cell.id, "latency_ms_generalist", _latency_ms(generalist, x), stage)
    ctx.record(
        cell.id,
        "latency_ms_system",
        _latency_ms(
            lambda xi: predict(
                generalist, specialists, clusters, _One(xi), top_n, keep_probs=False
            ),
            x,
        ),
        stage,
    )
    one = f"; one distilled network {distilled:.2f}%" if distilled is not None else ""
    print(
        f"[{ctx.scale} seed {ctx.seed}] {cell.id}: top-1 {100 * t['top1']:.2f}% → "
        f"{100 * t['top1_with_specialists']:.2f}% with specialists (conditional "
        f"{100 * t['conditional']:.2f}% → {100 * t['conditional_with_specialists']:.2f}%){one}",
        flush=True,
    )


def _evaluate(
    ctx: Context, cell: Cell, stage: dict[str, Any], system: tuple, splits: Any
) -> dict[str, Any]:
    """Tables 3 and 4 on the test images (and top-1 on the validation images, on which every
    setting of the cell is compared); records them and the system's test images per second."""
    generalist, specialists, clusters, top_n = system
    if splits.valid is not None:
        valid = predict(generalist, specialists, clusters, splits.valid, top_n, keep_probs=False)
        v = specialist_tables(
            valid["pred_general"], valid["pred"], splits.valid.labels, clusters, valid["active"]
        )
        ctx.record(cell.id, "valid_top1", 100.0 * v["top1"], stage)
        ctx.record(
            cell.id, "valid_top1_with_specialists", 100.0 * v["top1_with_specialists"], stage
        )
        print(
            f"[{ctx.scale} seed {ctx.seed}] {cell.id}: validation top-1 {100 * v['top1']:.2f}% → "
            f"{100 * v['top1_with_specialists']:.2f}% with specialists",
            flush=True,
        )
    t0 = time.perf_counter()
    test = predict(generalist, specialists, clusters, splits.test, top_n, keep_probs=False)
    seconds = time.perf_counter() - t0
    ctx.record(cell.id, "system_images_per_second", len(splits.test) / seconds, stage)
    t = specialist_tables(
        test["pred_general"], test["pred"], splits.test.labels, clusters, test["active"]
    )
    for name in (
        "top1",
        "top1_with_specialists",
        "relative_gain",
        "conditional",
        "conditional_with_specialists",
    ):
        ctx.record(cell.id, name, 100.0 * t[name] if name != "relative_gain" else t[name], stage)
    for row in t["by_covering"]:
        for name in ("n", "generalist", "with_specialists", "relative_gain"):
            value = 100.0 * row[name] if name in ("generalist", "with_specialists") else row[name]
            if value == value:  # not NaN
                ctx.record(
                    cell.id, f"covering_{name}", value, stage, variant=f"covering{row['covering']}"
                )
    return t


def _distill_into_one(
    ctx: Context,
    cell: Cell,
    system: tuple,
    splits: Any,
    st: dict[str, Any],
    t: dict[str, Any],
    key: str,
    where: Path,
    gen_cfg: Any,
) -> float:
    """The debt the paper leaves: one network of the generalist's size trained on the whole
    system's distributions over the training images; records its test top-1 and the share of
    the specialists' gain it keeps."""
    generalist, specialists, clusters, top_n = system
    skey = hashlib.sha256((key + json.dumps(st, sort_keys=True)).encode()).hexdigest()
    saved, timing = where / f"student-{skey[:10]}.safetensors", where / f"student-{skey[:10]}.json"
    if saved.is_file() and timing.is_file():  # trained by an earlier command
        student, seconds = load_model(saved), float(json.loads(timing.read_text())["seconds"])
    else:
        t0 = time.perf_counter()
        q_train = predict(generalist, specialists, clusters, splits.train, top_n)["q"]
        q_seconds = time.perf_counter() - t0
        torch.manual_seed(int(st.get("seed", ctx.seed)))
        student = build_model(
            gen_cfg.model["name"],
            {k: v for k, v in gen_cfg.model.items() if k != "name"},
            generalist.in_features,
            generalist.num_classes,
        )
        # an interrupted command continues from the last epoch's checkpoint
        checkpoints = where / f"student-{skey[:10]}-checkpoints"
        info = distill_into_one(
            student, q_train, splits.train, DistillSettings(**st), checkpoints=checkpoints
        )
        # the system's distributions, computed by this command; the training, over all of them
        seconds = q_seconds + info["seconds"]
        save_model(student, saved)
        atomic_write_bytes(timing, json.dumps({"seconds": seconds}).encode())
        shutil.rmtree(checkpoints, ignore_errors=True)
    student_stage = _stage(ctx, seconds, skey)
    distilled = 100.0 * accuracy(student, splits.test)
    ctx.record(cell.id, "top1_distilled", distilled, student_stage)
    gain = 100.0 * (t["top1_with_specialists"] - t["top1"])
    if gain > 0:
        ctx.record(cell.id, "gain_kept", (distilled - 100.0 * t["top1"]) / gain, student_stage)
    return distilled


def _clusters(
    generalist: nn.Module, splits: Any, cl: dict[str, Any], saved: Path
) -> tuple[torch.Tensor, float]:
    """The clusters and the seconds they took: computed from the generalist's predictions and
    written to ``saved``, or read from it (a command interrupted after clustering)."""
    if saved.is_file():
        data = json.loads(saved.read_text())
        return torch.tensor(data["clusters"], dtype=torch.bool), float(data["seconds"])
    t0 = time.perf_counter()
    images = _cluster_images(splits, cl)
    with torch.no_grad():
        generalist.eval()
        cov = streamed_covariance(
            generalist(images.features(torch.arange(s, min(s + 2000, len(images))))).softmax(1)
            for s in range(0, len(images), 2000)
        )
    clusters = clusters_from_covariance(
        cov,
        int(cl["k"]),
        int(cl["size"]),
        seed=int(cl.get("seed", 0)),
        normalize=bool(cl.get("normalize", True)),
        metric=str(cl.get("metric", "cosine")),
        refine=int(cl.get("refine", 10)),
    )
    clusters = clusters.unique(dim=0)  # identical clusters would be the same specialist twice
    seconds = time.perf_counter() - t0
    saved.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(
        saved, json.dumps({"clusters": clusters.int().tolist(), "seconds": seconds}).encode()
    )
    return clusters, seconds


def _cluster_images(splits: Any, cl: dict[str, Any]) -> Any:
    """The images whose predicted distributions give the clusters (no labels are read):
    ``clusters.images: validation`` (the default when the run holds one out: the generalist's
    hesitations on images it did not train on) or ``train``; ``clusters.max_images`` keeps the
    first N of them."""
    source = cl.get("images", "validation" if splits.valid is not None else "train")
    if source not in ("validation", "train") or (source == "validation" and splits.valid is None):
        raise DKError(
            f"specialists.clusters.images={source!r} is not available",
            "use 'train', or 'validation' with data.validation_size > 0",
        )
    images = splits.valid if source == "validation" else splits.train
    most = cl.get("max_images")  # the first N (the splits are shuffled): bounds the cost
    return images.subset(torch.arange(min(int(most), len(images)))) if most else images


class _One:
    """A one-image stand-in for a dataset (what :func:`predict` reads of one)."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def features(self, positions: torch.Tensor) -> torch.Tensor:
        return self.x[positions]


CLUSTER_KEYS = ("k", "size", "seed", "images", "max_images", "normalize", "metric", "refine")


def _check(spec: dict[str, Any]) -> None:
    if "clusters" not in spec:
        raise DKError(
            "a specialists cell needs specialists.clusters (k, size)",
            "add specialists: {clusters: {k: 10, size: 20}}",
        )
    unknown = sorted(set(spec["clusters"] or {}) - set(CLUSTER_KEYS))
    if unknown:
        raise DKError(
            f"specialists.clusters has unknown key(s) {', '.join(unknown)}",
            f"use {', '.join(CLUSTER_KEYS)}",
        )
