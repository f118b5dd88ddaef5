"""The one training loop, for teachers and students alike.

:func:`fit` builds a :class:`_Loop` and drives it. Its phases, each one method of one screen:

- **set-up** (``_Loop.__init__``): the batch source, the optimizer, the metrics log; when
  resuming, ``_restore`` the checkpoint; wrap the model in DDP; compile the step function.
- **the loop** (``_Loop.train``): for every epoch, every ``step``, then ``end_epoch``.
- **one step** (``_Loop.step``): set the step's hyperparameters; draw the batch (on the device)
  and keep this process's slice of it (``_local_batch``); for each micro-batch get the teacher's
  targets (``_teacher_targets``: from the store by dataset index, or live), run forward and loss
  (``_objective`` hands the method one ``StepInputs``: logits, targets, labels, epoch and step,
  the features it asked for) and backward (``_forward_backward``); queue the step's loss
  terms as a :class:`PendingStep`; flush at a sync point; step the optimizer and project max-norm;
  then count the step, decide whether to stop, checkpoint every N steps (``_after_step``).
- **sync point** (``_Loop.flush``, every ``sync_every`` steps, at epoch ends and before every
  checkpoint): one host sync checks that every pending loss term is finite and writes the
  pending metric lines.
- **epoch end** (``_Loop.end_epoch``): flush, evaluate (``evaluate_all``), keep the best epoch's
  weights (``select_best``), checkpoint.
- **checkpoint** (``_Loop.checkpoint``): weights, optimizer, counters, data order and every RNG.

What the phases change lives in one :class:`LoopState`; what set-up fixes are attributes of the
:class:`_Loop`. SIGTERM/SIGINT (or ``stop_after_steps``) stop the run cleanly after a step, with
a checkpoint. A teacher is trained by the ``hard_targets`` method with no teacher; nothing else
differs.

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

# inputs (B, D) → logits (members, B, C) or (B, C)
TeacherFn = Callable[[torch.Tensor], torch.Tensor]
Source = IndexedBatches | ReplicaBatches | IterableBatches


@dataclass
class FitInputs:
    """Everything the loop trains with, already built and validated (see ``train.run``)."""

    model: nn.Module
    method: Method
    # the in-memory fast path; None when ``batches`` is given
    train_set: TensorDataset | None
    device: torch.device
    # e.g. a teachers.Teacher; frozen, run live when teacher_logits is None
    teacher: TeacherFn | None = None
    # stored targets indexable as [:, positions] (members, N, classes); None = live
    teacher_logits: Any = None
    # name → TensorDataset or IterableBatches
    eval_sets: dict[str, Any] = field(default_factory=dict)
    eval_teacher_logits: dict[str, torch.Tensor] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    # the generic path: any iterable of (inputs, labels)
    batches: IterableBatches | None = None
    # K methods, one per replica of a BatchedMLP
    replica_methods: list[Method] | None = None
    # K data seeds (order and jitter), one per replica
    replica_seeds: list[int] | None = None
    # this process's place in a torchrun process group
    dist: Distributed | None = None
    # the teacher's modules in order, for the feature hooks of a method that reads their layers
    teacher_members: list[nn.Module] | None = None


def make_source(cfg: RunConfig, inputs: FitInputs) -> Source:
    """The batch source ``fit`` draws from: its generators are seeded ``seed + 1`` (per replica)."""
    if inputs.batches is not None:
        return inputs.batches
    if inputs.train_set is None:
        raise DKError(
            "nothing to train on: FitInputs has neither train_set nor batches",
            "pass a dataset or an iterable of batches",
        )
    device = inputs.device
    if inputs.replica_seeds:
        gens = [torch.Generator(device=device).manual_seed(s + 1) for s in inputs.replica_seeds]
        return ReplicaBatches(inputs.train_set, cfg.optim.batch_size, gens, cfg.data.jitter)
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    return IndexedBatches(inputs.train_set, cfg.optim.batch_size, gen, cfg.data.jitter)


def _rank_key(key: str, rank: int) -> str:
    return key if rank == 0 else f"{key}@{rank}"


def _rng_keys(device: torch.device, world_size: int) -> list[str]:
    base = ("rng/torch",) + (("rng/cuda",) if device.type == "cuda" else ())
    return [_rank_key(k, r) for r in range(world_size) for k in base]


# ---------------------------------------------------------------- can a checkpoint be resumed?


def _unrestorable(where: Any, what: str) -> DKError:
    return DKError(
        f"checkpoint {where} cannot be restored: {what}",
        "resume from another checkpoint or start a new run_dir",
    )


def check_resumable(cfg: RunConfig, ckpt: dict[str, Any], inputs: FitInputs) -> None:
    """All-or-nothing: refuse (DKError naming the checkpoint) anything :func:`fit` could not
    restore in full.

    Checks the weights (names, shapes, dtypes), the optimizer state (on scratch parameters), every
    RNG state (one per process), the data order and the counters, without changing the model.
    """
    world = inputs.dist.world_size if inputs.dist else 1
    source = make_source(cfg, inputs)
    where, state = ckpt["path"], ckpt["state"]
    saved_world = state.get("world_size", 1)
    if saved_world != world:
        raise DKError(
            f"checkpoint {where} was written by {saved_world} process(es), this run has {world}",
            f"resume with torchrun --nproc_per_node={saved_world}"
            if saved_world > 1
            else "resume without torchrun (one process)",
        )
    k_models = len(inputs.replica_methods) if inputs.replica_methods is not None else None
    for key, value in (state.get("best") or {}).items():
        if value is None:
            continue
        kind_differs = isinstance(value, list) != (k_models is not None)
        count_differs = k_models is not None and len(value) != k_models
        if kind_differs or count_differs:
            raise _unrestorable(
                where,
                f"state.json best.{key} = {short(value)} does not fit a run of "
                f"{k_models or 1} model(s)",
            )
    _check_weights(ckpt, inputs.model)
    _check_rngs(ckpt, source, inputs.device, world)
    _check_position(ckpt, source, cfg.optim.epochs)
    # the method's connector (a regressor), if it has one: its tensors and optimizer state
    connector = build_connector(inputs.method, inputs.model, inputs.teacher_members, cfg.seed)
    problem = state_problem(connector, ckpt["tensors"])
    if problem is not None:
        raise _unrestorable(where, problem)
    _check_optimizer(ckpt, cfg, inputs.model, connector)


def _check_weights(ckpt: dict[str, Any], model: nn.Module) -> None:
    """The model's weights, and the best epoch's if one was kept: the model's names, shapes and
    dtypes."""
    where, state, tensors = ckpt["path"], ckpt["state"], ckpt["tensors"]
    expected = model.state_dict()
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best/")}
    for name, holder in (("model.safetensors", ckpt["model"]), ("best weights", best)):
        keeps_best = isinstance(state.get("best"), dict) and state["best"].get("errors") is not None
        if name == "best weights" and not keeps_best:
            continue
        if set(holder) != set(expected):
            differ = sorted(set(holder) ^ set(expected))
            raise _unrestorable(where, f"{name} holds {differ} unlike the model")
        for k, v in expected.items():
            if holder[k].shape != v.shape or holder[k].dtype != v.dtype:
                raise _unrestorable(
                    where,
                    f"{name}: {k} is {holder[k].dtype} {tuple(holder[k].shape)}, "
                    f"the model has {v.dtype} {tuple(v.shape)}",
                )


def _check_rngs(ckpt: dict[str, Any], source: Source, device: torch.device, world: int) -> None:
    """Every process's RNG states, and the data generators' state when the source has one."""
    where, tensors = ckpt["path"], ckpt["tensors"]
    data_state = source.get_state()
    keys = _rng_keys(device, world) + (["rng/data"] if data_state is not None else [])
    for key in keys:
        if key not in tensors or tensors[key].dtype != torch.uint8:
            raise _unrestorable(where, f"state.safetensors lacks the RNG state {key}")
    torch_shape = torch.get_rng_state().shape
    if any(tensors[_rank_key("rng/torch", r)].shape != torch_shape for r in range(world)):
        raise _unrestorable(where, "state.safetensors holds a torch RNG state of the wrong size")
    if data_state is not None and tensors["rng/data"].shape != data_state.shape:
        raise _unrestorable(
            where,
            "state.safetensors holds data RNG states of shape "
            f"{tuple(tensors['rng/data'].shape)}, this run draws from {tuple(data_state.shape)}",
        )


def _check_position(ckpt: dict[str, Any], source: Source, epochs: int) -> None:
    """The counters fit this run, and a checkpoint taken inside an epoch holds its data order."""
    where, state, tensors = ckpt["path"], ckpt["state"], ckpt["tensors"]
    counters = {k: state[k] for k in ("epoch", "step_in_epoch", "global_step")}
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in counters.values()):
        raise _unrestorable(where, f"state.json counters {counters} are invalid")
    if counters["epoch"] > epochs or counters["step_in_epoch"] > source.steps_per_epoch:
        raise _unrestorable(
            where,
            f"state.json counters {counters} do not fit {epochs} epochs of "
            f"{source.steps_per_epoch} steps",
        )
    if counters["step_in_epoch"] and source.order_shape is not None:
        order = tensors.get("data/order")
        order_fits = (
            order is not None
            and order.dtype == torch.int64
            and tuple(order.shape) == source.order_shape
        )
        if not order_fits:
            raise _unrestorable(
                where,
                f"state.safetensors lacks this epoch's data order of shape {source.order_shape}",
            )


def _check_optimizer(
    ckpt: dict[str, Any], cfg: RunConfig, model: nn.Module, connector: nn.Module | None
) -> None:
    """The optimizer state is restored into an optimizer over scratch CPU parameters of the same
    shapes, in the same order (the model's, then the method's connector's): no copy of the model,
    nothing of the real run touched."""
    where = ckpt["path"]
    owned = [*model.parameters(), *(connector.parameters() if connector is not None else [])]
    scratch = [nn.Parameter(torch.zeros(p.shape, dtype=p.dtype)) for p in owned]
    optimizer = build_optimizer(cfg.optim, scratch, fused=connector is None)
    try:
        restore_optimizer(optimizer, ckpt["tensors"], ckpt["state"]["optimizer"])
    except (AttributeError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        what = f"optimizer state does not fit ({exc.__class__.__name__}: {exc})"
        raise _unrestorable(where, what) from None
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for p in params:
        for k, v in optimizer.state.get(p, {}).items():
            if torch.is_tensor(v) and v.dim() > 0 and v.shape != p.shape:
                raise _unrestorable(
                    where,
                    f"optimizer buffer {k} has shape {tuple(v.shape)} for a parameter of shape "
                    f"{tuple(p.shape)}",
                )


# ---------------------------------------------------------------- the step function and its loss


def _compile(fn: Callable, mode: str, device: torch.device) -> Callable:
    """``train_step``: eager, ``torch.compile`` (forward + loss, and through AOTAutograd the
    backward), or the same with CUDA graphs (``reduce-overhead``: each batch shape is captured once
    and replayed)."""
    if mode == "eager":
        return fn
    # Every run compiles its own step from a clean compiler state. The step is a closure over this
    # run's model, so in one process (a `dk reproduce` of many runs, a benchmark) each run would
    # otherwise add a recompile of the same code, and past dynamo's recompile limit (8) later runs
    # would silently train eagerly.
    torch.compiler.reset()
    if mode == "cuda_graph":
        if device.type != "cuda":
            raise DKError(
                f"train_step=cuda_graph needs a CUDA device, the run uses {device}",
                "use train_step=compile or eager on CPU",
            )
        return torch.compile(fn, mode="reduce-overhead", dynamic=False)
    return torch.compile(fn, dynamic=False)


def _forward_loss_fn(
    net: nn.Module,
    methods: list[Method],
    replicated: bool,
    autocast: Callable[[], Any],
    bound: BoundMethod,
    lr_scale: list[float] | None,
    **run: Any,
) -> Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """The function ``train_step`` compiles: the forward pass (under autocast) and the loss.
    ``run``: what every step's :class:`StepInputs` shares (``combine``, ``label_smoothing``)."""

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
        features = {
            "student_features": bound.student_features(),  # hooked during the forward pass
            "teacher_features": teacher_features,
        }
        # losses upcast to float32; a method that never reads epoch or step adds no compile guard
        return _objective(
            methods,
            replicated,
            logits,
            targets,
            y,
            lr_scale,
            epoch=epoch,
            step=step,
            **run,
            **features,
        )

    return forward_loss


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
        raise DKError(
            f"replicas report different loss components ({[list(o.components) for o in outs]})",
            "sweep only hyperparameters that keep the same terms "
            "(e.g. hard_weight all 0 or all > 0)",
        )
    scales = lr_scale or [1.0] * len(outs)
    weighted = [o.loss if c == 1.0 else o.loss * c for o, c in zip(outs, scales, strict=True)]
    total = weighted[0]
    for w in weighted[1:]:
        total = total + w
    terms = {"loss": torch.stack([o.loss.detach() for o in outs])}
    terms.update({n: torch.stack([o.components[n] for o in outs]) for n in names})
    return total, terms


def _non_finite_message(
    names: list[str],
    values: list[float],
    step: int,
    epoch: int,
    batch: int,
    replica: int | None = None,
) -> str:
    bad = ", ".join(f"{n}={v}" for n, v in zip(names, values, strict=True) if not math.isfinite(v))
    who = "" if replica is None else f", replica {replica}"
    return (
        f"non-finite loss at step {step + 1} (epoch {epoch}, batch {batch}{who}): {bad}; "
        "the last good checkpoint is kept; lower optim.lr or check the inputs for NaN"
    )


def _check_finite(
    loss: torch.Tensor, components: dict[str, torch.Tensor], step: int, epoch: int, batch: int
) -> None:
    """Raise :class:`NonFiniteLossError` naming step, batch and every non-finite term (one host
    sync)."""
    terms = {"loss": loss, **components}
    values = torch.stack([t.detach().float().reshape(()) for t in terms.values()]).tolist()
    if all(math.isfinite(v) for v in values):
        return
    raise NonFiniteLossError(_non_finite_message(list(terms), values, step, epoch, batch))


def _where(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _narrow(t: torch.Tensor | None, dim: int, start: int, length: int) -> torch.Tensor | None:
    return None if t is None else t.narrow(dim, start, length)


# ---------------------------------------------------------------- the state the phases share


@dataclass
class PendingStep:
    """A trained step whose loss terms stay on the device until the next sync point."""

    step: int  # the global step, counted from 0
    epoch: int
    batch: int  # the step's index within its epoch
    # the terms (loss first), summed over micro-batches weighted by their share of the batch;
    # shape (terms,), or (K, terms) for K replicas
    terms: torch.Tensor
    hyperparams: dict[str, float]  # the learning rate etc. the step used, logged with its terms


@dataclass
class BestEpoch:
    """Early stopping (``select_best_on=valid``): the epoch with fewest validation errors so far.

    Replicas: lists of K errors and K epochs, and the K models' best weights stacked as the model.
    """

    errors: Any = None
    epoch: Any = None
    weights: dict[str, torch.Tensor] | None = None


@dataclass
class LoopState:
    """All that the phases change. A checkpoint saves what of it a resumed run needs."""

    optimizer: torch.optim.Optimizer
    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # steps completed in the current epoch
    global_step: int = 0  # steps completed in the run
    # the current epoch's data order (None for an iterable source, or between epochs)
    order: torch.Tensor | None = None
    in_epoch: bool = False  # the current epoch's order is drawn (resumed inside an epoch, too)
    stopping: bool = False  # the last step decided to stop (a signal, or stop_after_steps)
    best: BestEpoch = field(default_factory=BestEpoch)
    pending: list[PendingStep] = field(default_factory=list)  # steps since the last sync point
    term_names: list[str] = field(default_factory=list)  # "loss" and the method's components
    results: dict[str, Any] = field(default_factory=dict)  # the last evaluation, per eval set
    saved_at: tuple[int, int] | None = None  # (epoch, global_step) of the last checkpoint
    saved_path: Path | None = None  # and where it is
    trained_before: float = 0.0  # seconds of training a resumed run had done before
    started: float = 0.0  # the clock reading train_seconds counts from


@dataclass
class LocalBatch:
    """This process's part of a global batch (in one process: all of it)."""

    pos: torch.Tensor | None  # dataset positions (stored teacher outputs); None: iterable source
    x: torch.Tensor
    y: torch.Tensor | None
    n_global: int  # examples in the global batch
    weight: float  # 0.0 for the stand-in example of a process whose slice is empty


# ---------------------------------------------------------------- the loop, phase by phase


class _Loop:
    """One call of :func:`fit`: set-up fixes the attributes, the phases change ``self.state``."""

    # ------------------------------------------------ set-up

    def __init__(
        self,
        cfg: RunConfig,
        inputs: FitInputs,
        run_dir: Path | None,
        resume: dict[str, Any] | None,
        stop: StopRequest,
    ) -> None:
        d = inputs.dist
        self.cfg, self.inputs, self.run_dir, self.stop = cfg, inputs, run_dir, stop
        self.model, self.device, self.dist = inputs.model, inputs.device, d
        self.replicated = inputs.replica_methods is not None
        self.methods = inputs.replica_methods if self.replicated else [inputs.method]
        self.needs_teacher = self.methods[0].needs_teacher
        self.bdim = 1 if self.replicated else 0  # the batch dimension of inputs, labels, positions
        self.rank, self.world = (d.rank, d.world_size) if d else (0, 1)
        self.main = self.rank == 0
        self.source = make_source(cfg, inputs)
        # the method's own trainable part (a regressor) and its feature hooks, if it has them
        self.bound = BoundMethod(
            self.methods,
            self.model,
            inputs.teacher_members,
            seed=cfg.seed,
            stored_targets=inputs.teacher_logits is not None,
            label_smoothing=cfg.label_smoothing,
            eager=cfg.train_step == "eager",
            processes=self.world,
        ).to(self.device)
        # a method with a connector trains in stages: some parameters get their first gradient
        # late, which only the foreach update kernels accept
        owned = [*self.model.parameters(), *self.bound.parameters()]
        optimizer = build_optimizer(cfg.optim, owned, fused=self.bound.connector is None)
        self.state = LoopState(optimizer=optimizer)
        self.steps_per_epoch = self.source.steps_per_epoch
        self.total_steps = cfg.optim.epochs * self.steps_per_epoch
        self.sync_every = cfg.sync_every or (50 if self.device.type == "cuda" else 1)
        writes_files = self.main and run_dir is not None
        self.log = (
            MetricsLog(run_dir / "metrics.jsonl", tensorboard=cfg.tensorboard)
            if writes_files
            else NullLog()
        )
        if resume is not None:
            self._restore(resume)
        else:
            self.log.reset()
        self.net = self._wrap_for_ddp()
        self.autocast: Callable[[], Any] = (
            functools.partial(torch.autocast, self.device.type, dtype=torch.bfloat16)
            if cfg.precision == "bf16"
            else contextlib.nullcontext
        )
        self.step_fn = _compile(self._forward_loss(), cfg.train_step, self.device)
        self.progress = self._progress_bar()
        # train_seconds counts every process's share
        self.state.started = time.perf_counter() - self.state.trained_before
        self.net.train()

    def _restore(self, resume: dict[str, Any]) -> None:
        """Resume: weights, optimizer, every RNG, counters, the epoch's data order, best epoch."""
        check_resumable(self.cfg, resume, self.inputs)
        st, device = self.state, self.device
        saved, tensors = resume["state"], resume["tensors"]
        self.model.load_state_dict(resume["model"])
        self.bound.load_state(tensors)  # the method's connector, if it has one
        restore_optimizer(st.optimizer, tensors, saved["optimizer"])
        torch.set_rng_state(tensors[_rank_key("rng/torch", self.rank)])
        if device.type == "cuda":
            torch.cuda.set_rng_state(tensors[_rank_key("rng/cuda", self.rank)], device)
        if "rng/data" in tensors:
            self.source.set_state(tensors["rng/data"])
        st.epoch, st.step_in_epoch = saved["epoch"], saved["step_in_epoch"]
        st.global_step = saved["global_step"]
        st.in_epoch = st.step_in_epoch > 0
        has_order = st.in_epoch and "data/order" in tensors
        st.order = tensors["data/order"].to(device) if has_order else None
        best = saved.get("best") or {}
        st.best = BestEpoch(errors=best.get("errors"), epoch=best.get("epoch"))
        # by the processes before this one
        st.trained_before = float(saved.get("train_seconds") or 0.0)
        if st.best.errors is not None:
            st.best.weights = {
                k[len("best/") :]: v.to(device) for k, v in tensors.items() if k.startswith("best/")
            }
        self.log.truncate_after(st.global_step, st.epoch)

    def _wrap_for_ddp(self) -> nn.Module:
        """The module the step calls: the model, in DDP when distributed (only the student is
        wrapped; the teacher is a plain frozen callable)."""
        if self.dist is None:
            return self.model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=device_ids)

    def _forward_loss(self) -> Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        cfg = self.cfg
        lr_scale = (
            [lr / cfg.optim.lr for lr in cfg.replicas.optim["lr"]]
            if "lr" in cfg.replicas.optim
            else None
        )
        return _forward_loss_fn(
            self.net,
            self.methods,
            self.replicated,
            self.autocast,
            self.bound,
            lr_scale,
            combine=cfg.teacher.combine,
            label_smoothing=cfg.label_smoothing,
        )

    def _progress_bar(self) -> Any:
        if not (self.main and self.cfg.progress and sys.stderr.isatty()):
            return None
        from tqdm import tqdm

        return tqdm(
            total=self.total_steps,
            initial=self.state.global_step,
            unit="step",
            dynamic_ncols=True,
            leave=False,
        )

    # ------------------------------------------------ the loop

    def train(self) -> None:
        """Every epoch, every step; the phases flush, evaluate and checkpoint on the way."""
        st = self.state
        if self.stop.requested:  # a signal arrived while the run was being prepared
            raise Interrupted(self.stop.signum, _where(st.saved_path))
        self.bound.open()  # the method's feature hooks, for the training steps (close: off)
        while st.epoch < self.cfg.optim.epochs:
            if not st.in_epoch:
                st.order, st.step_in_epoch, st.in_epoch = self.source.epoch_order(), 0, True
            while st.step_in_epoch < self.steps_per_epoch:
                self.step()
            self.end_epoch()
        self.flush()

    def close(self) -> None:
        self.bound.close()
        if self.progress is not None:
            self.progress.close()
        self.log.close()

    def result(self) -> dict[str, Any]:
        """What :func:`fit` returns; the model then holds the best epoch's weights, if kept."""
        st = self.state
        if st.best.weights is not None:
            self.model.load_state_dict(st.best.weights)
        return {
            "best_epoch": st.best.epoch,
            "eval": st.results,
            "steps": st.global_step,
            "epochs": st.epoch,
            "train_seconds": time.perf_counter() - st.started,
            "trained_before": st.trained_before,
        }

    # ------------------------------------------------ one step

    def step(self) -> None:
        """One optimizer step on the batch at (``epoch``, ``step_in_epoch``)."""
        st = self.state
        hp = hyperparams_at(self.cfg.optim, st.epoch, st.global_step, self.total_steps)
        set_hyperparams(st.optimizer, hp)
        batch = self._local_batch(*self.source.batch(st.order, st.step_in_epoch))
        st.optimizer.zero_grad(set_to_none=True)
        terms = self._forward_backward(batch)
        st.pending.append(PendingStep(st.global_step, st.epoch, st.step_in_epoch, terms, hp))
        syncs_now = self.is_sync_point(st.global_step + 1, st.step_in_epoch + 1)
        agreed = self.flush() if syncs_now else False
        st.optimizer.step()
        if hasattr(self.model, "project_max_norm_"):
            self.model.project_max_norm_()
        st.step_in_epoch += 1
        st.global_step += 1
        self._after_step(agreed)

    def _local_batch(
        self, pos: torch.Tensor | None, x: torch.Tensor, y: torch.Tensor | None
    ) -> LocalBatch:
        """With DDP, this process's slice of the global batch; otherwise all of it."""
        b = self.bdim
        n_global, weight = x.shape[b], 1.0
        if self.dist is None:
            return LocalBatch(pos, x, y, n_global, weight)
        part = rank_slice(n_global, self.rank, self.world)
        start, length = part.start, part.stop - part.start
        if length == 0:  # fewer examples than processes: DDP still needs this process's
            start, length, weight = 0, 1, 0.0  # gradient, so one example weighted zero
        x = x.narrow(b, start, length)
        y, pos = _narrow(y, b, start, length), _narrow(pos, b, start, length)
        return LocalBatch(pos, x, y, n_global, weight)

    def _forward_backward(self, batch: LocalBatch) -> torch.Tensor:
        """Forward, loss and backward, micro-batch by micro-batch; the step's loss terms.

        Gradient accumulation (and DDP): chunks weighted by their share of the global batch, so
        the summed gradient equals the global batch's mean gradient (uneven chunks and slices
        too); DDP averages over processes, hence the factor ``world``.
        """
        st, b = self.state, self.bdim
        n_local = batch.x.shape[b]
        micro = self.cfg.optim.micro_batch_size or n_local
        starts = list(range(0, n_local, micro))
        totals = None
        for i, start in enumerate(starts):
            length = min(micro, n_local - start)
            xs = batch.x.narrow(b, start, length)
            ys, ps = _narrow(batch.y, b, start, length), _narrow(batch.pos, b, start, length)
            if self.cfg.train_step == "cuda_graph":
                torch.compiler.cudagraph_mark_step_begin()
            is_last_chunk = i == len(starts) - 1
            # DDP all-reduces the gradients once, in the backward of the last chunk
            all_reduces = self.dist is None or is_last_chunk
            with contextlib.nullcontext() if all_reduces else self.net.no_sync():
                targets = self._teacher_targets(ps, xs)  # a live teacher's features are hooked
                t_features = self.bound.teacher_features()
                loss, terms = self.step_fn(xs, ys, targets, st.epoch, st.global_step, t_features)
                share = batch.weight * length / batch.n_global
                scale = share * self.world  # 1 for a whole batch in one process: no extra kernels
                (loss if scale == 1.0 else loss * scale).backward()
            if not st.term_names:
                st.term_names = list(terms)
            part_terms = torch.stack([terms[n].float() for n in st.term_names], dim=-1)
            if share != 1.0:
                part_terms = part_terms * share
            totals = part_terms if totals is None else totals + part_terms
        return totals

    def _teacher_targets(self, pos: torch.Tensor | None, x: torch.Tensor) -> Any:
        """Targets for these examples (:data:`~darkknowledge.methods.TeacherTargets`): stored ones
        gathered by dataset position, or the teacher run live."""
        inputs = self.inputs
        if not self.needs_teacher:
            return None
        if inputs.teacher_logits is not None:
            if self.replicated:
                return [as_targets(inputs.teacher_logits[:, p], stored=True) for p in pos]
            return as_targets(inputs.teacher_logits[:, pos], stored=True)
        if inputs.teacher is None:
            raise DKError(
                "the method needs a teacher but none was given",
                "pass a teacher (or stored teacher outputs)",
            )
        with self.autocast():
            if not self.replicated:
                return as_targets(inputs.teacher(x))
            k, b = x.shape[:2]
            t = inputs.teacher(x.reshape(k * b, -1))
            t = t.unsqueeze(0) if t.dim() == 2 else t
            return [as_targets(t[:, i * b : (i + 1) * b]) for i in range(k)]

    def _after_step(self, agreed: bool) -> None:
        """Once the counters moved on: decide whether to stop, checkpoint every N steps, and stop
        inside an epoch (at its end, ``end_epoch`` stops)."""
        st, cfg, stop = self.state, self.cfg, self.stop
        hook_stops = bool(cfg.stop_after_steps and st.global_step == cfg.stop_after_steps)
        if hook_stops:
            stop.request(signal.SIGTERM)  # the test hook: behave exactly as on SIGTERM
        if self.dist is None:
            st.stopping = stop.requested
        else:  # every process stops after the same step
            st.stopping = agreed or hook_stops
            if st.stopping:
                stop.request(signal.SIGTERM)
        if cfg.checkpoint_every_steps and st.global_step % cfg.checkpoint_every_steps == 0:
            self.checkpoint()
        if st.stopping and st.step_in_epoch < self.steps_per_epoch:
            raise Interrupted(stop.signum, _where(self.checkpoint()))

    # ------------------------------------------------ sync point

    def is_sync_point(self, step: int, in_epoch_step: int) -> bool:
        """Whether the step that ends at global ``step`` (1-based) is followed by a host sync."""
        cfg = self.cfg
        every_n = step % self.sync_every == 0
        ends_epoch = in_epoch_step == self.steps_per_epoch
        ends_run = step == self.total_steps
        checkpoints = bool(cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0)
        hook_stops = bool(cfg.stop_after_steps and step == cfg.stop_after_steps)
        return every_n or ends_epoch or ends_run or checkpoints or hook_stops

    def flush(self) -> bool:
        """Sync point: check every pending step is finite, write its metric line; True if every
        process agrees to stop."""
        st, d = self.state, self.dist
        if not st.pending:
            return self.stop.requested if d is None else False
        values = torch.stack([p.terms for p in st.pending])
        agreed = self.stop.requested
        if d is None:
            host = values.tolist()  # the one host sync
        else:  # one collective: the global-mean terms and whether any process was signalled
            flag = torch.tensor([1.0 if self.stop.requested else 0.0], device=values.device)
            # the one host sync
            reduced = d.all_reduce_sum(torch.cat([values.flatten(), flag])).cpu()
            host, agreed = reduced[:-1].view_as(values).tolist(), bool(reduced[-1] > 0)
        entries, st.pending = st.pending, []
        for entry, values_of_step in zip(entries, host, strict=True):
            self._check_and_log(entry, values_of_step)
        if self.progress is not None:
            self._show_progress(entries, host)
        return agreed

    def _check_and_log(self, entry: PendingStep, v: list) -> None:
        """Raise on a non-finite term of one flushed step; else write its metric line (every
        ``log_every`` steps). ``v``: its terms on the host (per replica: K lists)."""
        names, at = self.state.term_names, (entry.step, entry.epoch, entry.batch)
        if self.replicated:
            for k, vk in enumerate(v):
                if not all(math.isfinite(x) for x in vk):
                    raise NonFiniteLossError(_non_finite_message(names, vk, *at, k), replica=k)
        elif not all(math.isfinite(x) for x in v):
            raise NonFiniteLossError(_non_finite_message(names, v, *at))
        if (entry.step + 1) % self.cfg.log_every == 0:
            terms = {
                n: [row[i] for row in v] if self.replicated else v[i] for i, n in enumerate(names)
            }
            line = {"step": entry.step + 1, "epoch": entry.epoch, **terms, **entry.hyperparams}
            self.log.write(line)

    def _show_progress(self, entries: list[PendingStep], host: list) -> None:
        self.progress.update(len(entries))
        last = host[-1]
        loss = (sum(r[0] for r in last) / len(last)) if self.replicated else last[0]
        self.progress.set_postfix(epoch=entries[-1].epoch, loss=f"{loss:.4f}", refresh=False)

    # ------------------------------------------------ epoch end

    def end_epoch(self) -> None:
        """Count the epoch, flush, evaluate and select, checkpoint; stop if a step decided so."""
        st, cfg = self.state, self.cfg
        st.epoch, st.step_in_epoch, st.order, st.in_epoch = st.epoch + 1, 0, None, False
        self.flush()
        is_last_epoch = st.epoch == cfg.optim.epochs
        evaluates = is_last_epoch or st.epoch % cfg.eval_every == 0
        if self.inputs.eval_sets and evaluates:
            self.evaluate_all()
            self.select_best()
        if is_last_epoch or st.epoch % cfg.checkpoint_every == 0:
            self.checkpoint()
        if st.stopping or (self.dist is None and self.stop.requested):
            raise Interrupted(self.stop.signum, _where(self.checkpoint()))

    def evaluate_all(self) -> None:
        """Evaluate on every eval set. Evaluation never moves the training randomness: iterating
        a user's eval DataLoader draws its base seed from the global generator that dropout uses,
        so how often a run evaluates would otherwise change the trained weights."""
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            self._evaluate_each()
        self.model.train()

    def _evaluate_each(self) -> None:
        st, inputs = self.state, self.inputs
        for name, data in inputs.eval_sets.items():
            t_logits = inputs.eval_teacher_logits.get(name)
            where = {"step": st.global_step, "epoch": st.epoch, "split": name}
            if self.replicated:
                per = evaluate_replicas(self.model, data, t_logits)
                st.results[name] = per
                self.log.write({**where, **{k: [m[k] for m in per] for k in per[0]}})
                continue
            if isinstance(data, TensorDataset):
                st.results[name] = evaluate(self.model, data, t_logits)
            else:
                teacher = inputs.teacher if self.needs_teacher else None
                st.results[name] = evaluate_batches(self.model, data, teacher)
            self.log.write({**where, **st.results[name]})

    def select_best(self) -> None:
        """Keep the weights of the epoch with fewest errors on ``select_best_on`` (per replica)."""
        sel, st = self.cfg.select_best_on, self.state
        if not sel or sel not in st.results:
            return
        if not self.replicated and "errors" not in st.results[sel]:
            raise DKError(
                f"select_best_on={sel} needs labelled {sel} batches, but they are unlabelled",
                f"give the {sel} batches labels, or leave select_best_on out",
            )
        weights, best = self.model.state_dict(), st.best
        if self.replicated:
            self._select_best_replicas([m["errors"] for m in st.results[sel]], weights)
        elif best.errors is None or st.results[sel]["errors"] < best.errors:
            best.errors, best.epoch = st.results[sel]["errors"], st.epoch
            best.weights = {k: v.detach().clone() for k, v in weights.items()}

    def _select_best_replicas(self, errors: list, weights: dict[str, torch.Tensor]) -> None:
        best, epoch = self.state.best, self.state.epoch
        before = best.errors or errors
        better = [best.errors is None or e < b for e, b in zip(errors, before, strict=True)]
        if not any(better):
            return
        best.errors = [e if up else b for e, b, up in zip(errors, before, better, strict=True)]
        epochs_before = best.epoch or [epoch] * len(errors)
        best.epoch = [epoch if up else b for b, up in zip(epochs_before, better, strict=True)]
        if best.weights is None:
            best.weights = {k: v.detach().clone() for k, v in weights.items()}
        else:
            mask = torch.tensor(better, device=self.device)
            for k, v in weights.items():
                best.weights[k][mask] = v.detach()[mask]

    # ------------------------------------------------ checkpoint

    def checkpoint(self) -> Path | None:
        """Flush, then save (rank 0 writes, every process agrees it was written); the path."""
        self.flush()
        st, d = self.state, self.dist
        if self.run_dir is None:
            return None
        if st.saved_at == (st.epoch, st.global_step):  # already saved in this state
            return st.saved_path
        sd = self.model.state_dict()
        floating = [k for k, v in sd.items() if v.is_floating_point()]
        finite = torch.stack([torch.isfinite(sd[k]).all() for k in floating]).tolist()
        bad = [k for k, ok in zip(floating, finite, strict=True) if not ok]
        if bad:
            raise NonFiniteLossError(
                f"weights {', '.join(bad)} are non-finite after step {st.global_step} "
                f"(epoch {st.epoch}); not saving them; the last good checkpoint is kept; "
                "lower optim.lr or check the inputs for NaN"
            )
        tensors = self._rng_tensors()
        folder = Path(self.run_dir) / "checkpoints"
        path = folder / f"{PREFIX}{st.global_step:09d}"
        error: BaseException | None = None
        if self.main:
            state = self._checkpoint_state(tensors)
            try:
                keep = self.cfg.keep_checkpoints
                path = save_checkpoint(folder, st.global_step, sd, tensors, state, keep)
            except DKError as exc:
                error = exc
        if d is not None and not d.agree(error is None):
            raise error or DKError(
                f"rank 0 could not write checkpoint {path}",
                "see rank 0's error; free space or choose another run_dir",
            )
        if error is not None:
            raise error
        st.saved_at, st.saved_path = (st.epoch, st.global_step), path
        return path

    def _rng_tensors(self) -> dict[str, torch.Tensor]:
        """Every process's dropout RNG, gathered to rank 0 (``rng/torch``, ``rng/torch@1``...)."""
        rngs = {"rng/torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rngs["rng/cuda"] = torch.cuda.get_rng_state(self.device)
        tensors: dict[str, torch.Tensor] = {}
        for key, value in rngs.items():
            gathered = self.dist.all_gather(value) if self.dist is not None else [value]
            for r, v in enumerate(gathered):
                tensors[_rank_key(key, r)] = v.cpu()
        return tensors

    def _checkpoint_state(self, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Add the optimizer's, the data's and the best epoch's tensors; the state.json content."""
        st = self.state
        opt_tensors, opt_state = optimizer_state(st.optimizer)
        tensors.update(opt_tensors)
        data_state = self.source.get_state()
        if data_state is not None:
            tensors["rng/data"] = data_state
        if st.order is not None:
            tensors["data/order"] = st.order
        if st.best.weights is not None:
            tensors.update({f"best/{k}": v for k, v in st.best.weights.items()})
        tensors.update(self.bound.state())  # the method's connector (a regressor), if it has one
        state = {
            "epoch": st.epoch,
            "step_in_epoch": st.step_in_epoch,
            "global_step": st.global_step,
            "optimizer": opt_state,
            "config_hash": self.cfg.hash(),
            "fingerprints": self.inputs.fingerprints,
            "best": {"errors": st.best.errors, "epoch": st.best.epoch},
            "torch": torch.__version__,
            "train_seconds": time.perf_counter() - st.started,  # so far, across resumes
        }
        if self.world > 1:
            state["world_size"] = self.world
        return state


def fit(
    cfg: RunConfig,
    inputs: FitInputs,
    run_dir: Path | None,
    resume: dict[str, Any] | None = None,
    stop: StopRequest | None = None,
) -> dict[str, Any]:
    """Train ``inputs.model`` as ``cfg`` says; returns the final evaluation per eval set.

    ``run_dir`` None writes nothing (no metrics, no checkpoints). ``stop`` is the stop request of
    the caller's signal handlers (``train.run`` installs them for the whole run); without one,
    ``fit`` installs its own for the training steps.
    """
    if stop is None:
        with stop_on_signals() as own:
            return fit(cfg, inputs, run_dir, resume, own)
    loop = _Loop(cfg, inputs, run_dir, resume, stop)
    try:
        loop.train()
    finally:
        loop.close()
    return loop.result()
