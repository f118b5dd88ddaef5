"""Exact resume: a run stopped anywhere and resumed ends bitwise equal to an uninterrupted run.

Composer's bar (LANDSCAPE.md): zero tolerance on CPU. Dropout and jitter are on, so the restore
of every RNG matters; the step/epoch positions, the data order, the optimizer and early-stopping
state are all exercised. Restoring is all-or-nothing: anything missing or foreign is a DKError
naming the checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from darkknowledge.config import load_config
from darkknowledge.errors import DKError
from darkknowledge.train import Interrupted, run
from darkknowledge.train.checkpoint import list_checkpoints
from darkknowledge.train.metrics import read_metrics

# 300 images, batch 50: 6 steps per epoch, 3 epochs = 18 steps; a checkpoint every 4 steps too.
TRAIN = [
    "model.hidden_dropout=0.5",
    "model.input_dropout=0.2",
    "data.jitter=2",
    "optim.epochs=3",
    "checkpoint_every_steps=4",
]


def _stop_then_resume(cfg, stop):
    stopped = load_config(None, [f"stop_after_steps={stop}"], base=_as_dict(cfg))
    with pytest.raises(Interrupted) as info:
        run(stopped)
    assert info.value.exit_code == 143
    return run(cfg, resume="auto")


def _as_dict(cfg):
    import dataclasses

    return dataclasses.asdict(cfg)


def _model_bytes(cfg):
    return (Path(cfg.run_dir) / "model.safetensors").read_bytes()


def _train_losses(cfg):
    return [r for r in read_metrics(Path(cfg.run_dir) / "metrics.jsonl")]


@pytest.fixture
def reference(make_cfg):
    """The uninterrupted runs, computed once per configuration and test."""
    cache = {}

    def get(*overrides, kind="train"):
        key = (overrides, kind)
        if key not in cache:
            cfg = make_cfg(*overrides, name=f"ref{len(cache)}")
            run(cfg, kind=kind)
            cache[key] = cfg
        return cache[key]

    return get


@pytest.mark.parametrize(
    "stop",
    [3, 4, 6, 7, 12, 17],
    ids=[
        "mid-epoch-between-checkpoints",
        "mid-epoch-at-a-step-checkpoint",
        "epoch-boundary",
        "first-step-of-an-epoch",
        "epoch-boundary-at-a-step-checkpoint",
        "last-but-one-step",
    ],
)
def test_train_resume_is_bitwise_exact(make_cfg, reference, stop):
    ref = reference(*TRAIN)
    cfg = make_cfg(*TRAIN, name=f"stop{stop}")
    summary = _stop_then_resume(cfg, stop)
    assert _model_bytes(cfg) == _model_bytes(ref)
    assert _train_losses(cfg) == _train_losses(ref)
    ref_summary = json.loads((Path(ref.run_dir) / "summary.json").read_text())
    assert summary["eval"] == ref_summary["eval"] and summary["steps"] == 18


def test_stop_at_the_last_step_then_resume_finishes(make_cfg, reference):
    ref = reference(*TRAIN)
    cfg = make_cfg(*TRAIN, name="last")
    _stop_then_resume(cfg, 18)
    assert _model_bytes(cfg) == _model_bytes(ref)


def test_resume_from_a_step_checkpoint_taken_before_the_epoch_end_evaluation(make_cfg, reference):
    """Killed (SIGKILL) right after a step checkpoint at the last step of an epoch: the resumed run
    still evaluates that epoch and draws the next epoch's order exactly as the uninterrupted run."""
    # 240 training images after the validation split: 5 steps per epoch
    common = [
        *TRAIN,
        "checkpoint_every_steps=5",
        "checkpoint_every=3",
        "keep_checkpoints=5",
        "data.validation_size=60",
        "select_best_on=valid",
    ]
    ref = reference(*common)
    cfg = make_cfg(*common, name="killed")
    with pytest.raises(Interrupted):
        run(load_config(None, ["stop_after_steps=8"], base=_as_dict(cfg)))
    ckpts = list_checkpoints(Path(cfg.run_dir) / "checkpoints")
    assert [p.name for p in ckpts] == ["step-000000005", "step-000000008"]
    shutil.rmtree(ckpts[-1])  # as if the process died before writing the interrupt checkpoint
    state = json.loads((ckpts[0] / "state.json").read_text())
    assert (state["epoch"], state["step_in_epoch"]) == (0, 5)
    run(cfg, resume="auto")
    assert _model_bytes(cfg) == _model_bytes(ref)
    assert _train_losses(cfg) == _train_losses(ref)


