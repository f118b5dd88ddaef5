"""The one training loop, for teachers and students alike.

Read top to bottom: set up the batch source and optimizer, restore a checkpoint if resuming,
then for every step: draw a batch (on the device), get the teacher's targets (from the store by
dataset index, or live), apply the method, step, project max-norm; every ``sync_every`` steps
check that every buffered loss component is finite and write the buffered metric lines;
evaluate and checkpoint at epoch ends; stop cleanly on SIGTERM/SIGINT.
A teacher is trained by the ``hard_targets`` method with no teacher; nothing else differs.

The same loop trains, without a second code path: one model or K replicas stacked into one
batched model (``replicas``), from an in-memory dataset or any iterable of batches
(:func:`~darkknowledge.train.fit_model`), in one process or several (``torchrun``, DDP), eager
or compiled, in float32 or with bf16 autocast. docs/performance.md describes the fast path.

Exact resume: a checkpoint holds the weights, the optimizer, the step and the position in the
epoch, the epoch's data order and every RNG the loop draws from (dropout: the torch RNG of every
process; order and jitter: the loop's own generators). Resuming from any checkpoint therefore
continues the very same sequence of updates: on CPU the final weights equal an uninterrupted
run's bit for bit.
"""

from __future__ import annotations

import contextlib
import functools
import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from darkknowledge.config import RunConfig
from darkknowledge.data import TensorDataset
from darkknowledge.errors import DKError, NonFiniteLossError, short
from darkknowledge.methods import Method, StepInputs, as_targets
from darkknowledge.methods.binding import BoundMethod, build_connector, state_problem
from darkknowledge.train.batches import IndexedBatches, IterableBatches, ReplicaBatches
from darkknowledge.train.checkpoint import (
    PREFIX,
    optimizer_state,
    restore_optimizer,
    save_checkpoint,
)
from darkknowledge.train.distributed import Distributed, rank_slice
from darkknowledge.train.evaluate import evaluate, evaluate_batches, evaluate_replicas
from darkknowledge.train.metrics import MetricsLog, NullLog
from darkknowledge.train.optim import build_optimizer, hyperparams_at, set_hyperparams
from darkknowledge.train.signals import Interrupted, StopRequest, stop_on_signals

TeacherFn = Callable[[torch.Tensor], torch.Tensor]  # inputs (B, D) → logits (members, B, C) or (B, C)


@dataclass
class FitInputs:
    """Everything the loop trains with, already built and validated (see ``train.run``)."""

    model: nn.Module
    method: Method
    train_set: TensorDataset | None  # the in-memory fast path; None when ``batches`` is given
    device: torch.device
    teacher: TeacherFn | None = None  # e.g. a teachers.Teacher; frozen, run live when teacher_logits is None
    teacher_logits: Any = None  # stored targets indexable as [:, positions] (members, N, classes); None = live
    eval_sets: dict[str, Any] = field(default_factory=dict)  # name → TensorDataset or IterableBatches
    eval_teacher_logits: dict[str, torch.Tensor] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    batches: IterableBatches | None = None  # the generic path: any iterable of (inputs, labels)
    replica_methods: list[Method] | None = None  # K methods, one per replica of a BatchedMLP
    replica_seeds: list[int] | None = None  # K data seeds (order and jitter), one per replica
    dist: Distributed | None = None  # this process's place in a torchrun process group
    teacher_members: list[nn.Module] | None = None  # the teacher's modules, for feature hooks


def make_source(cfg: RunConfig, inputs: FitInputs) -> IndexedBatches | ReplicaBatches | IterableBatches:
    """The batch source ``fit`` draws from: its generators are seeded ``seed + 1`` (per replica)."""
    if inputs.batches is not None:
        return inputs.batches
    if inputs.train_set is None:
        raise DKError("nothing to train on: FitInputs has neither train_set nor batches", "pass a dataset or an iterable of batches")
    device = inputs.device
    if inputs.replica_seeds:
        gens = [torch.Generator(device=device).manual_seed(s + 1) for s in inputs.replica_seeds]
        return ReplicaBatches(inputs.train_set, cfg.optim.batch_size, gens, cfg.data.jitter)
    return IndexedBatches(inputs.train_set, cfg.optim.batch_size, torch.Generator(device=device).manual_seed(cfg.seed + 1), cfg.data.jitter)


def _rank_key(key: str, rank: int) -> str:
    return key if rank == 0 else f"{key}@{rank}"


