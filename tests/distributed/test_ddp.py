"""Two processes (torchrun, gloo, CPU) equal one: ``dk train`` and ``dk distill`` under DDP.

``optim.batch_size`` is the global batch: 2 processes × their half of each batch must give the
same updates as 1 process × the whole batch, up to the order floating-point sums are taken in.
The configs make the slices uneven (45 = 23 + 22), split them further into micro-batches, and end
an epoch with a one-example batch (one process then holds nothing and contributes a zero-weighted
example). Dropout is off for the equivalence; with dropout on, a 2-process run stopped and resumed
ends bitwise equal to an uninterrupted 2-process run (every process's RNG is checkpointed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from darkknowledge.config import load_config
from darkknowledge.errors import DKError
from darkknowledge.models import load_model
from darkknowledge.train import run
from darkknowledge.train.distributed import rank_slice
from darkknowledge.train.metrics import read_metrics

# CPU only (gloo), so the test means the same on any machine
BASE = ["device=cpu", "model.hidden=[32]", "data.test_size=100", "optim.epochs=2", "progress=false"]


def _torchrun(*args, nproc=2, timeout=120):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env["OMP_NUM_THREADS"] = "1"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "darkknowledge.cli",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def _assert_close(a, b):
    wa, wb = load_model(a).state_dict(), load_model(b).state_dict()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6, msg=k)


def _losses(run_dir):
    return [r["loss"] for r in read_metrics(Path(run_dir) / "metrics.jsonl") if "loss" in r]


def test_rank_slices_cover_the_batch_once_in_order():
    for n in (1, 2, 45, 50):
        for world in (1, 2, 3):
            parts = [rank_slice(n, r, world) for r in range(world)]
            assert [i for p in parts for i in range(p.start, p.stop)] == list(range(n))
            assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1


def test_two_processes_train_like_one(tmp_path):
    # 301 images, batches of 50: 6 even batches (25 + 25), then one of a single example (1 + 0)
    args = [*BASE, "data.train_size=301", "optim.batch_size=50", "optim.name=sgd", "optim.lr=0.3"]
    done = _torchrun("train", "--run-dir", str(tmp_path / "ddp"), *args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("model saved to") == 1  # only rank 0 reports
    run(load_config(None, [*args, f"run_dir={tmp_path / 'one'}"]))
    _assert_close(tmp_path / "ddp", tmp_path / "one")
    assert _losses(tmp_path / "ddp") == pytest.approx(_losses(tmp_path / "one"), rel=1e-5)
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 14


def test_two_processes_distill_like_one(tmp_path, teacher_file):
    """Uneven slices (23 + 22) in micro-batches of 10, a stored teacher, and soft + hard terms.

    (SGD here: Adam divides by the root of tiny second moments, which turns last-bit differences
    of near-zero gradients into ~1e-5 weight differences; equal within atol 1e-5, not 1e-6.)"""
    teacher = teacher_file(hidden=[16])
    args = [
        *BASE,
        "data.train_size=300",
        "optim.batch_size=45",
        "optim.micro_batch_size=10",
        "method.temperature=4",
        "method.hard_weight=0.2",
        "optim.name=sgd",
        "optim.lr=0.3",
    ]
    done = _torchrun(
        "distill", "--teacher", str(teacher), "--run-dir", str(tmp_path / "ddp"), *args
    )
    assert done.returncode == 0, done.stderr[-3000:]
    cfg = load_config(
        None,
        [
            *args,
            f"run_dir={tmp_path / 'one'}",
            "method.name=soft_targets",
            f"teacher.checkpoints=[{teacher}]",
        ],
    )
    run(cfg, kind="distill")
    _assert_close(tmp_path / "ddp", tmp_path / "one")
    assert _losses(tmp_path / "ddp") == pytest.approx(_losses(tmp_path / "one"), rel=1e-5)


def test_a_stopped_two_process_run_with_dropout_resumes_bitwise(tmp_path):
    args = [
        *BASE,
        "data.train_size=300",
        "optim.batch_size=50",
        "model.hidden_dropout=0.5",
        "data.jitter=1",
        "checkpoint_every_steps=4",
    ]
    ref = _torchrun("train", "--run-dir", str(tmp_path / "ref"), *args)
    assert ref.returncode == 0, ref.stderr[-3000:]
    cut = _torchrun("train", "--run-dir", str(tmp_path / "cut"), *args, "stop_after_steps=7")
    assert cut.returncode != 0 and "stopped by SIGTERM; checkpoint saved at" in cut.stderr
    state = json.loads(
        (tmp_path / "cut" / "checkpoints" / "step-000000007" / "state.json").read_text()
    )
    assert state["world_size"] == 2
    # one process cannot continue a two-process checkpoint (the second dropout stream is in it)
    with pytest.raises(
        DKError, match=r"written by 2 process\(es\), this run has 1.*--nproc_per_node=2"
    ):
        run(load_config(None, [*args, f"run_dir={tmp_path / 'cut'}"]), resume="auto")
    again = _torchrun("train", "--run-dir", str(tmp_path / "cut"), *args, "--resume", "auto")
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "cut" / "model.safetensors").read_bytes() == (
        tmp_path / "ref" / "model.safetensors"
    ).read_bytes()
    assert (tmp_path / "cut" / "metrics.jsonl").read_text() == (
        tmp_path / "ref" / "metrics.jsonl"
    ).read_text()
