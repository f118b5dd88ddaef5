"""The baselines: plain PyTorch loops of the same math, written the way typical user code is.

No darkknowledge code runs here. Data comes from ``torch.utils.data.DataLoader(TensorDataset(...),
batch_size=100, shuffle=True)`` on the CPU; each batch is jittered on the CPU (teacher), moved to
the
device, and every step ends with ``loss.item()``. ``teacher_step`` and ``distill_step`` build the
model, optimizer and loader and return a function that runs one training step; :func:`time_steps`
times a window of steps (``run.py`` interleaves such windows with the darkknowledge runs).

Run as a script (``python benchmarks/plain_loops.py compete --status FILE``), it is the competing
process of ``run.py``'s contention benchmark: a plain training loop that keeps training until it is
stopped, writing how many steps it has done to ``FILE`` (see :func:`compete`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def mlp(
    widths: list[int],
    input_dropout: float = 0.0,
    hidden_dropout: float = 0.0,
    init_std: float | None = None,
) -> nn.Sequential:
    """``widths[0] → ... → widths[-1]`` ReLU net with (inverted) dropout before each hidden layer's
    input.
    """
    layers: list[nn.Module] = [nn.Dropout(input_dropout)] if input_dropout else []
    for a, b in zip(widths[:-2], widths[1:-1], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
        if hidden_dropout:
            layers.append(nn.Dropout(hidden_dropout))
    layers.append(nn.Linear(widths[-2], widths[-1]))
    if init_std is not None:
        for m in layers:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, init_std)
                nn.init.zeros_(m.bias)
    return nn.Sequential(*layers)


def random_shift(images: torch.Tensor, k: int) -> torch.Tensor:
    """Shift every image of a (B, H, W) batch by its own random (dx, dy) in {-k..k}², zero fill; on
    the CPU.
    """
    b, h, w = images.shape
    padded = F.pad(images, (k, k, k, k))
    off = torch.randint(0, 2 * k + 1, (2, b))
    rows = off[0][:, None] + torch.arange(h)  # (B, H) rows of the padded image to take
    cols = off[1][:, None] + torch.arange(w)  # (B, W)
    return padded[torch.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def _batches(loader: DataLoader) -> Iterator:
    """Batches forever, one shuffled pass of the loader after another (epoch by epoch)."""
    while True:
        yield from loader


def time_steps(step: Callable[[], None], steps: int, device: torch.device) -> float:
    """Seconds for ``steps`` calls of ``step`` (the device is synchronized at both ends)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def teacher_step(
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    *,
    hidden: list[int],
    input_dropout: float,
    hidden_dropout: float,
    max_norm: float | None,
    init_std: float | None,
    lr: float,
    momentum: float,
    jitter: int,
    batch_size: int,
    optimizer: str = "paper_dropout",
    schedule: str = "constant",
    total_steps: int = 0,
    weight_decay: float = 0.0,
) -> Callable[[], None]:
    """Hard-label training of the paper's teacher: jitter, dropout, an SGD update, max-norm.

    ``optimizer="paper_dropout"`` (the default): the dropout paper's update ``v ← m·v − (1 − m)·ε·g,
    w ← w + v``, which is ``torch.optim.SGD(lr=ε, momentum=m, dampening=1 − m)`` (exactly, while ε
    and m stay fixed, i.e. within an epoch). ``optimizer="sgd"``: plain
    ``torch.optim.SGD(lr, momentum, weight_decay)`` (no dampening), with ``schedule="cosine"`` a
    ``CosineAnnealingLR`` over ``total_steps`` stepped every step (``"constant"``: none).

    Args:
        images: (N, 28, 28) uint8 on the CPU.
        labels: (N,) int64 on the CPU.
    """
    loader = DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=True)
    model = mlp(
        [images[0].numel(), *hidden, int(labels.max()) + 1], input_dropout, hidden_dropout, init_std
    ).to(device)
    model.train()
    # max-norm projection of each hidden unit's incoming weights (none when max_norm is None)
    hidden_layers = [m for m in model if isinstance(m, nn.Linear)][:-1] if max_norm else []
    if optimizer == "paper_dropout":
        opt = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=momentum, dampening=1.0 - momentum
        )
    elif optimizer == "sgd":
        opt = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
        )
    else:
        raise ValueError(f"optimizer={optimizer!r}: the plain loop knows paper_dropout and sgd")
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule={schedule!r}: the plain loop knows constant and cosine")
    cosine = schedule == "cosine" and optimizer == "sgd"
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total_steps, 1))
        if cosine
        else None
    )
    batches = _batches(loader)

    def step() -> None:
        x, y = next(batches)
        x = random_shift(x, jitter).reshape(len(x), -1).float().div(255.0)
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        with torch.no_grad():
            for layer in hidden_layers:
                layer.weight.renorm_(2, 0, max_norm)
        loss.item()

    return step