def _rng_keys(device: torch.device, world_size: int) -> list[str]:
    base = ("rng/torch",) + (("rng/cuda",) if device.type == "cuda" else ())
    return [_rank_key(k, r) for r in range(world_size) for k in base]


def check_resumable(cfg: RunConfig, ckpt: dict[str, Any], inputs: FitInputs) -> None:
    """All-or-nothing: refuse (DKError naming the checkpoint) anything :func:`fit` could not restore in full.

    Checks the weights (names, shapes, dtypes), the optimizer state (on scratch parameters), every
    RNG state (one per process), the data order and the counters, without changing the model.
    """
    model, device = inputs.model, inputs.device
    world = inputs.dist.world_size if inputs.dist else 1
    source = make_source(cfg, inputs)
    where = ckpt["path"]
    state, tensors, weights = ckpt["state"], ckpt["tensors"], ckpt["model"]

    def bad(what: str) -> DKError:
        return DKError(f"checkpoint {where} cannot be restored: {what}", "resume from another checkpoint or start a new run_dir")

    saved_world = state.get("world_size", 1)
    if saved_world != world:
        raise DKError(
            f"checkpoint {where} was written by {saved_world} process(es), this run has {world}",
            f"resume with torchrun --nproc_per_node={saved_world}" if saved_world > 1 else "resume without torchrun (one process)",
        )
    k_models = len(inputs.replica_methods) if inputs.replica_methods is not None else None
    for key, value in (state.get("best") or {}).items():
        if value is not None and (isinstance(value, list) != (k_models is not None) or (k_models is not None and len(value) != k_models)):
            raise bad(f"state.json best.{key} = {short(value)} does not fit a run of {k_models or 1} model(s)")
    expected = model.state_dict()
    for name, holder in (("model.safetensors", weights), ("best weights", {k[5:]: v for k, v in tensors.items() if k.startswith("best/")})):
        if name == "best weights" and not (isinstance(state.get("best"), dict) and state["best"].get("errors") is not None):
            continue
        if set(holder) != set(expected):
            raise bad(f"{name} holds {sorted(set(holder) ^ set(expected))} unlike the model")
        for k, v in expected.items():
            if holder[k].shape != v.shape or holder[k].dtype != v.dtype:
                raise bad(f"{name}: {k} is {holder[k].dtype} {tuple(holder[k].shape)}, the model has {v.dtype} {tuple(v.shape)}")
    data_state = source.get_state()
    keys = _rng_keys(device, world) + (["rng/data"] if data_state is not None else [])
    for key in keys:
        if key not in tensors or tensors[key].dtype != torch.uint8:
            raise bad(f"state.safetensors lacks the RNG state {key}")
    if any(tensors[_rank_key("rng/torch", r)].shape != torch.get_rng_state().shape for r in range(world)):
        raise bad("state.safetensors holds a torch RNG state of the wrong size")
    if data_state is not None and tensors["rng/data"].shape != data_state.shape:
        raise bad(f"state.safetensors holds data RNG states of shape {tuple(tensors['rng/data'].shape)}, this run draws from {tuple(data_state.shape)}")
    counters = {k: state[k] for k in ("epoch", "step_in_epoch", "global_step")}
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in counters.values()):
        raise bad(f"state.json counters {counters} are invalid")
    if counters["epoch"] > cfg.optim.epochs or counters["step_in_epoch"] > source.steps_per_epoch:
        raise bad(f"state.json counters {counters} do not fit {cfg.optim.epochs} epochs of {source.steps_per_epoch} steps")
    if counters["step_in_epoch"] and source.order_shape is not None:
        order = tensors.get("data/order")
        if order is None or order.dtype != torch.int64 or tuple(order.shape) != source.order_shape:
            raise bad(f"state.safetensors lacks this epoch's data order of shape {source.order_shape}")
    # The optimizer state is restored into an optimizer over scratch CPU parameters of the same
    # shapes, in the same order: no copy of the model, nothing of the real run touched.
    connector = build_connector(inputs.method, model, inputs.teacher_members, cfg.seed)
    problem = state_problem(connector, tensors)
    if problem is not None:
        raise bad(problem)
    owned = [*model.parameters(), *(connector.parameters() if connector is not None else [])]
    scratch = [nn.Parameter(torch.zeros(p.shape, dtype=p.dtype)) for p in owned]
    optimizer = build_optimizer(cfg.optim, scratch, fused=connector is None)
    try:
        restore_optimizer(optimizer, tensors, state["optimizer"])
    except (AttributeError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise bad(f"optimizer state does not fit ({exc.__class__.__name__}: {exc})") from None
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for p in params:
        for k, v in optimizer.state.get(p, {}).items():
            if torch.is_tensor(v) and v.dim() > 0 and v.shape != p.shape:
                raise bad(f"optimizer buffer {k} has shape {tuple(v.shape)} for a parameter of shape {tuple(p.shape)}")


def _compile(fn: Callable, mode: str, device: torch.device) -> Callable:
    """``train_step``: eager, ``torch.compile`` (forward + loss, and through AOTAutograd the backward),
    or the same with CUDA graphs (``reduce-overhead``: each batch shape is captured once and replayed)."""
    if mode == "eager":
        return fn
    # Every run compiles its own step from a clean compiler state. The step is a closure over this
    # run's model, so in one process (a `dk reproduce` of many runs, a benchmark) each run would
    # otherwise add a recompile of the same code, and past dynamo's recompile limit (8) later runs
    # would silently train eagerly.
    torch.compiler.reset()
    if mode == "cuda_graph":
        if device.type != "cuda":
            raise DKError(f"train_step=cuda_graph needs a CUDA device, the run uses {device}", "use train_step=compile or eager on CPU")
        return torch.compile(fn, mode="reduce-overhead", dynamic=False)
    return torch.compile(fn, dynamic=False)


def _objective(
    methods: list[Method],
    replicated: bool,
    logits: torch.Tensor,
    targets: Any,
    labels: torch.Tensor | None,
    lr_scale: list[float] | None = None,
    **step: Any,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss to backpropagate and its detached terms (``loss`` first, then the components).

    Each method gets one :class:`StepInputs`: these logits, targets and labels, and ``step`` (the
    epoch and step, the ensemble combine, label smoothing, the captured features).
    Replicas: the sum of the K per-model losses (so each model gets its stand-alone gradient) and
    terms of shape (K,); ``targets`` is then a list of K per-replica targets. ``lr_scale[k]``
    (``replicas.optim.lr``) multiplies model k's loss in that sum: an SGD-family update is linear
    in the gradient, so this is model k trained with its own step size. The terms stay unscaled.
    """
    if not replicated:
        out = methods[0](StepInputs(logits, targets, labels, **step))
        return out.loss, {"loss": out.loss.detach(), **out.components}
    outs = []
    for k, m in enumerate(methods):
        targets_k = None if targets is None else targets[k]
        labels_k = None if labels is None else labels[k]
        outs.append(m(StepInputs(logits[k], targets_k, labels_k, **step)))
    names = list(outs[0].components)
    if any(list(o.components) != names for o in outs):
        raise DKError(f"replicas report different loss components ({[list(o.components) for o in outs]})", "sweep only hyperparameters that keep the same terms (e.g. hard_weight all 0 or all > 0)")
    weighted = [o.loss if c == 1.0 else o.loss * c for o, c in zip(outs, lr_scale or [1.0] * len(outs), strict=True)]
    total = weighted[0]
    for w in weighted[1:]:
        total = total + w
    terms = {"loss": torch.stack([o.loss.detach() for o in outs])}
    terms.update({n: torch.stack([o.components[n] for o in outs]) for n in names})
    return total, terms


def _non_finite_message(names: list[str], values: list[float], step: int, epoch: int, batch: int, replica: int | None = None) -> str:
    bad = ", ".join(f"{n}={v}" for n, v in zip(names, values, strict=True) if not math.isfinite(v))
    who = "" if replica is None else f", replica {replica}"
    return (
        f"non-finite loss at step {step + 1} (epoch {epoch}, batch {batch}{who}): {bad}; "
        "the last good checkpoint is kept; lower optim.lr or check the inputs for NaN"
    )


def _check_finite(loss: torch.Tensor, components: dict[str, torch.Tensor], step: int, epoch: int, batch: int) -> None:
    """Raise :class:`NonFiniteLossError` naming step, batch and every non-finite term (one host sync)."""
    terms = {"loss": loss, **components}
    values = torch.stack([t.detach().float().reshape(()) for t in terms.values()]).tolist()
    if all(math.isfinite(v) for v in values):
        return
    raise NonFiniteLossError(_non_finite_message(list(terms), values, step, epoch, batch))


def _where(path: Path | None) -> str | None:
    return None if path is None else str(path)


def fit(cfg: RunConfig, inputs: FitInputs, run_dir: Path | None, resume: dict[str, Any] | None = None, stop: StopRequest | None = None) -> dict[str, Any]:
    """Train ``inputs.model`` as ``cfg`` says; returns the final evaluation per eval set.

    ``run_dir`` None writes nothing (no metrics, no checkpoints). ``stop`` is the stop request of
    the caller's signal handlers (``train.run`` installs them for the whole run); without one,
    ``fit`` installs its own for the training steps.
    """
    if stop is None:
        with stop_on_signals() as own:
            return fit(cfg, inputs, run_dir, resume, own)
    model, device, d = inputs.model, inputs.device, inputs.dist
    replicated = inputs.replica_methods is not None
    methods = inputs.replica_methods if replicated else [inputs.method]
    needs_teacher = methods[0].needs_teacher
    bdim = 1 if replicated else 0  # the batch dimension of inputs, labels and positions
    rank, world = (d.rank, d.world_size) if d else (0, 1)
    main = rank == 0
    source = make_source(cfg, inputs)
    # the method's own trainable part (a regressor) and feature hooks, if it has them
    bound = BoundMethod(
        methods, model, inputs.teacher_members, seed=cfg.seed,
        stored_targets=inputs.teacher_logits is not None, label_smoothing=cfg.label_smoothing,
        eager=cfg.train_step == "eager", processes=world,
    ).to(device)
    # a method with a connector trains in stages: some parameters get their first gradient late
    owned = [*model.parameters(), *bound.parameters()]
    optimizer = build_optimizer(cfg.optim, owned, fused=bound.connector is None)
    steps_per_epoch = source.steps_per_epoch
    total_steps = cfg.optim.epochs * steps_per_epoch
    sync_every = cfg.sync_every or (50 if device.type == "cuda" else 1)
    combine = cfg.teacher.combine
    lr_scale = [lr / cfg.optim.lr for lr in cfg.replicas.optim["lr"]] if "lr" in cfg.replicas.optim else None
    log = MetricsLog(run_dir / "metrics.jsonl", tensorboard=cfg.tensorboard) if main and run_dir is not None else NullLog()

    # ``order`` is the current epoch's data order (None for an iterable source or between epochs).
    epoch, step_in_epoch, global_step, order, in_epoch = 0, 0, 0, None, False
    # Early stopping (select_best_on=valid): the weights of the epoch with fewest validation errors
    # (per replica: lists of K errors and epochs, the stacked best weights).
    best: dict[str, Any] = {"errors": None, "epoch": None, "weights": None}
    trained_before = 0.0  # seconds of training a resumed run had done before (its checkpoint says)
    if resume is not None:
        check_resumable(cfg, resume, inputs)
        state, tensors = resume["state"], resume["tensors"]
        model.load_state_dict(resume["model"])
        bound.load_state(tensors)
        restore_optimizer(optimizer, tensors, state["optimizer"])
        torch.set_rng_state(tensors[_rank_key("rng/torch", rank)])
        if device.type == "cuda":
            torch.cuda.set_rng_state(tensors[_rank_key("rng/cuda", rank)], device)
        if "rng/data" in tensors:
            source.set_state(tensors["rng/data"])
        epoch, step_in_epoch, global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        in_epoch = step_in_epoch > 0
        order = tensors["data/order"].to(device) if in_epoch and "data/order" in tensors else None
        best.update(state.get("best") or {})
        trained_before = float(state.get("train_seconds") or 0.0)  # by the processes before this one
        if best["errors"] is not None:
            best["weights"] = {k[len("best/") :]: v.to(device) for k, v in tensors.items() if k.startswith("best/")}
        log.truncate_after(global_step, epoch)
    else:
        log.reset()

    net: nn.Module = model
    if d is not None:  # only the student is wrapped; the teacher is a plain frozen callable
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    autocast: Callable[[], Any] = (
        functools.partial(torch.autocast, device.type, dtype=torch.bfloat16) if cfg.precision == "bf16" else contextlib.nullcontext
    )

    def forward_loss(
        x: torch.Tensor,
        y: torch.Tensor | None,
        targets: Any,
        epoch: int,
        step: int,
        teacher_features: dict[str, torch.Tensor],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with autocast():
            logits = net(x)
        features = {"student_features": bound.student_features(),
                    "teacher_features": teacher_features}
        # losses upcast to float32; a method that never reads epoch or step adds no compile guard
        return _objective(
            methods, replicated, logits, targets, y, lr_scale, epoch=epoch, step=step,
            combine=combine, label_smoothing=cfg.label_smoothing, **features,
        )

    step_fn = _compile(forward_loss, cfg.train_step, device)

    def teacher_targets(pos: torch.Tensor | None, x: torch.Tensor) -> Any:
        """Targets for these examples: stored ones gathered by dataset position, or the teacher run live."""
        if not needs_teacher:
            return None
        if inputs.teacher_logits is not None:
            if replicated:
                return [as_targets(inputs.teacher_logits[:, p], stored=True) for p in pos]
            return as_targets(inputs.teacher_logits[:, pos], stored=True)
        if inputs.teacher is None:
            raise DKError("the method needs a teacher but none was given", "pass a teacher (or stored teacher outputs)")
        with autocast():
            if not replicated:
                return as_targets(inputs.teacher(x))
            k, b = x.shape[:2]
            t = inputs.teacher(x.reshape(k * b, -1))
            t = t.unsqueeze(0) if t.dim() == 2 else t
            return [as_targets(t[:, i * b : (i + 1) * b]) for i in range(k)]

    # Deferred host syncs: each step's share-weighted terms stay on the device until a sync point.
    pending: list[tuple[int, int, int, torch.Tensor, dict[str, float]]] = []  # (step, epoch, batch, terms, hp)
    names: list[str] = []
    progress = None
    if main and cfg.progress and sys.stderr.isatty():
        from tqdm import tqdm

        progress = tqdm(total=total_steps, initial=global_step, unit="step", dynamic_ncols=True, leave=False)

    def flush() -> bool:
        """Sync point: check every buffered step is finite, write its metric line; True if every process agrees to stop."""
        nonlocal pending
        if not pending:
            return stop.requested if d is None else False
        values = torch.stack([p[3] for p in pending])
        agreed = stop.requested
        if d is None:
            host = values.tolist()  # the one host sync
        else:  # one collective: the global-mean terms and whether any process was signalled
            flag = torch.tensor([1.0 if stop.requested else 0.0], device=values.device)
            reduced = d.all_reduce_sum(torch.cat([values.flatten(), flag])).cpu()  # the one host sync
            host, agreed = reduced[:-1].view_as(values).tolist(), bool(reduced[-1] > 0)
        entries, pending = pending, []
        for (step, ep, batch, _, hp), v in zip(entries, host, strict=True):
            if replicated:
                for k, vk in enumerate(v):
                    if not all(math.isfinite(x) for x in vk):
                        raise NonFiniteLossError(_non_finite_message(names, vk, step, ep, batch, k), replica=k)
            elif not all(math.isfinite(x) for x in v):
                raise NonFiniteLossError(_non_finite_message(names, v, step, ep, batch))
            if (step + 1) % cfg.log_every == 0:
                terms = {n: ([row[i] for row in v] if replicated else v[i]) for i, n in enumerate(names)}
                log.write({"step": step + 1, "epoch": ep, **terms, **hp})
        if progress is not None:
            progress.update(len(entries))
            last = host[-1]
            progress.set_postfix(epoch=entries[-1][1], loss=f"{(sum(r[0] for r in last) / len(last)) if replicated else last[0]:.4f}", refresh=False)
        return agreed

    def is_sync_point(step: int, in_epoch_step: int) -> bool:
        """Whether the step that ends at global ``step`` (1-based) is followed by a host sync."""
        return (
            step % sync_every == 0
            or in_epoch_step == steps_per_epoch
            or step == total_steps
            or bool(cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0)
            or bool(cfg.stop_after_steps and step == cfg.stop_after_steps)
        )

    saved: dict[str, Any] = {"step": None, "path": None}

    def checkpoint() -> Path | None:
        flush()
        if run_dir is None:
            return None
        if saved["step"] == (epoch, global_step):  # already saved in this state
            return saved["path"]
        sd = model.state_dict()
        finite = torch.stack([torch.isfinite(v).all() for v in sd.values() if v.is_floating_point()]).tolist()
        bad = [k for k, ok in zip([k for k, v in sd.items() if v.is_floating_point()], finite, strict=True) if not ok]
        if bad:
            raise NonFiniteLossError(
                f"weights {', '.join(bad)} are non-finite after step {global_step} (epoch {epoch}); "
                "not saving them; the last good checkpoint is kept; lower optim.lr or check the inputs for NaN"
            )
        tensors: dict[str, torch.Tensor] = {}
        rngs = {"rng/torch": torch.get_rng_state()}
        if device.type == "cuda":
            rngs["rng/cuda"] = torch.cuda.get_rng_state(device)
        for key, value in rngs.items():  # every process's dropout RNG, gathered to rank 0
            for r, v in enumerate(d.all_gather(value) if d is not None else [value]):
                tensors[_rank_key(key, r)] = v.cpu()
        path = Path(run_dir) / "checkpoints" / f"{PREFIX}{global_step:09d}"
        error: BaseException | None = None
        if main:
            t_opt, s_opt = optimizer_state(optimizer)
            tensors.update(t_opt)
            data_state = source.get_state()
            if data_state is not None:
                tensors["rng/data"] = data_state
            if order is not None:
                tensors["data/order"] = order
            if best["weights"] is not None:
                tensors.update({f"best/{k}": v for k, v in best["weights"].items()})
            tensors.update(bound.state())  # the method's connector (a regressor), if it has one
            state = {
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "global_step": global_step,
                "optimizer": s_opt,
                "config_hash": cfg.hash(),
                "fingerprints": inputs.fingerprints,
                "best": {"errors": best["errors"], "epoch": best["epoch"]},
                "torch": torch.__version__,
                "train_seconds": time.perf_counter() - started,  # so far, across resumes
            }
            if world > 1:
                state["world_size"] = world
            try:
                path = save_checkpoint(Path(run_dir) / "checkpoints", global_step, sd, tensors, state, cfg.keep_checkpoints)
            except DKError as exc:
                error = exc
        if d is not None and not d.agree(error is None):
            raise error or DKError(f"rank 0 could not write checkpoint {path}", "see rank 0's error; free space or choose another run_dir")
        if error is not None:
            raise error
        saved.update(step=(epoch, global_step), path=path)
        return path

    results: dict[str, Any] = {}

    def evaluate_all() -> None:
        # Evaluation never moves the training randomness: iterating a user's eval DataLoader draws
        # its base seed from the global generator that dropout uses, so how often a run evaluates
        # would otherwise change the trained weights.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            _evaluate_all()
        model.train()

    def _evaluate_all() -> None:
        for name, data in inputs.eval_sets.items():
            t_logits = inputs.eval_teacher_logits.get(name)
            if replicated:
                per = evaluate_replicas(model, data, t_logits)
                results[name] = per
                log.write({"step": global_step, "epoch": epoch, "split": name, **{k: [m[k] for m in per] for k in per[0]}})
                continue
            if isinstance(data, TensorDataset):
                results[name] = evaluate(model, data, t_logits)
            else:
                results[name] = evaluate_batches(model, data, inputs.teacher if needs_teacher else None)
            log.write({"step": global_step, "epoch": epoch, "split": name, **results[name]})

    def select_best() -> None:
        sel = cfg.select_best_on
        if not sel or sel not in results:
            return
        if not replicated and "errors" not in results[sel]:
            raise DKError(f"select_best_on={sel} needs labelled {sel} batches, but they are unlabelled", f"give the {sel} batches labels, or leave select_best_on out")
        weights = model.state_dict()
        if not replicated:
            if best["errors"] is None or results[sel]["errors"] < best["errors"]:
                best.update(errors=results[sel]["errors"], epoch=epoch)
                best["weights"] = {k: v.detach().clone() for k, v in weights.items()}
            return
        errors = [m["errors"] for m in results[sel]]
        better = [best["errors"] is None or e < b for e, b in zip(errors, best["errors"] or errors, strict=True)]
        if not any(better):
            return
        best["errors"] = [e if up else b for e, b, up in zip(errors, best["errors"] or errors, better, strict=True)]
        best["epoch"] = [epoch if up else b for b, up in zip(best["epoch"] or [epoch] * len(errors), better, strict=True)]
        if best["weights"] is None:
            best["weights"] = {k: v.detach().clone() for k, v in weights.items()}
        else:
            mask = torch.tensor(better, device=device)
            for k, v in weights.items():
                best["weights"][k][mask] = v.detach()[mask]

    started = time.perf_counter() - trained_before  # train_seconds counts every process's share
    net.train()
    stopping = False
    bound.open()  # the method's feature hooks, taken off in the finally below
    try:
        if stop.requested:  # a signal arrived while the run was being prepared
            raise Interrupted(stop.signum, _where(saved["path"]))
        while epoch < cfg.optim.epochs:
            if not in_epoch:
                order, step_in_epoch, in_epoch = source.epoch_order(), 0, True
            while step_in_epoch < steps_per_epoch:
                hp = hyperparams_at(cfg.optim, epoch, global_step, total_steps)
                set_hyperparams(optimizer, hp)
                pos, x, y = source.batch(order, step_in_epoch)
                n_global, weight = x.shape[bdim], 1.0
                if d is not None:  # this process's slice of the global batch
                    part = rank_slice(n_global, rank, world)
                    start, length = part.start, part.stop - part.start
                    if length == 0:  # fewer examples than processes: DDP still needs this process's
                        start, length, weight = 0, 1, 0.0  # gradient, so one example weighted zero
                    x = x.narrow(bdim, start, length)
                    y = None if y is None else y.narrow(bdim, start, length)
                    pos = None if pos is None else pos.narrow(bdim, start, length)
                n_local = x.shape[bdim]
                micro = cfg.optim.micro_batch_size or n_local
                starts = list(range(0, n_local, micro))
                optimizer.zero_grad(set_to_none=True)
                # Gradient accumulation (and DDP): chunks weighted by their share of the global
                # batch, so the summed gradient equals the global batch's mean gradient (uneven
                # chunks and slices too); DDP averages over processes, hence the factor ``world``.
                totals = None
                for i, start in enumerate(starts):
                    length = min(micro, n_local - start)
                    xs = x.narrow(bdim, start, length)
                    ys = None if y is None else y.narrow(bdim, start, length)
                    ps = None if pos is None else pos.narrow(bdim, start, length)
                    if cfg.train_step == "cuda_graph":
                        torch.compiler.cudagraph_mark_step_begin()
                    sync = contextlib.nullcontext() if d is None or i == len(starts) - 1 else net.no_sync()
                    with sync:
                        targets = teacher_targets(ps, xs)
                        t_features = bound.teacher_features()
                        loss, terms = step_fn(xs, ys, targets, epoch, global_step, t_features)
                        share = weight * length / n_global
                        scale = share * world  # 1 for a whole batch in one process: no extra kernels
                        (loss if scale == 1.0 else loss * scale).backward()
                    if not names:
                        names = list(terms)
                    part_terms = torch.stack([terms[n].float() for n in names], dim=-1)
                    if share != 1.0:
                        part_terms = part_terms * share
                    totals = part_terms if totals is None else totals + part_terms
                pending.append((global_step, epoch, step_in_epoch, totals, hp))
                agreed = flush() if is_sync_point(global_step + 1, step_in_epoch + 1) else False
                optimizer.step()
                if hasattr(model, "project_max_norm_"):
                    model.project_max_norm_()
                step_in_epoch += 1
                global_step += 1
                if cfg.stop_after_steps and global_step == cfg.stop_after_steps:
                    stop.request(signal.SIGTERM)  # the test hook: behave exactly as on SIGTERM
                if d is None:
                    stopping = stop.requested
                else:  # every process stops after the same step
                    stopping = agreed or bool(cfg.stop_after_steps and global_step == cfg.stop_after_steps)
                    if stopping:
                        stop.request(signal.SIGTERM)
                if cfg.checkpoint_every_steps and global_step % cfg.checkpoint_every_steps == 0:
                    checkpoint()
                if stopping and step_in_epoch < steps_per_epoch:
                    raise Interrupted(stop.signum, _where(checkpoint()))
            epoch, step_in_epoch, order, in_epoch = epoch + 1, 0, None, False
            flush()
            last = epoch == cfg.optim.epochs
            if inputs.eval_sets and (last or epoch % cfg.eval_every == 0):
                evaluate_all()
                select_best()
            if last or epoch % cfg.checkpoint_every == 0:
                checkpoint()
            if stopping or (d is None and stop.requested):
                raise Interrupted(stop.signum, _where(checkpoint()))
        flush()
    finally:
        bound.close()
        if progress is not None:
            progress.close()
        log.close()
    if best["weights"] is not None:
        model.load_state_dict(best["weights"])
    return {"best_epoch": best["epoch"], "eval": results, "steps": global_step, "epochs": epoch, "train_seconds": time.perf_counter() - started, "trained_before": trained_before}
