"""train_step (eager / compile / cuda_graph), precision (fp32 / bf16), multi-tensor optimizer
updates.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from darkknowledge.config import load_config
from darkknowledge.errors import DKError
from darkknowledge.models import load_model
from darkknowledge.train import loop, run
from darkknowledge.train.checkpoint import optimizer_state, restore_optimizer
from darkknowledge.train.metrics import read_metrics
from darkknowledge.train.optim import build_optimizer

# a few steps only: 120 images, batches of 40, one epoch
SHORT = ["model.hidden=[16]", "data.train_size=120", "optim.epochs=1", "optim.batch_size=40"]


def _losses(cfg):
    return [r["loss"] for r in read_metrics(Path(cfg.run_dir) / "metrics.jsonl") if "loss" in r]


def _close(a, b, rtol, atol):
    wa, wb = load_model(a.run_dir).state_dict(), load_model(b.run_dir).state_dict()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=rtol, atol=atol, msg=k)


def _compiled_equals_eager(make_cfg, teacher_file):
    distill = [
        "method.name=soft_targets",
        "method.temperature=4",
        f"teacher.checkpoints=[{teacher_file()}]",
        "optim.name=adam",
        "optim.lr=0.01",
    ]
    eager = make_cfg(*SHORT, *distill, name="eager")
    compiled = make_cfg(*SHORT, *distill, "train_step=compile", name="compiled")
    run(eager, kind="distill")
    run(compiled, kind="distill")
    assert _losses(compiled) == pytest.approx(_losses(eager), rel=1e-5)
    _close(compiled, eager, rtol=1e-4, atol=1e-6)


def test_the_step_compiles_and_equals_eager(make_cfg, teacher_file, monkeypatch):
    """Dynamo traces forward + method loss, AOTAutograd derives the backward; no code generation
    (backend aot_eager), so the default suite stays fast. The inductor run is the slow test
    below."""
    real = torch.compile
    calls = []

    def aot_eager(fn, **kwargs):
        calls.append(kwargs)
        return real(fn, backend="aot_eager", **kwargs)

    monkeypatch.setattr(torch, "compile", aot_eager)
    _compiled_equals_eager(make_cfg, teacher_file)
    assert calls == [{"dynamic": False}]


@pytest.mark.slow
def test_the_inductor_compiled_step_equals_eager(make_cfg, teacher_file):
    """The real train_step=compile (inductor, C++ kernels on CPU): ~25 s cold on 2 cores."""
    _compiled_equals_eager(make_cfg, teacher_file)


def test_cuda_graph_needs_cuda_and_is_refused_before_anything_is_written(make_cfg):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = make_cfg(*SHORT, "train_step=cuda_graph", "device=cpu")
    with pytest.raises(DKError, match="train_step=cuda_graph needs a CUDA device"):
        run(cfg)
    assert not Path(cfg.run_dir).exists()


def test_bf16_runs_close_to_fp32_and_the_loss_stays_float32(make_cfg, monkeypatch, teacher_file):
    seen = []
    real = loop._objective

    def spy(methods, replicated, logits, targets, labels, lr_scale=None, **step):
        loss, terms = real(methods, replicated, logits, targets, labels, lr_scale, **step)
        seen.append((logits.dtype, loss.dtype, {t.dtype for t in terms.values()}))
        return loss, terms

    monkeypatch.setattr(loop, "_objective", spy)
    distill = [
        "method.name=soft_targets",
        "method.temperature=4",
        "method.hard_weight=0.2",
        f"teacher.checkpoints=[{teacher_file()}]",
        "teacher.outputs=live",
    ]
    fp32, bf16 = (
        make_cfg(*SHORT, *distill, name="fp32"),
        make_cfg(*SHORT, *distill, "precision=bf16", name="bf16"),
    )
    run(fp32, kind="distill")
    assert {s[0] for s in seen} == {torch.float32}
    seen.clear()
    run(bf16, kind="distill")
    assert seen and all(s == (torch.bfloat16, torch.float32, {torch.float32}) for s in seen)
    # bf16 keeps ~3 significant digits in the forward pass; weights stay float32 masters
    assert _losses(bf16) == pytest.approx(_losses(fp32), rel=2e-2)
    _close(bf16, fp32, rtol=0.0, atol=5e-3)
    assert all(v.dtype == torch.float32 for v in load_model(bf16.run_dir).state_dict().values())


def test_bf16_replicas_run(make_cfg):
    summary = run(make_cfg(*SHORT, "precision=bf16", "replicas.seeds=[0, 1]"))
    assert len(summary["replicas"]) == 2


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_torch_optimizers_use_fused_updates_and_a_checkpoint_keeps_them(name):
    cfg = load_config(None, [f"optim.name={name}"]).optim
    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(3))]
    opt = build_optimizer(cfg, params)
    assert opt.param_groups[0]["fused"] is True  # CPU and CUDA (see test_gpu.py)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    tensors, scalars = optimizer_state(opt)
    # as written by an older version (foreach on CPU) or by a device without fused kernels
    scalars["param_groups"][0].update(foreach=True, fused=None)
    again = build_optimizer(cfg, params)
    restore_optimizer(again, tensors, scalars)
    assert again.param_groups[0]["fused"] is True and not again.param_groups[0]["foreach"]


def test_config_checks_for_the_new_fields():
    for override, needle in [
        ("sync_every=0", "sync_every=0 must be ≥ 1"),
        ("train_step=jit", "train_step='jit' is unknown"),
        ("precision=fp16", "precision='fp16' is unknown"),
    ]:
        with pytest.raises(DKError, match=needle):
            load_config(None, [override])


def test_every_compiled_run_compiles_its_own_step_past_the_recompile_limit(
    make_cfg, teacher_file, monkeypatch
):
    """Many compiled runs in one process (a `dk reproduce`): each still compiles, none falls back to
    eager at dynamo's recompile limit (lowered to 1 here: the second run would be its first
    victim)."""
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)
    real, compiled_graphs = torch.compile, []

    def counting(gm, example_inputs):
        compiled_graphs.append(gm)
        return gm.forward

    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, backend=counting, **kw))
    for k in range(3):
        run(make_cfg(*SHORT, "train_step=compile", f"seed={k}", name=f"run{k}"))
        assert len(compiled_graphs) > k, f"run {k} did not compile its step"