@pytest.mark.parametrize(
    "optimizer",
    ["optim.name=adam optim.lr=0.01", "optim.name=paper_dropout optim.lr=1.0 model.max_norm=2.0"],
)
def test_resume_is_exact_for_every_optimizer(make_cfg, reference, optimizer):
    common = [*TRAIN, *optimizer.split()]
    ref = reference(*common)
    cfg = make_cfg(*common, name="opt")
    _stop_then_resume(cfg, 5)
    assert _model_bytes(cfg) == _model_bytes(ref)


@pytest.mark.parametrize(
    "outputs", ["teacher.outputs=precompute data.jitter=0", "teacher.outputs=live data.jitter=2"]
)
def test_distill_resume_is_bitwise_exact(make_cfg, reference, teacher_file, outputs):
    teacher = teacher_file(hidden=[16])
    common = [
        "method.name=soft_targets",
        "method.temperature=20",
        f"teacher.checkpoints=[{teacher}]",
        "model.hidden_dropout=0.3",
        "optim.epochs=3",
        "checkpoint_every_steps=4",
        *outputs.split(),
    ]
    ref = reference(*common, kind="distill")
    cfg = make_cfg(*common, name="student")
    stopped = load_config(None, ["stop_after_steps=7"], base=_as_dict(cfg))
    with pytest.raises(Interrupted):
        run(stopped, kind="distill")
    run(cfg, kind="distill", resume="auto")
    assert _model_bytes(cfg) == _model_bytes(ref)
    assert _train_losses(cfg) == _train_losses(ref)


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(make_cfg, reference):
    ref = reference(*TRAIN)
    cfg = make_cfg(*TRAIN, name="corrupt")
    with pytest.raises(Interrupted):
        run(load_config(None, ["stop_after_steps=10"], base=_as_dict(cfg)))
    latest = list_checkpoints(Path(cfg.run_dir) / "checkpoints")[-1]
    victim = latest / "state.safetensors"
    # truncated, as by a crash mid-write without atomic rename
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.warns(
        UserWarning,
        match=f"skipping checkpoint: checkpoint file .*{latest.name}/state.safetensors is corrupt",
    ):
        run(cfg, resume="auto")
    assert _model_bytes(cfg) == _model_bytes(ref)


def test_an_explicit_checkpoint_path_resumes_from_it(make_cfg, reference):
    ref = reference(*TRAIN)
    cfg = make_cfg(*TRAIN, "keep_checkpoints=10", name="explicit")
    with pytest.raises(Interrupted):
        run(load_config(None, ["stop_after_steps=11"], base=_as_dict(cfg)))
    first = list_checkpoints(Path(cfg.run_dir) / "checkpoints")[0]  # step 4
    run(cfg, resume=str(first))
    assert _model_bytes(cfg) == _model_bytes(ref)


# ---------------------------------------------------------------- all or nothing


@pytest.fixture
def stopped(make_cfg):
    cfg = make_cfg(*TRAIN, name="stopped")
    with pytest.raises(Interrupted):
        run(load_config(None, ["stop_after_steps=5"], base=_as_dict(cfg)))
    return cfg, list_checkpoints(Path(cfg.run_dir) / "checkpoints")[-1]


def _rewrite(ckpt, name, data):
    """Replace one checkpoint file *and* its manifest entry: the file is intact but foreign."""
    (ckpt / name).write_bytes(data)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest[name] = hashlib.sha256(data).hexdigest()
    (ckpt / "manifest.json").write_text(json.dumps(manifest))


