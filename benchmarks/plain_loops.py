"""The baselines: plain PyTorch loops of the same math, written the way typical user code is.

No darkknowledge code runs here. Data comes from ``torch.utils.data.DataLoader(TensorDataset(...),
batch_size=100, shuffle=True)`` on the CPU; each batch is jittered on the CPU (teacher), moved to the
device, and every step ends with ``loss.item()``. ``teacher_step`` and ``distill_step`` build the
model, optimizer and loader and return a function that runs one training step; :func:`time_steps`
times a window of steps (``run.py`` interleaves such windows with the darkknowledge runs).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

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
    """``widths[0] → ... → widths[-1]`` ReLU net with (inverted) dropout before each hidden layer's input."""
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
    """Shift every image of a (B, H, W) batch by its own random (dx, dy) in {-k..k}², zero fill; on the CPU."""
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
    max_norm: float,
    init_std: float,
    lr: float,
    momentum: float,
    jitter: int,
    batch_size: int,
) -> Callable[[], None]:
    """Hard-label training of the paper's teacher: jitter, dropout, the dropout paper's update, max-norm.

    The update ``v ← m·v − (1 − m)·ε·g, w ← w + v`` is ``torch.optim.SGD(lr=ε, momentum=m,
    dampening=1 − m)`` (exactly, while ε and m stay fixed, i.e. within an epoch).

    Args:
        images: (N, 28, 28) uint8 on the CPU.
        labels: (N,) int64 on the CPU.
    """
    loader = DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=True)
    model = mlp(
        [images[0].numel(), *hidden, int(labels.max()) + 1], input_dropout, hidden_dropout, init_std
    ).to(device)
    model.train()
    hidden_layers = [m for m in model if isinstance(m, nn.Linear)][:-1]
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=momentum, dampening=1.0 - momentum
    )
    batches = _batches(loader)

    def step() -> None:
        x, y = next(batches)
        x = random_shift(x, jitter).reshape(len(x), -1).float().div(255.0)
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
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
) -> Callable[[], None]:
    """Soft-target distillation with the teacher run live on every batch (no store).

    ``loss = soft_weight · T² · KL(p_T ‖ q_T) + hard_weight · CE(y, q_1)``, SGD with momentum and a
    per-step cosine learning rate (``CosineAnnealingLR`` stepped every step).
    """
    features = images.reshape(len(images), -1).float().div(255.0)
    loader = DataLoader(TensorDataset(features, labels), batch_size=batch_size, shuffle=True)
    classes = int(labels.max()) + 1
    teacher = mlp([features.shape[1], *teacher_hidden, classes], 0.2, 0.5).to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = mlp([features.shape[1], *student_hidden, classes]).to(device).train()
    optimizer = torch.optim.SGD(student.parameters(), lr=lr, momentum=momentum)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    batches = _batches(loader)
    t2 = temperature * temperature

    def step() -> None:
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
