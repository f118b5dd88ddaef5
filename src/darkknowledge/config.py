"""Typed run configuration: YAML in, validated dataclasses out.

Configs are data (a ``yaml.SafeLoader``), never code. Every key is checked against the dataclass
fields before anything runs; unknown keys, wrong types and bad values are :class:`DKError`.
Model and method sections are open dicts (``name`` + that builder's fields) validated by the
registry entry they name.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from darkknowledge.errors import DKError, short

T = TypeVar("T")


# ---------------------------------------------------------------- generic typed loading


def _type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true/false", str: "a string"}
    if tp in names:
        return names[tp]
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(tp) or (Any,)
        return f"a list of {_type_name(inner).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict:
        return "a mapping"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(
            "null" if a is type(None) else _type_name(a) for a in typing.get_args(tp)
        )
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against type ``tp`` (ints are accepted where floats are expected)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except DKError:
                pass
        raise _type_error(value, tp, where)
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, where)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise _type_error(value, tp, where)
        (inner,) = typing.get_args(tp)
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(value, tp, where)
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise _type_error(value, tp, where)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(value, tp, where)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(value, tp, where)
        if not math.isfinite(value):
            raise DKError(f"config key {where}={value} is not finite", "use a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _type_error(value, tp, where)
        return value
    raise TypeError(f"unsupported config type {tp!r} at {where}")


def _type_error(value: Any, tp: Any, where: str) -> DKError:
    return DKError(
        f"config key {where} must be {_type_name(tp)}, got {short(value)} ({type(value).__name__})",
        f"fix the value of {where}",
    )


def build_dataclass(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        where = where or "config"
        raise DKError(
            f"config section {where} must be a mapping, got {short(data)}",
            f"write {where} as key: value lines",
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), fields, n=1)
        hint = f"did you mean {short(close[0])}? " if close else ""
        name = f"{where}.{key}" if where else key
        raise DKError(f"unknown config key {name}", f"{hint}allowed keys: {', '.join(fields)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


# ---------------------------------------------------------------- the hash policy of a field
#
# Whether a field enters a run's config hash (which decides which finished runs are reused and
# which checkpoints a run may resume from) is declared on the field itself:
# - no marker: always hashed (it changes what is computed);
# - ``NOT_HASHED``: never (where a run is written, how it reports, how a step executes: it changes
#   no computed result beyond float rounding);
# - ``HASHED_IF_SET``: only when not at its default (a field added after runs were keyed by their
#   hash: existing hashes stay valid).
# ``tests/test_config.py`` lists every field with its policy, so a new field is a decision.
NOT_HASHED = {"hash": "never"}
HASHED_IF_SET = {"hash": "if_not_default"}


def hash_policy(f: dataclasses.Field) -> str:
    return f.metadata.get("hash", "always")


def hash_view(obj: Any) -> dict[str, Any]:
    """The part of a config dataclass that its hash covers, as plain data (nested sections too)."""
    out = {}
    for f in dataclasses.fields(obj):
        value, policy = getattr(obj, f.name), hash_policy(f)
        if policy == "never" or (policy == "if_not_default" and value == _field_default(f)):
            continue
        out[f.name] = hash_view(value) if dataclasses.is_dataclass(value) else copy.deepcopy(value)
    return out


def _field_default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


# ---------------------------------------------------------------- the run configuration


@dataclass
class DataConfig:
    """Where the examples come from and which of them form the transfer set."""

    dataset: str = "mnist"  # a registered dataset (`dk ls`): mnist | fashion_mnist
    train_size: int | None = None  # stratified subset of the training split (smoke scale)
    test_size: int | None = None  # first N test images (smoke scale); null = all
    # held out of training (stratified, fixed seed) for every selection decision
    validation_size: int = 0
    # class ids left out of the transfer set (the omitted-3 experiment)
    omit_classes: list[int] = field(default_factory=list)
    # only these class ids in the transfer set (only 7s and 8s); null = all
    keep_classes: list[int] | None = None
    fraction: float = 1.0  # stratified fraction of the (remaining) training set
    unlabelled: bool = False  # drop the transfer set's labels (soft targets only, hard_weight 0)
    jitter: int = 0  # max integer shift in pixels, fresh per presentation

    def __post_init__(self) -> None:
        for key in ("train_size", "test_size"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise DKError(
                    f"data.{key}={v} must be positive", "use a positive count or null for all"
                )
        if self.validation_size < 0:
            raise DKError(
                f"data.validation_size={self.validation_size} is negative",
                "use 0 (no validation split) or a positive count",
            )
        if not 0.0 < self.fraction <= 1.0:
            raise DKError(
                f"data.fraction={self.fraction} is out of range", "use a fraction in (0, 1]"
            )
        if not 0 <= self.jitter <= 8:
            raise DKError(
                f"data.jitter={self.jitter} is out of range",
                "use a shift in pixels between 0 and 8",
            )
        if self.omit_classes and self.keep_classes:
            raise DKError(
                "data.omit_classes and data.keep_classes are both set", "use only one of them"
            )


@dataclass
class OptimConfig:
    """Optimizer and schedule. ``paper_dropout`` is the teacher recipe of Hinton et al. 2012, App.
    A.1.
    """

    name: str = "sgd"  # sgd | adam | paper_dropout
    lr: float = 0.1  # step size (the base of the schedule; paper_dropout: ε0)
    momentum: float = 0.9  # sgd momentum (adam: beta1 stays 0.9)
    weight_decay: float = 0.0  # L2 penalty on all weights (decoupled for adam)
    schedule: str = "cosine"  # cosine | constant (sgd, adam)
    epochs: int = 10  # passes over the transfer set
    batch_size: int = 100  # examples per step (the paper: 100)
    # gradient accumulation: split each batch into chunks this size
    micro_batch_size: int | None = None
    lr_decay: float = 0.998  # paper_dropout: lr_t = lr · lr_decay^epoch
    initial_momentum: float = 0.5  # paper_dropout: momentum at epoch 0
    final_momentum: float = 0.99  # paper_dropout: momentum from momentum_epochs on
    momentum_epochs: int = 500  # paper_dropout: epochs of the linear momentum ramp

    def __post_init__(self) -> None:
        if self.name not in ("sgd", "adam", "paper_dropout"):
            close = difflib.get_close_matches(self.name, ["sgd", "adam", "paper_dropout"], n=1)
            hint = f"did you mean {short(close[0])}? " if close else ""
            raise DKError(
                f"unknown optimizer optim.name={short(self.name)}",
                f"{hint}choose sgd, adam or paper_dropout",
            )
        if self.schedule not in ("cosine", "constant"):
            raise DKError(
                f"unknown schedule optim.schedule={short(self.schedule)}",
                "choose cosine or constant",
            )
        if not self.lr > 0:
            raise DKError(f"optim.lr={self.lr} must be positive", "use a learning rate > 0")
        if self.epochs < 1 or self.batch_size < 1:
            raise DKError(
                f"optim.epochs={self.epochs}, optim.batch_size={self.batch_size} must be ≥ 1",
                "use positive counts",
            )
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise DKError(
                f"optim.micro_batch_size={self.micro_batch_size} must be ≥ 1",
                "use a positive chunk size or null",
            )
        for key in ("momentum", "initial_momentum", "final_momentum"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise DKError(
                    f"optim.{key}={getattr(self, key)} is out of range", "use a momentum in [0, 1)"
                )
        if self.weight_decay < 0:
            raise DKError(
                f"optim.weight_decay={self.weight_decay} is negative", "use 0 or a positive decay"
            )


@dataclass
class TeacherConfig:
    """Teacher checkpoints (one = single teacher, several = ensemble) and how targets are made."""

    # teacher model files or run directories (several, or an ensemble run directory: an ensemble)
    checkpoints: list[str] = field(default_factory=list)
    combine: str = "arithmetic"  # arithmetic | geometric mean of member distributions
    outputs: str = "precompute"  # precompute (teacher-output store) | live (needed with jitter)
    # teacher-output store directory; default: a fingerprint-named cache directory
    store: str | None = None
    # float32 | float16 (stored values; loaded as float32; docs/performance.md)
    store_dtype: str = field(default="float32", metadata=HASHED_IF_SET)
    # null = dense logits (serve every temperature); k = top-k + tail mass at one T
    store_topk: int | None = field(default=None, metadata=HASHED_IF_SET)
    # top-k stores only; null = the method's temperature
    store_temperature: float | None = field(default=None, metadata=HASHED_IF_SET)

    def __post_init__(self) -> None:
        if self.combine not in ("arithmetic", "geometric"):
            raise DKError(
                f"teacher.combine={short(self.combine)} is unknown",
                "choose arithmetic or geometric",
            )
        if self.outputs not in ("precompute", "live"):
            raise DKError(
                f"teacher.outputs={short(self.outputs)} is unknown", "choose precompute or live"
            )
        if self.store_dtype not in ("float32", "float16"):
            raise DKError(
                f"teacher.store_dtype={short(self.store_dtype)} is unknown",
                "choose float32 or float16",
            )
        if self.store_topk is not None and self.store_topk < 1:
            raise DKError(
                f"teacher.store_topk={self.store_topk} must be ≥ 1",
                "use a positive k, or null for dense logits",
            )
        if self.store_topk is not None and self.outputs == "live":
            raise DKError(
                "teacher.store_topk is set but teacher.outputs=live stores nothing",
                "set teacher.outputs=precompute, or teacher.store_topk: null",
            )
        if self.store_temperature is not None and self.store_topk is None:
            raise DKError(
                f"teacher.store_temperature={self.store_temperature} without teacher.store_topk",
                "drop it: a dense store serves every temperature",
            )
        if self.store_temperature is not None and self.store_temperature <= 0:
            raise DKError(
                f"teacher.store_temperature={self.store_temperature} must be > 0",
                "use the method's temperature, e.g. 20, or null",
            )


@dataclass
class ReplicasConfig:
    """Several same-architecture models trained as one batched computation
    (``docs/performance.md``).

    Replica ``k`` is exactly the ordinary run with ``seed=seeds[k]`` and ``method.<key>=values[k]``
    for every swept key: its own initialization, data order, jitter, method hyperparameters. Lists
    are zipped (not crossed): every non-empty list has the same length K, the number of models.
    A key left out keeps the run's value for every replica (e.g. a temperature sweep on one seed).
    """

    # seed of each replica (init, dropout, data order)
    seeds: list[int] = field(default_factory=list)
    # method hyperparameter -> list of K values
    method: dict[str, Any] = field(default_factory=dict)
    # optim.lr -> list of K step sizes. SGD-family updates are linear in the gradient, so replica
    # k's step size is its loss scaled by lr_k / optim.lr in the sum that is backpropagated.
    optim: dict[str, Any] = field(default_factory=dict, metadata=HASHED_IF_SET)

    def __post_init__(self) -> None:
        if any(s < 0 for s in self.seeds):
            raise DKError(f"replicas.seeds={self.seeds} holds a negative seed", "use seeds ≥ 0")
        for key, values in self.optim.items():
            if key != "lr":
                raise DKError(
                    f"replicas.optim.{key} cannot vary: only the step size can",
                    "sweep replicas.optim.lr, or run the models one by one",
                )
            if (
                not isinstance(values, list)
                or not values
                or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                    for v in values
                )
            ):
                raise DKError(
                    "replicas.optim.lr must be a non-empty list of positive step sizes, got "
                    f"{short(values)}",
                    "write e.g. replicas.optim.lr=[0.01, 0.03, 0.1]",
                )
        for key, values in self.method.items():
            if key == "name":
                raise DKError(
                    "replicas.method.name cannot vary: replicas share one method",
                    "sweep its hyperparameters instead, e.g. replicas.method.temperature=[1, 2, 4]",
                )
            if not isinstance(values, list) or not values:
                raise DKError(
                    f"replicas.method.{key} must be a non-empty list of values, got "
                    f"{short(values)}",
                    f"write e.g. replicas.method.{key}=[1, 2, 4]",
                )
        lengths = {
            f"replicas.{k}": len(v)
            for k, v in (
                ("seeds", self.seeds),
                *((f"method.{k}", v) for k, v in self.method.items()),
                *((f"optim.{k}", v) for k, v in self.optim.items()),
            )
            if v
        }
        if len(set(lengths.values())) > 1:
            raise DKError(
                "replica lists differ in length "
                f"({', '.join(f'{k}: {n}' for k, n in lengths.items())})",
                "give every swept key one value per model (lists are zipped, not crossed)",
            )

    @property
    def count(self) -> int:
        """K, the number of models; 0 when no replicas are configured (an ordinary run)."""
        return max(
            [
                len(self.seeds),
                *(len(v) for v in self.method.values()),
                *(len(v) for v in self.optim.values()),
            ],
            default=0,
        )


@dataclass
class EnsembleConfig:
    """An ensemble: ``members`` models of one architecture that differ only by seed (their
    initialization, dropout and data order), trained as one batched run. Member ``k`` is exactly
    the ordinary run with ``seed + k``; the run directory serves as one teacher (``dk distill
    --teacher RUN_DIR``, ``dk eval RUN_DIR``) and each member stays loadable from
    ``RUN_DIR/replicas/<k>`` (docs/guide.md, "Ensembles")."""

    # 0 = an ordinary run; N ≥ 2 = an ensemble of N models (seeds seed .. seed+N-1)
    members: int = 0

    def __post_init__(self) -> None:
        if self.members == 1 or self.members < 0:
            raise DKError(
                f"ensemble.members={self.members} is not an ensemble",
                "use 2 or more members, or 0 for an ordinary run",
            )

    def seeds(self, seed: int) -> list[int]:
        return [seed + k for k in range(self.members)]


TRAIN_STEPS = ("eager", "compile", "cuda_graph")
PRECISIONS = ("fp32", "bf16")


@dataclass
class RunConfig:
    """One training run: a teacher (``dk train``) or a student (``dk distill``)."""

    # the run's directory: new, empty, or an earlier darkknowledge run (docs/reliability.md)
    run_dir: str = field(default="runs/default", metadata=NOT_HASHED)
    seed: int = 0  # seeds initialization, dropout and the data order
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    deterministic: bool = False  # torch deterministic algorithms only (--deterministic)
    data: DataConfig = field(default_factory=DataConfig)
    model: dict[str, Any] = field(default_factory=lambda: {"name": "mlp"})
    method: dict[str, Any] = field(default_factory=lambda: {"name": "hard_targets"})
    optim: OptimConfig = field(default_factory=OptimConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    eval_every: int = 1  # epochs between evaluations (the last epoch is always evaluated)
    # early stopping: keep the epoch with fewest errors on this split ("valid")
    select_best_on: str | None = None
    checkpoint_every: int = 1  # epochs between checkpoints
    checkpoint_every_steps: int = 0  # also checkpoint every N steps (0 = off)
    keep_checkpoints: int = 2  # how many of the newest checkpoints are kept
    log_every: int = 1  # steps between metric lines in metrics.jsonl
    # progress bar (only shown on a terminal)
    progress: bool = field(default=True, metadata=NOT_HASHED)
    # Stop after this many steps exactly as if SIGTERM arrived then: checkpoint, raise Interrupted
    # (dk exits 143). 0 = off. For tests of resume and for time-sliced jobs; not part of the hash.
    stop_after_steps: int = field(default=0, metadata=NOT_HASHED)
    # Fast path (docs/performance.md). Steps between host syncs of the loss/finite checks; null =
    # 1 on CPU (every step checked before its update), 50 on CUDA. Changes no result: not hashed.
    sync_every: int | None = field(default=None, metadata=NOT_HASHED)
    # eager | compile (torch.compile) | cuda_graph (compile + CUDA graphs; CUDA only)
    train_step: str = field(default="eager", metadata=NOT_HASHED)
    # CPU threads: auto (the cores other processes leave idle, at least 1) or a count. Not hashed.
    threads: int | str = field(default="auto", metadata=NOT_HASHED)
    # fp32 | bf16 (autocast forward passes; losses and weights stay float32)
    precision: str = field(default="fp32", metadata=HASHED_IF_SET)
    # also log every metrics line as TensorBoard scalars (run_dir/tensorboard; needs tensorboard).
    # Not hashed.
    tensorboard: bool = field(default=False, metadata=NOT_HASHED)
    replicas: ReplicasConfig = field(default_factory=ReplicasConfig, metadata=HASHED_IF_SET)
    # ensemble.members=N: N seeds as one run
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig, metadata=HASHED_IF_SET)
    # ε of label smoothing (Szegedy et al. 2016): the hard-label targets of any method become
    # (1 − ε)·one-hot + ε/C; 0 = the labels as they are
    label_smoothing: float = field(default=0.0, metadata=HASHED_IF_SET)
    # born-again networks (Furlanello et al. 2018, dk distill): N students in a row, each of the
    # teacher's architecture, each distilled from the one before (generations/<k>/); 1 = one student
    generations: int = field(default=1, metadata=HASHED_IF_SET)

    def __post_init__(self) -> None:
        self._expand_ensemble()
        if not isinstance(self.run_dir, str) or not self.run_dir.strip():
            raise DKError(
                f"run_dir={short(self.run_dir)} names no directory",
                "give the run a directory of its own, e.g. run_dir=runs/my_run (or --run-dir)",
            )
        self.model = {"name": "mlp", **self.model}
        self.method = {"name": "hard_targets", **self.method}
        if not isinstance(self.model.get("name"), str):
            raise DKError(
                f"config section model needs a name, got {short(self.model)}",
                "add model.name, e.g. mlp (see `dk ls`)",
            )
        if not isinstance(self.method.get("name"), str):
            raise DKError(
                f"config section method needs a name, got {short(self.method)}",
                "add method.name, e.g. soft_targets (see `dk ls`)",
            )
        for key in ("eval_every", "checkpoint_every", "keep_checkpoints", "log_every"):
            if getattr(self, key) < 1:
                raise DKError(
                    f"{key}={getattr(self, key)} must be ≥ 1", f"set {key} to a positive integer"
                )
        if self.select_best_on not in (None, "valid"):
            raise DKError(
                f"select_best_on={short(self.select_best_on)} is not allowed",
                "use valid (never the test set) or null",
            )
        if self.select_best_on and self.data.validation_size == 0:
            raise DKError(
                "select_best_on=valid needs a validation split",
                "set data.validation_size to a positive count",
            )
        if self.seed < 0:
            raise DKError(f"seed={self.seed} is negative", "use a seed ≥ 0")
        if self.stop_after_steps < 0:
            raise DKError(
                f"stop_after_steps={self.stop_after_steps} is negative",
                "use 0 (off) or a positive step count",
            )
        if self.checkpoint_every_steps < 0:
            raise DKError(
                f"checkpoint_every_steps={self.checkpoint_every_steps} is negative",
                "use 0 (off) or a positive step count",
            )
        if self.sync_every is not None and self.sync_every < 1:
            raise DKError(
                f"sync_every={self.sync_every} must be ≥ 1",
                "use a positive step count, or null for the device default (1 on CPU, 50 on CUDA)",
            )
        if self.train_step not in TRAIN_STEPS:
            raise DKError(
                f"train_step={short(self.train_step)} is unknown",
                f"choose {', '.join(TRAIN_STEPS)}",
            )
        if self.threads != "auto" and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            raise DKError(
                f"threads={short(self.threads)} is invalid",
                "use threads=auto or a positive number of CPU threads",
            )
        if self.precision not in PRECISIONS:
            raise DKError(
                f"precision={short(self.precision)} is unknown", f"choose {' or '.join(PRECISIONS)}"
            )
        if self.replicas.optim and self.optim.name not in ("sgd", "paper_dropout"):
            raise DKError(
                "replicas.optim.lr needs an update linear in the gradient (sgd, paper_dropout); "
                f"optim.name={self.optim.name} is not",
                "run the step sizes one by one, or use optim.name=sgd",
            )
        if not 0.0 <= self.label_smoothing < 1.0:
            raise DKError(
                f"label_smoothing={self.label_smoothing} is out of range",
                "use an ε in [0, 1), e.g. label_smoothing=0.1 (0 = off)",
            )
        if self.generations < 1:
            raise DKError(
                f"generations={self.generations} must be ≥ 1",
                "use 1 for one student, or N ≥ 2 born-again generations",
            )
        if self.generations > 1 and self.replicas.count:
            raise DKError(
                f"generations={self.generations} with replicas: born-again generations "
                "train one model at a time",
                "drop replicas/ensemble, or set generations=1",
            )
        if self.replicas.optim and self.optim.weight_decay:
            raise DKError(
                "replicas.optim.lr cannot be combined with "
                f"optim.weight_decay={self.optim.weight_decay} (the decay would not scale with the "
                "step size)",
                "set optim.weight_decay=0, or run the step sizes one by one",
            )

    def _expand_ensemble(self) -> None:
        """``ensemble.members=N`` is ``replicas.seeds=[seed, ..., seed+N-1]`` (one mechanism: the
        replicas). A config read back from a run directory holds both, and they must agree."""
        if not self.ensemble.members:
            return
        seeds = self.ensemble.seeds(self.seed)
        r = self.replicas
        if r.method or r.optim or (r.seeds and r.seeds != seeds):
            raise DKError(
                f"ensemble.members={self.ensemble.members} and replicas are both set "
                f"(replicas.seeds={short(r.seeds)}, method {short(r.method)}, optim "
                f"{short(r.optim)})",
                "an ensemble's members differ by seed only: drop the replicas section (members get "
                "seeds seed .. seed+N-1)",
            )
        self.replicas = ReplicasConfig(seeds=seeds)

    def hash(self) -> str:
        """sha256 of the resolved config as its fields' hash policies declare (``hash_view``): what
        changes no computed result (run_dir, progress, threads, ...) is left out, and fields added
        later enter only when not at their default."""
        return hashlib.sha256(json.dumps(hash_view(self), sort_keys=True).encode()).hexdigest()

    def replica_configs(self) -> list[RunConfig]:
        """The K ordinary runs a replicated run trains at once (``[]`` without replicas).

        Replica ``k`` gets ``seed=replicas.seeds[k]`` and ``method.<key>=replicas.method.<key>[k]``;
        its ``run_dir`` is ``<run_dir>/replicas/<k>`` (where the batched run writes its model).
        """
        out = []
        for k in range(self.replicas.count):
            r = dataclasses.replace(
                self,
                replicas=ReplicasConfig(),
                ensemble=EnsembleConfig(),
                run_dir=str(Path(self.run_dir) / "replicas" / str(k)),
            )
            r.data, r.optim, r.teacher = (
                dataclasses.replace(self.data),
                dataclasses.replace(self.optim),
                dataclasses.replace(self.teacher),
            )
            if self.replicas.seeds:
                r.seed = self.replicas.seeds[k]
            r.model = dict(self.model)
            r.method = {
                **self.method,
                **{key: values[k] for key, values in self.replicas.method.items()},
            }
            if "lr" in self.replicas.optim:
                r.optim.lr = float(self.replicas.optim["lr"][k])
            out.append(r)
        return out


# ---------------------------------------------------------------- YAML + overrides


class _DataLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (plain data, no Python tags) that also reads ``1e-3`` as a float.

    YAML 1.1 wants a dot in a float (``1.0e-3``), so PyYAML reads ``lr: 1e-3`` as a string;
    YAML 1.2 and every user expect a number.
    """