def distill_step(
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    *,
    teacher_hidden: list[int],
    student_hidden: list[int],
    temperature: float,
    soft_weight: float,
    hard_weight: float,
    lr: float,
    momentum: float,
    total_steps: int,
    batch_size: int,
    teacher_outputs: str = "live",
) -> Callable[[], None]:
    """Soft-target distillation, the teacher run live on every batch or its outputs stored.

    ``loss = soft_weight · T² · KL(p_T ‖ q_T) + hard_weight · CE(y, q_1)``, SGD with momentum and a
    per-step cosine learning rate (``CosineAnnealingLR`` stepped every step).
    ``teacher_outputs="live"`` (the default) runs the teacher under ``no_grad`` on every batch;
    ``"stored"`` computes its logits over the whole transfer set once, here (outside any timed
    window), and the loader hands them out with the images, the way user code would keep them in
    a tensor.
    """
    if teacher_outputs not in ("live", "stored"):
        raise ValueError(f"teacher_outputs={teacher_outputs!r}: choose live or stored")
    features = images.reshape(len(images), -1).float().div(255.0)
    classes = int(labels.max()) + 1
    teacher = mlp([features.shape[1], *teacher_hidden, classes], 0.2, 0.5).to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    if teacher_outputs == "stored":
        with torch.no_grad():
            stored = torch.cat([teacher(chunk.to(device)).cpu() for chunk in features.split(10000)])
        dataset = TensorDataset(features, labels, stored)
    else:
        dataset = TensorDataset(features, labels)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True)
    student = mlp([features.shape[1], *student_hidden, classes]).to(device).train()
    optimizer = torch.optim.SGD(student.parameters(), lr=lr, momentum=momentum)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    batches = _batches(loader)
    t2 = temperature * temperature

    def step() -> None:
        if teacher_outputs == "stored":
            x, y, teacher_logits = next(batches)
            x, y, teacher_logits = x.to(device), y.to(device), teacher_logits.to(device)
        else:
            x, y = next(batches)
            x, y = x.to(device), y.to(device)
            with torch.no_grad():
                teacher_logits = teacher(x)
        logits = student(x)
        soft = F.kl_div(
            F.log_softmax(logits / temperature, dim=1),
            F.log_softmax(teacher_logits / temperature, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        loss = soft_weight * t2 * soft + hard_weight * F.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        loss.item()

    return step


# ---------------------------------------------------------------- the competing process


def compete(status: Path, threads: int | None, max_seconds: float, warmup_steps: int) -> int:
    """Train a plain loop (the teacher's 784-1200-1200-10 MLP, SGD, batch 100, on random images)
    until stopped, writing ``{"steps", "seconds", "threads", "default_threads", "pid"}`` to
    ``status`` (atomically, about every 0.2 s; first after ``warmup_steps`` steps).

    ``threads``: None keeps PyTorch's default (one thread per core, when ``OMP_NUM_THREADS`` is not
    set). Stops by itself after ``max_seconds``, or as soon as its parent process is gone, so a
    benchmark that dies cannot leave it running.
    """
    parent = os.getppid()
    default = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6000, 28, 28), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (6000,), generator=gen)
    step = teacher_step(
        images,
        labels,
        torch.device("cpu"),
        hidden=[1200, 1200],
        input_dropout=0.2,
        hidden_dropout=0.5,
        max_norm=15**0.5,
        init_std=0.01,
        lr=0.1,
        momentum=0.9,
        jitter=2,
        batch_size=100,
        optimizer="sgd",
    )
    tmp = status.with_name(status.name + ".tmp")

    def report(steps: int, seconds: float) -> None:
        info = {
            "steps": steps,
            "seconds": seconds,
            "threads": torch.get_num_threads(),
            "default_threads": default,
            "pid": os.getpid(),
        }
        tmp.write_text(json.dumps(info))
        os.replace(tmp, status)

    for _ in range(warmup_steps):
        step()
    start = last = time.monotonic()
    steps = 0
    report(0, 0.0)
    while True:
        step()
        steps += 1
        now = time.monotonic()
        if now - last >= 0.2:
            report(steps, now - start)
            last = now
            if os.getppid() != parent or now - start > max_seconds:
                return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="plain PyTorch loops; `compete`: the competing process")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compete", help="train a plain loop until stopped (contention benchmark)")
    c.add_argument("--status", type=Path, required=True, help="JSON file of steps done so far")
    c.add_argument("--threads", type=int, default=None, help="default: PyTorch's default")
    c.add_argument("--max-seconds", type=float, default=1800.0)
    c.add_argument("--warmup-steps", type=int, default=5)
    args = p.parse_args(argv)
    return compete(args.status, args.threads, args.max_seconds, args.warmup_steps)


if __name__ == "__main__":
    sys.exit(main())
