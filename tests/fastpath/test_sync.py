"""Deferred host syncs: loss terms and finite flags stay on the device for ``sync_every`` steps.

The results never depend on ``sync_every`` (same weights, same metrics.jsonl, bit for bit); only
when the host looks changes. A non-finite loss is still reported at its exact step, batch and
component, and the last good checkpoint is still left untouched.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

from darkknowledge.cli import main
from darkknowledge.errors import NonFiniteLossError
from darkknowledge.train import run

ARGS = [
    "model.hidden=[32]",
    "data.train_size=300",
    "data.test_size=100",
    "optim.epochs=2",
    "optim.batch_size=25",
    "checkpoint_every_steps=3",
    "progress=false",
]


@pytest.mark.parametrize("sync_every", [4, 100])
def test_results_do_not_depend_on_sync_every(make_cfg, sync_every):
    common = ["model.hidden_dropout=0.3", "data.jitter=1", "optim.batch_size=25", "log_every=3"]
    ref, lazy = (
        make_cfg(*common, name="ref"),
        make_cfg(*common, f"sync_every={sync_every}", name="lazy"),
    )
    run(ref)
    run(lazy)
    for name in ("model.safetensors", "metrics.jsonl"):
        assert (Path(lazy.run_dir) / name).read_bytes() == (
            Path(ref.run_dir) / name
        ).read_bytes(), name
    # sync_every changes no result, so a run may resume with another
    assert ref.hash() == lazy.hash()


def _count_loop_syncs(monkeypatch):
    """Count the host syncs (item, tolist, bool/float/int of a tensor) made by the training loop
    itself.
    """
    calls = []
    loop_file = str(Path(inspect.getfile(run)).with_name("loop.py"))
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        real = getattr(torch.Tensor, name)

        def spy(self, *a, _real=real, _name=name, **k):
            caller = inspect.currentframe().f_back
            if caller is not None and caller.f_code.co_filename == loop_file:
                calls.append((_name, caller.f_code.co_name))
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    return calls


@pytest.mark.parametrize(("sync_every", "expected"), [(1, 12), (5, 3)])
def test_the_loop_syncs_once_per_sync_point_not_once_per_step(
    make_cfg, monkeypatch, sync_every, expected
):
    """12 steps (one epoch, no checkpoints but the last): one sync per step with sync_every=1;
    with 5, syncs after steps 5, 10 and at the epoch end (12). (The hard-target loss checks its
    labels on the host only for CPU tensors, where that costs nothing; it is not the loop's.)"""
    cfg = make_cfg(
        "optim.epochs=1", "optim.batch_size=25", f"sync_every={sync_every}", "checkpoint_every=1"
    )
    calls = _count_loop_syncs(monkeypatch)
    run(cfg)
    in_flush = [c for c in calls if c[1] == "flush"]
    assert len(in_flush) == expected
    assert {fn for _, fn in calls} <= {
        "flush",
        "checkpoint",
    }  # nothing else in the loop touches the host


def test_a_deferred_nan_still_names_its_exact_step_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch, capsys, snapshot, inject_nan
):
    """Checkpoint at step 3; resumed with sync_every=5, the NaN comes at step 5 and is found at
    the next sync point (the step-6 checkpoint), which is then not written."""
    run_dir = tmp_path / "run"
    assert main(["train", "--run-dir", str(run_dir), *ARGS, "stop_after_steps=3"]) == 143
    checkpoints = snapshot(run_dir / "checkpoints")
    capsys.readouterr()
    inject_nan(at_call=2)
    rc = main(["train", "--run-dir", str(run_dir), *ARGS, "sync_every=5", "--resume", "auto"])
    err = capsys.readouterr().err
    assert rc == 3
    assert err.startswith(
        "dk: error: non-finite loss at step 5 (epoch 0, batch 4): loss=nan, hard=nan;"
    )
    assert err.count("\n") == 1 and "the last good checkpoint is kept" in err
    assert snapshot(run_dir / "checkpoints") == checkpoints
    logged = [line for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(logged) == 4  # steps 1-4 logged, nothing from step 5 on


def test_the_replica_that_diverges_is_named(make_cfg, monkeypatch):
    from darkknowledge.train.batches import ReplicaBatches

    real = ReplicaBatches.batch

    def batch(self, order, step):
        pos, x, y = real(self, order, step)
        if step == 2:
            x = x.clone()
            x[1, 0, 100] = float("nan")  # replica 1's first example
        return pos, x, y

    monkeypatch.setattr(ReplicaBatches, "batch", batch)
    cfg = make_cfg("replicas.seeds=[0, 1, 2]", "sync_every=4")
    with pytest.raises(
        NonFiniteLossError,
        match=r"^non-finite loss at step 3 \(epoch 0, batch 2, replica 1\): loss=nan, hard=nan;",
    ):
        run(cfg)
