"""The one training loop, for teachers and students alike.

Read top to bottom: set up the batch source and optimizer, restore a checkpoint if resuming,
then for every step: draw a batch (on the device), get the teacher's logits (from the store by
dataset index, or live), apply the method, check every loss component is finite, step, project
max-norm, log; evaluate and checkpoint at epoch ends; stop cleanly on SIGTERM/SIGINT.
A teacher is trained by the ``hard_targets`` method with no teacher; nothing else differs.
"""

from __future__ import annotations

import math
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
from darkknowledge.train.signals import Interrupted, stop_on_signals


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


def _rng_tensors(data_gen: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    out = {"rng/torch": torch.get_rng_state(), "rng/data": data_gen.get_state()}
    if device.type == "cuda":
        out["rng/cuda"] = torch.cuda.get_rng_state(device)
    return out


def _restore_rng(tensors: dict[str, torch.Tensor], data_gen: torch.Generator, device: torch.device, where: str) -> None:
    for key in ("rng/torch", "rng/data") + (("rng/cuda",) if device.type == "cuda" else ()):
        if key not in tensors:
            raise DKError(f"checkpoint {where} lacks {key}", "it was not written by this version of darkknowledge; start a new run")
    torch.set_rng_state(tensors["rng/torch"])
    data_gen.set_state(tensors["rng/data"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng/cuda"], device)


def fit(cfg: RunConfig, inputs: FitInputs, run_dir: Path, resume: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``inputs.model`` as ``cfg`` says; returns the final evaluation per eval set."""
    model, method, device = inputs.model, inputs.method, inputs.device
    data_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    source = IndexedBatches(inputs.train_set, cfg.optim.batch_size, data_gen, cfg.data.jitter)
    optimizer = build_optimizer(cfg.optim, model.parameters())
    total_steps = cfg.optim.epochs * source.steps_per_epoch
    micro = cfg.optim.micro_batch_size or cfg.optim.batch_size
    combine = cfg.teacher.combine
    log = MetricsLog(run_dir / "metrics.jsonl")

    epoch, step_in_epoch, global_step, order = 0, 0, 0, None
    # Early stopping (select_best_on=valid): the weights of the epoch with fewest validation errors.
    best: dict[str, Any] = {"errors": None, "epoch": None, "weights": None}
    if resume is not None:
        state, tensors = resume["state"], resume["tensors"]
        model.load_state_dict(resume["model"])
        restore_optimizer(optimizer, tensors, state["optimizer"])
        _restore_rng(tensors, data_gen, device, str(resume["path"]))
        epoch, step_in_epoch, global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        order = tensors["data/order"].to(device) if "data/order" in tensors else None
        best.update(state.get("best", {}))
        if best["errors"] is not None:
            best["weights"] = {k[len("best/") :]: v.to(device) for k, v in tensors.items() if k.startswith("best/")}
        log.truncate_after(global_step)

    def checkpoint() -> Path:
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
        return save_checkpoint(run_dir / "checkpoints", global_step, model.state_dict(), tensors, state, cfg.keep_checkpoints)

    progress = None
    if cfg.progress and sys.stderr.isatty():
        from tqdm import tqdm

        progress = tqdm(total=total_steps, initial=global_step, unit="step", dynamic_ncols=True, leave=False)

    results: dict[str, Any] = {}
    started = time.perf_counter()
    model.train()
    with stop_on_signals() as stop:
        while epoch < cfg.optim.epochs:
            if order is None or step_in_epoch >= source.steps_per_epoch:
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
                if cfg.checkpoint_every_steps and global_step % cfg.checkpoint_every_steps == 0:
                    checkpoint()
                if stop.requested and step_in_epoch < source.steps_per_epoch:
                    _interrupt(stop.signum, checkpoint(), log, progress)
            epoch += 1
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
            saved = checkpoint() if last or epoch % cfg.checkpoint_every == 0 else None
            if stop.requested:
                _interrupt(stop.signum, saved or checkpoint(), log, progress)
    if progress is not None:
        progress.close()
    log.close()
    if best["weights"] is not None:
        model.load_state_dict(best["weights"])
    return {"best_epoch": best["epoch"], "eval": results, "steps": global_step, "epochs": epoch, "train_seconds": time.perf_counter() - started}


def _interrupt(signum: int, path: Path, log: MetricsLog, progress: Any) -> None:
    log.close()
    if progress is not None:
        progress.close()
    raise Interrupted(signum, str(path))


def _check_finite(loss: torch.Tensor, components: dict[str, torch.Tensor], step: int, epoch: int, batch: int) -> None:
    terms = {"loss": loss, **components}
    values = torch.stack([t.detach().float().reshape(()) for t in terms.values()])
    if bool(torch.isfinite(values).all()):
        return
    bad = [name for name, v in zip(terms, values.tolist()) if not math.isfinite(v)]
    raise NonFiniteLossError(
        f"non-finite loss at step {step + 1} (epoch {epoch}, batch {batch}): {', '.join(f'{n}={terms[n].item()}' for n in bad)}; "
        "the last good checkpoint is kept; lower optim.lr or check the inputs for NaN"
    )
