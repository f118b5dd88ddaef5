"""The one training loop, for teachers and students alike.

Read top to bottom: set up the batch source and optimizer, restore a checkpoint if resuming,
then for every step: draw a batch (on the device), get the teacher's logits (from the store by
dataset index, or live), apply the method, check every loss component is finite, step, project
max-norm, log; evaluate and checkpoint at epoch ends; stop cleanly on SIGTERM/SIGINT.
A teacher is trained by the ``hard_targets`` method with no teacher; nothing else differs.

Exact resume: a checkpoint holds the weights, the optimizer, the step and the position in the
epoch, the epoch's data order and every RNG the loop draws from (dropout: the torch RNG; order
and jitter: the loop's own generator). Resuming from any checkpoint therefore continues the very
same sequence of updates: on CPU the final weights equal an uninterrupted run's bit for bit.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from darkknowledge.config import RunConfig
from darkknowledge.data import TensorDataset
from darkknowledge.errors import DKError, NonFiniteLossError
from darkknowledge.methods import Method
from darkknowledge.teachers import Teacher
from darkknowledge.train.batches import IndexedBatches
from darkknowledge.train.checkpoint import optimizer_state, restore_optimizer, save_checkpoint
from darkknowledge.train.evaluate import evaluate
from darkknowledge.train.metrics import MetricsLog
from darkknowledge.train.optim import build_optimizer, hyperparams_at, set_hyperparams
from darkknowledge.train.signals import Interrupted, StopRequest, stop_on_signals


@dataclass
class FitInputs:
    """Everything the loop trains with, already built and validated (see ``train.run``)."""

    model: nn.Module
    method: Method
    train_set: TensorDataset
    device: torch.device
    teacher: Teacher | None = None
    teacher_logits: torch.Tensor | None = None  # (members, N, classes) aligned with train_set, or None = live
    eval_sets: dict[str, TensorDataset] = field(default_factory=dict)
    eval_teacher_logits: dict[str, torch.Tensor] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)


def _rng_keys(device: torch.device) -> tuple[str, ...]:
    return ("rng/torch", "rng/data") + (("rng/cuda",) if device.type == "cuda" else ())


def _rng_tensors(data_gen: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    out = {"rng/torch": torch.get_rng_state(), "rng/data": data_gen.get_state()}
    if device.type == "cuda":
        out["rng/cuda"] = torch.cuda.get_rng_state(device)
    return out


def check_resumable(cfg: RunConfig, ckpt: dict[str, Any], model: nn.Module, train_size: int, device: torch.device) -> None:
    """All-or-nothing: refuse (DKError naming the checkpoint) anything :func:`fit` could not restore in full.

    Checks the weights (names, shapes, dtypes), the optimizer state (on a scratch copy of the
    model), every RNG state, the data order and the counters, without changing ``model``.
    """
    where = ckpt["path"]
    state, tensors, weights = ckpt["state"], ckpt["tensors"], ckpt["model"]

    def bad(what: str) -> DKError:
        return DKError(f"checkpoint {where} cannot be restored: {what}", "resume from another checkpoint or start a new run_dir")

    expected = model.state_dict()
    for name, holder in (("model.safetensors", weights), ("best weights", {k[5:]: v for k, v in tensors.items() if k.startswith("best/")})):
        if name == "best weights" and not (isinstance(state.get("best"), dict) and state["best"].get("errors") is not None):
            continue
        if set(holder) != set(expected):
            raise bad(f"{name} holds {sorted(set(holder) ^ set(expected))} unlike the model")
        for k, v in expected.items():
            if holder[k].shape != v.shape or holder[k].dtype != v.dtype:
                raise bad(f"{name}: {k} is {holder[k].dtype} {tuple(holder[k].shape)}, the model has {v.dtype} {tuple(v.shape)}")
    for key in _rng_keys(device):
        if key not in tensors or tensors[key].dtype != torch.uint8:
            raise bad(f"state.safetensors lacks the RNG state {key}")
    if tensors["rng/torch"].shape != torch.get_rng_state().shape:
        raise bad("state.safetensors holds a torch RNG state of the wrong size")
    counters = {k: state[k] for k in ("epoch", "step_in_epoch", "global_step")}
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in counters.values()):
        raise bad(f"state.json counters {counters} are invalid")
    steps_per_epoch = math.ceil(train_size / cfg.optim.batch_size)
    if counters["epoch"] > cfg.optim.epochs or counters["step_in_epoch"] > steps_per_epoch:
        raise bad(f"state.json counters {counters} do not fit {cfg.optim.epochs} epochs of {steps_per_epoch} steps")
    if counters["step_in_epoch"]:
        order = tensors.get("data/order")
        if order is None or order.dtype != torch.int64 or tuple(order.shape) != (train_size,):
            raise bad(f"state.safetensors lacks this epoch's data order over {train_size} examples")
    # The optimizer state is restored into an optimizer over scratch CPU parameters of the same
    # shapes, in the same order: no copy of the model, nothing of the real run touched.
    scratch = [nn.Parameter(torch.zeros(p.shape, dtype=p.dtype)) for p in model.parameters()]
    optimizer = build_optimizer(cfg.optim, scratch)
    try:
        restore_optimizer(optimizer, tensors, state["optimizer"])
    except (AttributeError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise bad(f"optimizer state does not fit ({exc.__class__.__name__}: {exc})") from None
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for p in params:
        for k, v in optimizer.state.get(p, {}).items():
            if torch.is_tensor(v) and v.dim() > 0 and v.shape != p.shape:
                raise bad(f"optimizer buffer {k} has shape {tuple(v.shape)} for a parameter of shape {tuple(p.shape)}")


def fit(cfg: RunConfig, inputs: FitInputs, run_dir: Path, resume: dict[str, Any] | None = None, stop: StopRequest | None = None) -> dict[str, Any]:
    """Train ``inputs.model`` as ``cfg`` says; returns the final evaluation per eval set.

    ``stop`` is the stop request of the caller's signal handlers (``train.run`` installs them for
    the whole run); without one, ``fit`` installs its own for the training steps.
    """
    if stop is None:
        with stop_on_signals() as own:
            return fit(cfg, inputs, run_dir, resume, own)
    model, method, device = inputs.model, inputs.method, inputs.device
    data_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    source = IndexedBatches(inputs.train_set, cfg.optim.batch_size, data_gen, cfg.data.jitter)
    optimizer = build_optimizer(cfg.optim, model.parameters())
    total_steps = cfg.optim.epochs * source.steps_per_epoch
    micro = cfg.optim.micro_batch_size or cfg.optim.batch_size
    combine = cfg.teacher.combine
    log = MetricsLog(run_dir / "metrics.jsonl")

    # ``order`` is the current epoch's permutation; None at an epoch boundary (the next epoch draws one).
    epoch, step_in_epoch, global_step, order = 0, 0, 0, None
    # Early stopping (select_best_on=valid): the weights of the epoch with fewest validation errors.
    best: dict[str, Any] = {"errors": None, "epoch": None, "weights": None}
    if resume is not None:
        check_resumable(cfg, resume, model, len(inputs.train_set), device)
        state, tensors = resume["state"], resume["tensors"]
        model.load_state_dict(resume["model"])
        restore_optimizer(optimizer, tensors, state["optimizer"])
        torch.set_rng_state(tensors["rng/torch"])
        data_gen.set_state(tensors["rng/data"])
        if device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng/cuda"], device)
        epoch, step_in_epoch, global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        order = tensors["data/order"].to(device) if step_in_epoch else None
        best.update(state.get("best") or {})
        if best["errors"] is not None:
            best["weights"] = {k[len("best/") :]: v.to(device) for k, v in tensors.items() if k.startswith("best/")}
        log.truncate_after(global_step, epoch)
    else:
        log.reset()

    saved: dict[str, Any] = {"step": None, "path": None}

    def checkpoint() -> Path:
        if saved["step"] == (epoch, global_step):  # already saved in this state
            return saved["path"]
        bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise NonFiniteLossError(
                f"weights {', '.join(bad)} are non-finite after step {global_step} (epoch {epoch}); "
                "not saving them; the last good checkpoint is kept; lower optim.lr or check the inputs for NaN"
            )
        t_opt, s_opt = optimizer_state(optimizer)
        tensors = {**t_opt, **_rng_tensors(data_gen, device)}
        if order is not None:
            tensors["data/order"] = order
        if best["weights"] is not None:
            tensors.update({f"best/{k}": v for k, v in best["weights"].items()})
        state = {
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "global_step": global_step,
            "optimizer": s_opt,
            "config_hash": cfg.hash(),
            "fingerprints": inputs.fingerprints,
            "best": {"errors": best["errors"], "epoch": best["epoch"]},
            "torch": torch.__version__,
        }
        path = save_checkpoint(run_dir / "checkpoints", global_step, model.state_dict(), tensors, state, cfg.keep_checkpoints)
        saved.update(step=(epoch, global_step), path=path)
        return path

    progress = None
    if cfg.progress and sys.stderr.isatty():
        from tqdm import tqdm

        progress = tqdm(total=total_steps, initial=global_step, unit="step", dynamic_ncols=True, leave=False)

    results: dict[str, Any] = {}
    started = time.perf_counter()
    model.train()
    try:
        if stop.requested:  # a signal arrived while the run was being prepared
            raise Interrupted(stop.signum, saved["path"])
        while epoch < cfg.optim.epochs:
            if order is None:
                order, step_in_epoch = source.epoch_order(), 0
            while step_in_epoch < source.steps_per_epoch:
                hp = hyperparams_at(cfg.optim, epoch, global_step, total_steps)
                set_hyperparams(optimizer, hp)
                pos, x, y = source.batch(order, step_in_epoch)
                optimizer.zero_grad(set_to_none=True)
                # Gradient accumulation: chunks weighted by their share of the batch, so the
                # summed gradient equals the full batch's mean gradient (uneven last chunk too).
                totals: dict[str, torch.Tensor] = {}
                for start in range(0, len(pos), micro):
                    sl = slice(start, start + micro)
                    logits = model(x[sl])
                    t_logits = None
                    if method.needs_teacher:
                        if inputs.teacher_logits is not None:
                            t_logits = inputs.teacher_logits[:, pos[sl]]
                        else:
                            t_logits = inputs.teacher(x[sl])
                    out = method(logits, t_logits, None if y is None else y[sl], combine=combine)
                    _check_finite(out.loss, out.components, global_step, epoch, step_in_epoch)
                    share = len(pos[sl]) / len(pos)
                    (out.loss * share).backward()
                    for k, v in {"loss": out.loss, **out.components}.items():
                        totals[k] = totals.get(k, 0.0) + v.detach() * share
                optimizer.step()
                if hasattr(model, "project_max_norm_"):
                    model.project_max_norm_()
                step_in_epoch += 1
                global_step += 1
                if global_step % cfg.log_every == 0:
                    log.write({"step": global_step, "epoch": epoch, **{k: float(v) for k, v in totals.items()}, **hp})
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(epoch=epoch, loss=f"{float(totals['loss']):.4f}", refresh=False)
                if cfg.stop_after_steps and global_step == cfg.stop_after_steps:
                    stop.request(signal.SIGTERM)  # the test hook: behave exactly as on SIGTERM
                if cfg.checkpoint_every_steps and global_step % cfg.checkpoint_every_steps == 0:
                    checkpoint()
                if stop.requested and step_in_epoch < source.steps_per_epoch:
                    raise Interrupted(stop.signum, str(checkpoint()))
            epoch, step_in_epoch, order = epoch + 1, 0, None
            last = epoch == cfg.optim.epochs
            if inputs.eval_sets and (last or epoch % cfg.eval_every == 0):
                for name, ds in inputs.eval_sets.items():
                    results[name] = evaluate(model, ds, inputs.eval_teacher_logits.get(name))
                    log.write({"step": global_step, "epoch": epoch, "split": name, **results[name]})
                model.train()
                sel = cfg.select_best_on
                if sel and (best["errors"] is None or results[sel]["errors"] < best["errors"]):
                    best.update(errors=results[sel]["errors"], epoch=epoch)
                    best["weights"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if last or epoch % cfg.checkpoint_every == 0:
                checkpoint()
            if stop.requested:
                raise Interrupted(stop.signum, str(checkpoint()))
    finally:
        if progress is not None:
            progress.close()
        log.close()
    if best["weights"] is not None:
        model.load_state_dict(best["weights"])
    return {"best_epoch": best["epoch"], "eval": results, "steps": global_step, "epochs": epoch, "train_seconds": time.perf_counter() - started}


def _check_finite(loss: torch.Tensor, components: dict[str, torch.Tensor], step: int, epoch: int, batch: int) -> None:
    terms = {"loss": loss, **components}
    values = torch.stack([t.detach().float().reshape(()) for t in terms.values()])
    if bool(torch.isfinite(values).all()):
        return
    bad = [name for name, v in zip(terms, values.tolist(), strict=True) if not math.isfinite(v)]
    raise NonFiniteLossError(
        f"non-finite loss at step {step + 1} (epoch {epoch}, batch {batch}): {', '.join(f'{n}={terms[n].item()}' for n in bad)}; "
        "the last good checkpoint is kept; lower optim.lr or check the inputs for NaN"
    )
