"""The ``dk`` command: list, fetch data, train, distill, evaluate, precompute teacher outputs,
reproduce the paper.

User errors print one line (``dk: error: ...``) and exit with code 2, before anything is written.
A diverged run exits 3; a run stopped by SIGTERM/SIGINT exits 128 + signum after a checkpoint
(see docs/reliability.md).

Data-parallel on several processes or GPUs (docs/performance.md):
``torchrun --nproc_per_node=N -m darkknowledge.cli train|distill ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

from darkknowledge.errors import DKError, NonFiniteLossError

if TYPE_CHECKING:
    from darkknowledge.config import RunConfig


def cmd_ls(args: argparse.Namespace) -> int:
    from darkknowledge.reference import config_reference, registry_listing

    print(config_reference() if args.config else registry_listing())
    return 0


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from darkknowledge.data import fetch_dataset

    for name in args.names:
        print(f"{name}: {fetch_dataset(name)}")
    return 0


def _config(
    args: argparse.Namespace, extra: list[str], default_method: str = "hard_targets"
) -> RunConfig:
    """The validated RunConfig from ``-c`` YAML, positional overrides and flags.

    ``default_method`` fills ``method.name`` when neither the YAML nor an override names one
    (``dk distill`` defaults to soft_targets, keeping e.g. ``method.temperature=5``).
    """
    from darkknowledge.config import RunConfig, apply_overrides, build_dataclass, read_run_config

    data, overrides = read_run_config(args.config, args.scale) if args.config else ({}, [])
    if args.scale and not args.config:
        raise DKError(
            f"--scale {args.scale} needs -c with an experiment cell config",
            "add -c experiments/hinton2015/configs/<cell>.yaml",
        )
    overrides += list(args.overrides) + extra
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    if getattr(args, "deterministic", False):
        overrides.append("deterministic=true")
    data = apply_overrides(data, overrides)
    method = data.setdefault("method", {})
    if isinstance(method, dict) and "name" not in method:
        method["name"] = default_method
    return build_dataclass(RunConfig, data, "")


def _report(summary: dict) -> None:
    for k, replica in enumerate(summary.get("replicas") or []):
        swept = {key: replica["method"][key] for key in replica["method"] if key != "name"}
        print(
            f"replica {k} (seed "
            f"{replica['seed']}{''.join(f', {key}={v}' for key, v in swept.items())}):"
        )
        _report_eval(replica["eval"], "  ")
    _report_eval(summary.get("eval") or {})
    print(f"wall time {summary['wall_seconds']:.1f}s on {summary['device']}")


def _report_eval(evals: dict, indent: str = "") -> None:
    for split, m in evals.items():
        extra = f", agreement {m['agreement']:.4f}" if "agreement" in m else ""
        print(
            f"{indent}{split}: {m['errors']} errors / {m['n']} ({100 * (1 - m['accuracy']):.2f}%), "
            f"nll {m['nll']:.4f}, ece {m['ece']:.4f}{extra}"
        )


def _finish(cfg: RunConfig, summary: dict, what: str) -> None:
    """Print the outcome (rank 0 only under torchrun: the other processes trained the same
    model).
    """
    if os.environ.get("RANK", "0") != "0":
        return
    _report(summary)
    if summary.get("replicas"):
        print(
            f"{len(summary['replicas'])} {what}s saved to "
            f"{cfg.run_dir}/replicas/<k>/model.safetensors"
        )
    else:
        print(f"{what} saved to {cfg.run_dir}/model.safetensors")


def cmd_train(args: argparse.Namespace) -> int:
    from darkknowledge.train import run

    cfg = _config(args, [])
    summary = run(cfg, kind="train", resume=args.resume)
    _finish(cfg, summary, "model")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from darkknowledge.train import run

    extra = [f"teacher.checkpoints={json.dumps(args.teacher)}"] if args.teacher else []
    cfg = _config(args, extra, default_method="soft_targets")
    summary = run(cfg, kind="distill", resume=args.resume)
    _finish(cfg, summary, "student")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from darkknowledge.data import datasets
    from darkknowledge.models import load_model
    from darkknowledge.teachers import Teacher, compute_teacher_logits, member_files
    from darkknowledge.train import (
        classification_metrics,
        ensemble_metrics,
        predict_logits,
        resolve_device,
    )

    if args.limit < 0:
        raise DKError(f"--limit {args.limit} is negative", "use 0 (all) or a positive count")
    device = resolve_device(args.device)
    files = member_files(args.model)  # an ensemble's run directory: all its members
    models = [load_model(f, map_location=device) for f in files]
    ds = datasets.get(args.dataset)(args.split)
    for f, model in zip(files, models, strict=True):
        if ds.num_classes != model.num_classes or ds.images[0].numel() != model.in_features:
            raise DKError(
                f"model {f} predicts {model.num_classes} classes from {model.in_features} inputs; "
                f"{args.dataset} has {ds.num_classes} classes, {ds.images[0].numel()} inputs",
                "evaluate on the dataset the model was trained for",
            )
    if args.limit:
        ds = ds.subset(torch.arange(min(args.limit, len(ds))))
    ds = ds.to(device)
    t_logits = None
    if args.teacher:
        teacher = Teacher.from_checkpoints(args.teacher, device)
        if (
            teacher.num_classes != models[0].num_classes
            or teacher.in_features != models[0].in_features
        ):
            raise DKError(
                f"teacher predicts {teacher.num_classes} classes from {teacher.in_features} "
                f"inputs, the model {models[0].num_classes} from {models[0].in_features}",
                "compare with a teacher trained on the same task",
            )
        t_logits = compute_teacher_logits(teacher, ds)
    split = f"{args.dataset}/{args.split}"
    logits = torch.stack([predict_logits(m, ds) for m in models])
    if len(models) == 1:
        m = classification_metrics(logits[0], ds.labels, t_logits)
        if args.json:
            print(json.dumps(m))
        else:
            _report({"eval": {split: m}, "wall_seconds": 0.0, "device": str(device)})
        return 0
    members = [classification_metrics(z, ds.labels, t_logits) for z in logits]
    combined = ensemble_metrics(logits, ds.labels)
    if args.json:
        print(json.dumps({"members": members, **combined}))
        return 0
    for k, m in enumerate(members):
        _report_eval({f"member {k} ({files[k]})": m})
    mean_errors = sum(m["errors"] for m in members) / len(members)
    print(f"members: mean {mean_errors:.1f} errors / {ds.labels.numel()}")
    for name, m in combined.items():
        _report_eval({f"ensemble of {len(members)}, {name} mean": m})
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from darkknowledge.reproduce import reproduce
    from darkknowledge.reproduce.runner import report_only

    if args.only:  # `--only CELL key=value`: nargs took the override too; give it back
        args.overrides = [*args.overrides, *(o for o in args.only if "=" in o)]
        args.only = [o for o in args.only if "=" not in o] or None
    if args.report_only:
        if args.only or args.overrides or args.seeds != 1:
            raise DKError(
                "--report-only trains nothing, so it takes no --only, --seeds or overrides",
                "drop them, or drop --report-only to run cells",
            )
        return report_only(args.experiment, args.root)

    return reproduce(
        args.experiment,
        only=args.only,
        scale=args.scale,
        seeds=args.seeds,
        root=args.root,
        device=args.device,
        overrides=args.overrides,
        runs_root=args.runs_root,
        batch_seeds=args.batch_seeds,
        retrain_teacher=args.retrain_teacher,
    )


def cmd_teacher_outputs_build(args: argparse.Namespace) -> int:
    """Precompute a teacher-output store; under ``torchrun`` every process builds its share of the
    shards.
    """
    import contextlib
    import os
    from pathlib import Path

    import torch

    from darkknowledge.data import datasets
    from darkknowledge.teachers import (
        StoreOptions,
        Teacher,
        build_store,
        default_store_path,
        describe_store,
        process_group_from_env,
        store_lock,
    )
    from darkknowledge.train import resolve_device

    if args.limit < 0:
        raise DKError(f"--limit {args.limit} is negative", "use 0 (all) or a positive count")
    options = StoreOptions(
        dtype=args.dtype,
        topk=args.topk,
        temperature=args.temperature,
        combine=args.combine,
        shard_size=args.shard_size,
    )
    data = datasets.get(args.dataset)(args.split)
    if args.limit:
        data = data.subset(torch.arange(min(args.limit, len(data))))
    with process_group_from_env() as (rank, world_size, barrier):
        device = resolve_device(args.device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        teacher = Teacher.from_checkpoints(args.teacher, device)
        out = args.out or default_store_path(teacher, data, options)
        with store_lock(Path(out)) if world_size == 1 else contextlib.nullcontext():
            result = build_store(
                teacher,
                data,
                out,
                options,
                rank=rank,
                world_size=world_size,
                barrier=barrier,
                batch_size=args.batch_size,
            )
    print(
        f"rank {rank}/{world_size}: computed {len(result.computed)} shard(s) {result.computed}, "
        f"reused {len(result.reused)} of {result.shards}"
    )
    if rank == 0:
        print(describe_store(out))
    return 0


def cmd_teacher_outputs_info(args: argparse.Namespace) -> int:
    from darkknowledge.teachers import describe_store, read_store_manifest

    if args.json:
        print(json.dumps(read_store_manifest(args.store), indent=1, sort_keys=True))
    else:
        print(describe_store(args.store))
    return 0


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--config",
        help=(
            "YAML run config, or an experiment cell (experiments/hinton2015/configs/*.yaml: its "
            "run: section)"
        ),
    )
    p.add_argument(
        "--scale",
        choices=["smoke", "cpu", "full"],
        help=(
            "with an experiment cell: apply that scale's overrides (default: the cell as written, "
            "the paper's setting)"
        ),
    )
    p.add_argument(
        "overrides", nargs="*", help="key=value overrides, e.g. optim.lr=0.1 data.omit_classes=[3]"
    )
    p.add_argument("--run-dir", help="output directory (same as run_dir=...)")
    p.add_argument(
        "--resume",
        default="never",
        help=(
            "never (default), auto (latest intact checkpoint in run_dir), or a checkpoint directory"
        ),
    )
    p.add_argument("--deterministic", action="store_true", help="use deterministic algorithms only")


def cmd_export(args: argparse.Namespace) -> int:
    from darkknowledge.export import describe, export

    if args.format != "onnx":
        raise DKError(f"--format {args.format} is not supported", "use --format onnx")
    if args.threads < 1 or args.repeats < 1:
        raise DKError(
            f"--threads {args.threads} / --repeats {args.repeats} must be positive",
            "give positive counts",
        )
    report = export(args.run_dir, args.out, args.quantize, args.dataset, args.threads, args.repeats)
    print(json.dumps(report) if args.json else describe(report))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from darkknowledge.reports import experiment_report, run_report

    target = Path(args.target)
    if (target / "configs").is_dir():
        md = experiment_report(target, args.runs_root, args.scale, args.out)
    elif target.is_dir():
        md = run_report(target, args.out)
    else:
        raise DKError(
            f"{target} is neither a run directory nor an experiment folder",
            "give e.g. runs/student or experiments/hinton2015",
        )
    print(f"report written: {md} and {md.with_suffix('.html')} (self-contained)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dk", description="darkknowledge: knowledge distillation (Hinton, Vinyals & Dean 2015)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "ls", help="list methods, models and datasets, with their parameters and defaults"
    )
    p.add_argument(
        "--config",
        action="store_true",
        help=(
            "print every run-config key with its type, default and meaning "
            "(docs/config-reference.md)"
        ),
    )
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser(
        "export",
        help="export a model to ONNX (temperature 1), check it against PyTorch and time it",
    )
    p.add_argument("run_dir", help="a run directory or a model file")
    p.add_argument("--format", default="onnx", help="onnx (the only one so far)")
    p.add_argument(
        "--quantize",
        default=None,
        help="dynamic-int8: also write an int8 copy and report what it costs in test errors",
    )
    p.add_argument("--out", default=None, help="output directory (default: RUN_DIR/export)")
    p.add_argument(
        "--dataset",
        default=None,
        help="test set to check on (default: the run's config, else mnist)",
    )
    p.add_argument("--threads", type=int, default=1, help="CPU threads for the timings (default 1)")
    p.add_argument(
        "--repeats", type=int, default=200, help="timed calls per batch size (default 200)"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "report",
        help="a Markdown and a self-contained HTML report of a run or an experiment, with plots",
    )
    p.add_argument(
        "target", help="a run directory, or an experiment folder (experiments/hinton2015)"
    )
    p.add_argument("--out", default=None, help="output directory (default: TARGET/report)")
    p.add_argument(
        "--runs-root", default="runs", help="experiment reports: where its runs are (default: runs)"
    )
    p.add_argument(
        "--scale", default="cpu", help="experiment reports: whose omit3 run to plot (default: cpu)"
    )
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("data", help="data sets")
    dsub = p.add_subparsers(dest="data_command", required=True)
    f = dsub.add_parser("fetch", help="fetch and cache a dataset (mnist, fashion_mnist)")
    f.add_argument("names", nargs="+")
    f.set_defaults(func=cmd_data_fetch)

    p = sub.add_parser("train", help="train a teacher or a hard-label student")
    _add_run_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("distill", help="distill a student from a teacher checkpoint or an ensemble")
    _add_run_args(p)
    p.add_argument(
        "--teacher", action="append", help="teacher model file or run dir; repeat for an ensemble"
    )
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser(
        "eval", help="evaluate a model (or an ensemble's members and combinations) at temperature 1"
    )
    p.add_argument(
        "model",
        help=(
            "model.safetensors, a run directory, or an ensemble's run directory (every member, the "
            "arithmetic and the geometric ensemble)"
        ),
    )
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--limit", type=int, default=0, help="evaluate the first N examples only")
    p.add_argument(
        "--teacher",
        action="append",
        help="also report agreement with this teacher (repeat for an ensemble)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "teacher-outputs",
        help="precompute teacher outputs once (build, torchrun-parallel) or describe a store "
        "(info)",
    )
    tsub = p.add_subparsers(dest="teacher_outputs_command", required=True)
    b = tsub.add_parser(
        "build", help="build or finish a teacher-output store (docs/performance.md)"
    )
    b.add_argument(
        "--teacher",
        action="append",
        required=True,
        help="teacher model file or run dir; repeat for an ensemble",
    )
    b.add_argument("--dataset", default="mnist")
    b.add_argument("--split", default="train", choices=["train", "test"])
    b.add_argument("--limit", type=int, default=0, help="the first N examples only (0 = all)")
    b.add_argument(
        "--out",
        help="store directory (default: the fingerprint-named cache directory runs look in)",
    )
    b.add_argument(
        "--shard-size", type=int, help="rows per shard (default: about 256 MiB per shard)"
    )
    b.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    b.add_argument(
        "--topk",
        type=int,
        help="store the top-k log-probabilities + tail mass instead of dense logits",
    )
    b.add_argument(
        "--temperature",
        type=float,
        help="the temperature of a top-k store (the students' temperature)",
    )
    b.add_argument(
        "--combine",
        default="arithmetic",
        choices=["arithmetic", "geometric"],
        help="how a top-k store combines ensemble members",
    )
    b.add_argument("--batch-size", type=int, default=2000)
    b.add_argument("--device", default="auto")
    b.set_defaults(func=cmd_teacher_outputs_build)
    i = tsub.add_parser("info", help="describe a teacher-output store")
    i.add_argument("store", help="store directory")
    i.add_argument("--json", action="store_true", help="print the manifest as JSON")
    i.set_defaults(func=cmd_teacher_outputs_info)

    p = sub.add_parser("reproduce", help="reproduce an experiment (hinton2015, lineage)")
    p.add_argument("experiment", help="experiment name, e.g. hinton2015")
    p.add_argument("--only", nargs="+", help="run only these cells")
    p.add_argument(
        "--scale",
        default="smoke",
        choices=["smoke", "cpu", "full"],
        help=(
            "smoke: minutes on a CPU (shows the pipeline); cpu: the paper's data and models on a "
            "2-core CPU in about 2 hours; full: the paper's schedule (a GPU)"
        ),
    )
    p.add_argument("--seeds", type=int, default=1, help="number of seeds per cell")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: regenerate the experiment README's table from results.csv and "
        "print it",
    )
    p.add_argument(
        "--no-batch-seeds",
        dest="batch_seeds",
        action="store_false",
        help="train each seed of a train cell on its own instead of all seeds as one batched run",
    )
    p.add_argument(
        "--retrain-teacher",
        action="store_true",
        help=(
            "smoke scale: train the smoke teacher instead of distilling from the shipped cpu-scale "
            "teacher"
        ),
    )
    p.add_argument("--root", default=None, help="experiments folder (default: ./experiments)")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--runs-root", default=None, help="where run directories go (default: runs/<experiment>)"
    )
    p.add_argument(
        "overrides",
        nargs="*",
        help=(
            "key=value overrides applied to every cell after its scale's (e.g. data.train_size=500)"
        ),
    )
    p.set_defaults(func=cmd_reproduce)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"dk: warning: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``dk``; returns the exit code (see :mod:`darkknowledge.errors` for their meaning)."""
    from darkknowledge.train.signals import Interrupted

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `key=value` overrides may also come after the options (argparse takes a command's positional
    # arguments in one run, so `dk reproduce hinton2015 --scale smoke optim.epochs=1` leaves them
    # over)
    if (
        extra
        and hasattr(args, "overrides")
        and all("=" in a and not a.startswith("-") for a in extra)
    ):
        args.overrides = [*(args.overrides or []), *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        try:
            return int(args.func(args) or 0)
        except DKError as exc:
            print(f"dk: error: {exc}", file=sys.stderr)
            return DKError.exit_code
        except NonFiniteLossError as exc:
            print(f"dk: error: {exc}", file=sys.stderr)
            return NonFiniteLossError.exit_code
        except Interrupted as exc:
            print(f"dk: {exc}", file=sys.stderr)
            return exc.exit_code
        except OSError as exc:  # an I/O failure not translated where it happened
            where = f" {exc.filename}" if exc.filename else ""
            print(
                f"dk: error: I/O error{where}: {exc.strerror or exc}; check the path, its "
                "permissions and free space",
                file=sys.stderr,
            )
            return DKError.exit_code
        except KeyboardInterrupt:
            print("dk: interrupted", file=sys.stderr)
            return 130


def _exit(code: int) -> None:
    """Exit; under torchrun skip the interpreter's teardown. Every file was already written
    atomically, and tearing down gloo's background threads at exit intermittently aborts a rank
    ("terminate called without an active exception") after a run that succeeded."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    _exit(main())