def _snapshot(cfg):
    return {p: p.read_bytes() for p in Path(cfg.run_dir).rglob("*") if p.is_file()}


def test_a_deleted_file_is_named(stopped):
    cfg, ckpt = stopped
    (ckpt / "state.safetensors").unlink()
    with pytest.raises(DKError, match=f"{ckpt} is incomplete: state.safetensors is missing"):
        run(cfg, resume=str(ckpt))


def test_a_changed_config_is_refused(stopped):
    cfg, ckpt = stopped
    before = _snapshot(cfg)
    changed = load_config(None, ["optim.lr=0.05"], base=_as_dict(cfg))
    with pytest.raises(DKError, match=f"checkpoint {ckpt} was made with a different config"):
        run(changed, resume="auto")
    assert _snapshot(cfg) == before


def test_a_changed_transfer_set_is_refused(stopped):
    cfg, ckpt = stopped
    import dataclasses

    # same config hash is impossible with other data, so forge the fingerprint check directly
    state = json.loads((ckpt / "state.json").read_text())
    state["fingerprints"]["dataset"] = "0" * 64
    _rewrite(ckpt, "state.json", json.dumps(state).encode())
    with pytest.raises(DKError, match="the dataset fingerprint differs"):
        run(dataclasses.replace(cfg), resume="auto")


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda t: t.pop("rng/data"), "lacks the RNG state rng/data"),
        (lambda t: t.pop("data/order"), "lacks this epoch's data order"),
        (lambda t: t.update({"data/order": t["data/order"][:-1]}), "lacks this epoch's data order"),
        (
            lambda t: t.update({k: v[:1] for k, v in list(t.items()) if k.startswith("optim/")}),
            "optimizer buffer momentum_buffer has shape",
        ),
    ],
    ids=["rng", "order-missing", "order-short", "optimizer-shape"],
)
def test_incomplete_training_state_is_refused(stopped, mutate, needle):
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    cfg, ckpt = stopped
    tensors = st_load((ckpt / "state.safetensors").read_bytes())
    mutate(tensors)
    _rewrite(ckpt, "state.safetensors", st_save(tensors))
    before = _snapshot(cfg)
    with pytest.raises(DKError, match=f"checkpoint {ckpt} cannot be restored: .*{needle}"):
        run(cfg, resume="auto")
    assert _snapshot(cfg) == before


def test_weights_of_another_shape_are_refused(stopped):
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    cfg, ckpt = stopped
    weights = st_load((ckpt / "model.safetensors").read_bytes())
    weights["layers.0.weight"] = weights["layers.0.weight"][:5]
    _rewrite(ckpt, "model.safetensors", st_save(weights))
    with pytest.raises(
        DKError,
        match=r"cannot be restored: model.safetensors: layers.0.weight is torch.float32 \(5, 784\)",
    ):
        run(cfg, resume="auto")


def test_a_resumed_run_counts_the_training_time_of_every_process(make_cfg, monkeypatch):
    """train_seconds and wall_seconds of a run stopped and resumed include the first process's
    share (results rows record them: a resumed table must not look faster than it was)."""
    import darkknowledge.train.loop as loop

    cfg = make_cfg(*TRAIN, name="timed")
    stopped = load_config(None, ["stop_after_steps=8"], base=_as_dict(cfg))
    clock = iter(range(0, 10**6, 100))  # every reading of the loop's clock is 100 s later
    monkeypatch.setattr(loop.time, "perf_counter", lambda: float(next(clock)))
    with pytest.raises(Interrupted):
        run(stopped)
    state = json.loads(
        (list_checkpoints(Path(cfg.run_dir) / "checkpoints")[-1] / "state.json").read_text()
    )
    assert state["train_seconds"] >= 100
    monkeypatch.undo()
    summary = run(cfg, resume="auto")
    assert summary["train_seconds"] >= state["train_seconds"]
    assert summary["wall_seconds"] >= state["train_seconds"]