class YAMLRefused(Exception):
    """YAML that parses but that a config may not hold (aliases, repeated keys); what and fix."""

    def __init__(self, what: str, fix: str) -> None:
        super().__init__(what)
        self.what, self.fix = what, fix


def _compose_node(self: yaml.SafeLoader, parent: Any, index: Any) -> Any:
    if self.check_event(yaml.AliasEvent):  # an alias can expand a few bytes into gigabytes
        event = self.peek_event()
        raise YAMLRefused(
            f"uses a YAML alias (*{str(event.anchor)[:40]}) at line {event.start_mark.line + 1}",
            "write the value out: configs may not use anchors and aliases",
        )
    return yaml.SafeLoader.compose_node(self, parent, index)


def _construct_mapping(self: yaml.SafeLoader, node: Any, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = self.construct_object(key_node, deep=True)
        try:
            repeated = key in seen
            seen.add(key)
        except TypeError:  # an unhashable key: SafeLoader's own error follows
            break
        if repeated:  # YAML would silently keep the last one
            raise YAMLRefused(
                f"repeats the key {short(key, 40)} at line {key_node.start_mark.line + 1}",
                "give each key once",
            )
    return yaml.SafeLoader.construct_mapping(self, node, deep)


_DataLoader.compose_node = _compose_node  # type: ignore[method-assign]
_DataLoader.construct_mapping = _construct_mapping  # type: ignore[method-assign]
# a config is a page of settings; a bigger file is a mistake (or an attack)
MAX_CONFIG_BYTES = 1_000_000


_DataLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml_data(text: str) -> Any:
    """Parse YAML text as plain data (never code: python/* tags are an error)."""
    try:
        return yaml.load(text, Loader=_DataLoader)  # a SafeLoader subclass: safe
    except RecursionError:
        raise YAMLRefused(
            "nests lists or mappings too deeply to read",
            "write the settings flat (a config nests a few levels)",
        ) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``optim.lr=0.1`` → (["optim", "lr"], 0.1); the value is parsed as YAML data."""
    if "=" not in text:
        raise DKError(
            f"override {short(text)} has no '='", "write overrides as key=value, e.g. optim.lr=0.1"
        )
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise DKError(
            f"override {short(text)} has an empty key",
            "write overrides as key=value, e.g. optim.lr=0.1",
        )
    try:
        value = load_yaml_data(raw) if raw != "" else ""
    except YAMLRefused as exc:
        raise DKError(f"override {short(text, 60)} {exc.what}", exc.fix) from None
    except yaml.YAMLError as exc:
        tag = _refused_tag(exc)
        if tag:
            raise DKError(
                f"override {short(text, 60)} uses the YAML tag {tag}",
                "configs hold plain data only (numbers, strings, lists, mappings)",
            ) from None
        raise DKError(
            f"override {short(text, 60)}: value is not valid YAML ({exc.__class__.__name__})",
            "quote strings, e.g. key='text'",
        ) from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise DKError(
                    f"override {short(text)}: {part} is not a section",
                    "override a leaf key instead",
                )
            node = child
        node[path[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise DKError(
            f"config file {path} is a directory",
            "give a YAML file, e.g. -c experiments/hinton2015/configs/teacher_1200.yaml",
        )
    if not path.is_file():
        raise DKError(f"config file {path} does not exist", "check the path")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise DKError(
            f"config file {path} is {size:,} bytes, more than a config may be "
            f"({MAX_CONFIG_BYTES:,})",
            "a config holds settings, not data: point data options at files instead",
        )
    try:
        data = load_yaml_data(path.read_text(encoding="utf-8"))
    except YAMLRefused as exc:
        raise DKError(f"config file {path} {exc.what}", exc.fix) from None
    except yaml.YAMLError as exc:
        tag = _refused_tag(exc)
        if tag:
            raise DKError(
                f"config file {path} uses the YAML tag {tag}",
                "configs hold plain data only (numbers, strings, lists, mappings)",
            ) from None
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise DKError(
            f"config file {path} is not valid YAML{at}",
            "fix the syntax (configs are plain YAML data)",
        ) from None
    except UnicodeDecodeError:
        raise DKError(f"config file {path} is not UTF-8 text", "save it as UTF-8 YAML") from None
    if data is None:
        raise DKError(
            f"config file {path} is empty",
            "write the settings to change (or leave -c out to train with the defaults)",
        )
    if not isinstance(data, dict):
        raise DKError(
            f"config file {path} must hold a mapping at top level, got {type(data).__name__}",
            "write key: value lines",
        )
    return data


def _refused_tag(exc: yaml.YAMLError) -> str | None:
    """The tag of a YAML node no safe constructor knows (``!!python/object/apply:...``), if that
    is what ``exc`` is about."""
    m = re.search(r"constructor for the tag '([^']*)'", str(getattr(exc, "problem", "") or ""))
    return short(m.group(1), 60).strip("'") if m else None


def is_cell_config(data: dict[str, Any]) -> bool:
    """An experiment cell (``experiments/*/configs/*.yaml``): the run lives under ``run:``."""
    return "cell" in data and "run" in data


def scale_overrides(cell: dict[str, Any], scale: str | None) -> list[str]:
    """A cell's ``scales.<scale>`` overrides as ``key=value`` strings (a list, or a mapping)."""
    if scale is None:
        return []
    scales = cell.get("scales") or {}
    if scale not in scales:
        raise DKError(
            f"the config has no scale {short(scale)} (it has: {', '.join(scales) or 'none'})",
            "choose one of its scales, or leave --scale out for the paper's setting",
        )
    ov = scales[scale] or []
    return list(ov) if isinstance(ov, list) else [f"{k}={json.dumps(v)}" for k, v in ov.items()]


def read_run_config(path: str | Path, scale: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """The run-config mapping of a YAML file and the overrides its ``scale`` adds.

    A plain run config is returned as is; an experiment cell gives its ``run:`` section (the
    paper's setting) and, with ``scale``, that scale's overrides (``smoke`` = minutes on a CPU).
    """
    data = read_yaml(path)
    if not is_cell_config(data):
        if scale is not None:
            raise DKError(
                f"--scale {scale} needs an experiment cell config; {path} is a plain run config",
                "leave --scale out",
            )
        return data, []
    return dict(data["run"] or {}), scale_overrides(data, scale)


def load_config(
    path: str | Path | None,
    overrides: list[str] = (),
    base: dict[str, Any] | None = None,
    scale: str | None = None,
) -> RunConfig:
    """Read YAML (or start from ``base``), apply ``key=value`` overrides, validate."""
    data = dict(base or {})
    if path is not None:
        run, extra = read_run_config(path, scale)
        data.update(run)
        overrides = [*extra, *overrides]
    data = apply_overrides(data, list(overrides))
    return build_dataclass(RunConfig, data, "")


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)
