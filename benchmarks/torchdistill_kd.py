"""Vanilla KD with torchdistill (PyPI ``torchdistill==1.1.5``): per-epoch time on the paper's MNIST
MLPs.

Runs in torchdistill's own environment (it needs torchvision and its own torch), never imports
darkknowledge, and prints one JSON line. ``benchmarks/run.py`` calls it by subprocess.

What comes from torchdistill (its public API):

* ``torchdistill.core.distillation.get_distillation_box``: the ``DistillationBox`` that builds the
  train data loader (``BaseDatasetWrapper`` + ``RandomSampler``, batch 100), freezes the teacher,
  builds the optimizer (``SGD``) and the per-step scheduler (``CosineAnnealingLR``) from its
  registries,
  and runs ``pre_epoch_process`` / ``forward_process`` / ``post_forward_process`` (backward, step,
  scheduler) / ``post_epoch_process``;
* the loss: ``WeightedSumLoss`` with one ``KDLoss`` term (``alpha · CE + beta · T² · KL``,
batchmean);
* ``torchdistill.misc.log.MetricLogger.log_every`` around the loader, as its example scripts do.

What is written here: the two ``nn.Sequential`` MLPs, the MNIST arrays as a ``TensorDataset``, and
the epoch loop that calls the box's methods (torchdistill ships that loop only in its example
scripts, not in the package), with ``loss.item()`` per step like those scripts.

The teacher's weights are random (same shapes as the paper's teacher): the timing does not depend on
them, and darkknowledge's side of the comparison uses an untrained teacher too.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time

import numpy as np
import torch
from safetensors.numpy import load_file
from torch import nn


def mlp(widths: list[int], input_dropout: float, hidden_dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Dropout(input_dropout)] if input_dropout else []
    for a, b in zip(widths[:-2], widths[1:-1], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
        if hidden_dropout:
            layers.append(nn.Dropout(hidden_dropout))
    layers.append(nn.Linear(widths[-2], widths[-1]))
    return nn.Sequential(*layers)


def mnist_subset(path: str, size: int, seed: int) -> torch.utils.data.TensorDataset:
    arrays = load_file(path)  # keys: images (N, 28, 28) uint8, labels (N,) int64
    images, labels = arrays["images"], arrays["labels"]
    pick = np.random.default_rng(seed).permutation(len(labels))[:size]
    x = torch.from_numpy(images[pick].reshape(len(pick), -1).astype(np.float32) / 255.0)
    y = torch.from_numpy(labels[pick].astype(np.int64))
    return torch.utils.data.TensorDataset(x, y)


def train_config(args: argparse.Namespace, total_steps: int) -> dict:
    kd_term = {
        "criterion": {
            "key": "KDLoss",
            "kwargs": {
                "student_module_path": ".",
                "student_module_io": "output",
                "teacher_module_path": ".",
                "teacher_module_io": "output",
                "temperature": args.temperature,
                "alpha": args.hard_weight,  # CE weight
                "beta": args.soft_weight,  # T²·KL weight
                "reduction": "batchmean",
            },
        },
        "weight": 1.0,
    }
    return {
        "num_epochs": args.warmup_epochs + args.epochs,
        "train_data_loader": {
            "dataset_id": "train",
            "sampler": {"class_or_func": torch.utils.data.RandomSampler, "kwargs": {}},
            "kwargs": {"batch_size": args.batch_size, "num_workers": 0, "drop_last": False},
        },
        "teacher": {"forward_proc": "forward_batch_only", "requires_grad": False},
        "student": {"forward_proc": "forward_batch_only", "requires_grad": True},
        "optimizer": {"key": "SGD", "kwargs": {"lr": args.lr, "momentum": args.momentum}},
        "scheduler": {
            "key": "CosineAnnealingLR",
            "kwargs": {"T_max": total_steps},
            "scheduling_step": 1,
        },
        "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": {"kd": kd_term}}},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mnist", required=True, help="darkknowledge's cached MNIST train.safetensors")
    p.add_argument("--train-size", type=int, default=5000)
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs (the median is reported)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--temperature", type=float, default=20.0)
    p.add_argument("--soft-weight", type=float, default=1.0)
    p.add_argument("--hard-weight", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    from torchdistill import __version__ as td_version
    from torchdistill.core.distillation import get_distillation_box
    from torchdistill.misc.log import MetricLogger

    logging.getLogger().setLevel(logging.WARNING)  # the box logs its setup at INFO
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    dataset = mnist_subset(args.mnist, args.train_size, args.seed)
    teacher = mlp([784, 1200, 1200, 10], 0.2, 0.5).eval()
    student = mlp([784, 800, 800, 10], 0.0, 0.0)
    steps_per_epoch = -(-len(dataset) // args.batch_size)
    total_steps = steps_per_epoch * (args.warmup_epochs + args.epochs)

    setup_started = time.perf_counter()
    box = get_distillation_box(
        teacher,
        student,
        {"train": dataset},
        train_config(args, total_steps),
        device,
        None,
        False,
        1.0,
    )
    setup_seconds = time.perf_counter() - setup_started

    epoch_seconds = []
    for epoch in range(args.warmup_epochs + args.epochs):
        started = time.perf_counter()
        box.pre_epoch_process(epoch=epoch)
        logger = MetricLogger(delimiter="  ")
        for sample_batch, targets, supp_dict in logger.log_every(
            box.train_data_loader, 10**9, f"Epoch: [{epoch}]"
        ):
            sample_batch, targets = sample_batch.to(device), targets.to(device)
            loss = box.forward_process(sample_batch, targets, supp_dict)
            box.post_forward_process(loss)
            logger.update(loss=loss.item(), lr=box.optimizer.param_groups[0]["lr"])
        box.post_epoch_process()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if epoch >= args.warmup_epochs:
            epoch_seconds.append(time.perf_counter() - started)

    median = statistics.median(epoch_seconds)
    print(
        json.dumps(
            {
                "tool": "torchdistill",
                "torchdistill": td_version,
                "torch": torch.__version__,
                "python": sys.version.split()[0],
                "device": str(device),
                "torch_threads": torch.get_num_threads(),
                "train_size": len(dataset),
                "batch_size": args.batch_size,
                "steps_per_epoch": steps_per_epoch,
                "epoch_seconds": epoch_seconds,
                "epoch_seconds_median": median,
                "samples_per_s": len(dataset) / median,
                "setup_seconds": setup_seconds,
                "final_loss": float(loss.item()),
                "criterion": str(box.criterion),
            }
        )
    )


if __name__ == "__main__":
    main()
