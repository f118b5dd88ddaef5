"""The fast path on CUDA (run with ``-m gpu`` on a GPU machine; skipped elsewhere).

What only a GPU can show: no host sync per step (CUDA's sync debug mode counts them), the
deferred NaN report at its exact step with the CUDA default sync_every=50, CUDA graphs, fused
optimizers, bf16 autocast on the GPU, replicas on the GPU, and DDP over NCCL (two GPUs).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from darkknowledge.config import load_config
from darkknowledge.errors import NonFiniteLossError
from darkknowledge.models import load_model
from darkknowledge.train import run
from darkknowledge.train.batches import IndexedBatches
from darkknowledge.train.metrics import read_metrics
from darkknowledge.train.optim import build_optimizer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

CUDA = [
    "device=cuda",
    "model.hidden=[64]",
    "data.train_size=1000",
    "data.test_size=200",
    "optim.epochs=1",
    "optim.batch_size=10",
]


def _close(a, b, rtol, atol):
    wa, wb = load_model(a).state_dict(), load_model(b).state_dict()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=rtol, atol=atol, msg=k)


def _losses(run_dir):
    return [r["loss"] for r in read_metrics(Path(run_dir) / "metrics.jsonl") if "loss" in r]


def _count_syncs(fn):
    """Synchronizing CUDA operations performed while ``fn`` runs (torch's sync debug mode)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in caught)


def test_no_host_sync_per_step(make_cfg, teacher_file):
    """100 steps of soft-target distillation from stored outputs (no label checks): with
    sync_every=50 the whole run syncs a handful of times (two flushes, the checkpoint, the
    evaluation), with sync_every=1 at least once per step."""
    common = [
        *CUDA,
        "method.name=soft_targets",
        "method.hard_weight=0",
        f"teacher.checkpoints=[{teacher_file()}]",
    ]
    lazy, eager = (
        make_cfg(*common, "sync_every=50", name="lazy"),
        make_cfg(*common, "sync_every=1", name="eager"),
    )
    n_lazy = _count_syncs(lambda: run(lazy, kind="distill"))
    n_eager = _count_syncs(lambda: run(eager, kind="distill"))
    assert n_eager >= 100
    assert n_lazy <= n_eager - 90
    assert (Path(lazy.run_dir) / "metrics.jsonl").read_text() == (
        Path(eager.run_dir) / "metrics.jsonl"
    ).read_text()


def test_the_cuda_default_defers_but_names_the_exact_nan_step(make_cfg, monkeypatch):
    real = IndexedBatches.batch

    def batch(self, order, step):
        pos, x, y = real(self, order, step)
        if step == 12:
            x = x.clone()
            x[0, 100] = float("nan")
        return pos, x, y

    monkeypatch.setattr(IndexedBatches, "batch", batch)
    cfg = make_cfg(*CUDA, "checkpoint_every_steps=40")
    with pytest.raises(
        NonFiniteLossError,
        match=r"non-finite loss at step 13 \(epoch 0, batch 12\): loss=nan, hard=nan",
    ):
        run(cfg)  # found at the step-40 sync point (sync_every defaults to 50 on CUDA)
    assert not (Path(cfg.run_dir) / "checkpoints").exists()


@pytest.mark.parametrize("mode", ["compile", "cuda_graph"])
def test_compiled_and_graphed_steps_equal_eager(make_cfg, mode):
    eager = make_cfg(*CUDA, "optim.batch_size=32", name="eager")
    # 1000 = 31 × 32 + 8: a ragged last batch
    fast = make_cfg(*CUDA, "optim.batch_size=32", f"train_step={mode}", name=mode)
    run(eager)
    run(fast)
    assert _losses(fast) == pytest.approx(_losses(eager), rel=1e-4)
    _close(fast.run_dir, eager.run_dir, rtol=1e-4, atol=1e-5)


def test_bf16_on_cuda_is_close_to_fp32(make_cfg):
    fp32, bf16 = make_cfg(*CUDA, name="fp32"), make_cfg(*CUDA, "precision=bf16", name="bf16")
    run(fp32)
    run(bf16)
    assert _losses(bf16) == pytest.approx(_losses(fp32), rel=3e-2)


def test_fused_optimizers_on_cuda_match_cpu(make_cfg):
    p = [torch.nn.Parameter(torch.randn(3, 2, device="cuda"))]
    for name in ("sgd", "adam"):
        assert (
            build_optimizer(load_config(None, [f"optim.name={name}"]).optim, p).param_groups[0][
                "fused"
            ]
            is True
        )
    gpu, cpu = (
        make_cfg(*CUDA, name="gpu"),
        make_cfg(*[a for a in CUDA if a != "device=cuda"], "device=cpu", name="cpu"),
    )
    run(gpu)
    run(cpu)
    _close(gpu.run_dir, cpu.run_dir, rtol=1e-4, atol=1e-5)


def test_replicas_on_cuda_equal_each_run_alone(make_cfg):
    cfg = make_cfg(*CUDA, "replicas.seeds=[0, 1, 2]", "data.jitter=1")
    run(cfg)
    for k, rc in enumerate(cfg.replica_configs()):
        alone = make_cfg(*CUDA, "data.jitter=1", f"seed={rc.seed}", name=f"alone{k}")
        run(alone)
        _close(rc.run_dir, alone.run_dir, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_gpus_over_nccl_train_like_one(tmp_path):
    args = [a for a in CUDA if a != "device=cuda"] + [
        "device=auto",
        "optim.batch_size=50",
        "progress=false",
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "darkknowledge.cli",
        "train",
        "--run-dir",
        str(tmp_path / "ddp"),
        *args,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    one = subprocess.run(
        [
            sys.executable,
            "-m",
            "darkknowledge.cli",
            "train",
            "--run-dir",
            str(tmp_path / "one"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    _close(tmp_path / "ddp", tmp_path / "one", rtol=1e-4, atol=1e-5)
