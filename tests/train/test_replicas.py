"""Replicas: K models trained as one batched computation equal the K ordinary runs they stand for.

Replica k of ``replicas.seeds=[...]`` / ``replicas.method.<key>=[...]`` is defined as the run
``cfg.replica_configs()[k]`` (its seed, its method hyperparameters): same initialization, same data
order and jitter draws, same updates. Without dropout the batched weights equal the stand-alone
weights within float tolerance (bmm vs mm kernels sum in another order).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from darkknowledge.cli import main
from darkknowledge.config import load_config
from darkknowledge.errors import DKError
from darkknowledge.models import load_model
from darkknowledge.train import Interrupted, run
from darkknowledge.train.metrics import read_metrics

RTOL, ATOL = 1e-5, 1e-6


def _weights(path):
    return load_model(path).state_dict()


def _assert_close_models(a, b):
    wa, wb = _weights(a), _weights(b)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=RTOL, atol=ATOL, msg=k)


def _losses(run_dir, replica=None):
    rows = [r for r in read_metrics(Path(run_dir) / "metrics.jsonl") if "loss" in r]
    return [r["loss"][replica] if replica is not None else r["loss"] for r in rows]


def _check_equals_alone(cfg, kind="train"):
    """Each replica's model, losses and evaluation equal its ordinary run's."""
    summary = run(cfg, kind=kind)
    assert len(summary["replicas"]) == cfg.replicas.count
    for k, rc in enumerate(cfg.replica_configs()):
        alone = load_config(None, [f"run_dir={rc.run_dir}-alone"], base=_plain(rc))
        ref = run(alone, kind=kind)
        _assert_close_models(rc.run_dir, alone.run_dir)
        # fused SGD rounds an element differently by its place in a vector register, and the
        # (K, out, in) and (out, in) layouts put it in different places: ~1e-5 drift over a run
        assert _losses(cfg.run_dir, k) == pytest.approx(_losses(alone.run_dir), rel=5e-5)
        mine = json.loads((Path(rc.run_dir) / "summary.json").read_text())
        assert mine["config_hash"] == alone.hash() and mine["seed"] == alone.seed
        assert load_config(Path(rc.run_dir) / "config.yaml") == load_config(
            None, [f"run_dir={rc.run_dir}"], base=_plain(rc)
        )
        for split, m in ref["eval"].items():
            # a tie flipped by rounding at most
            assert abs(mine["eval"][split]["errors"] - m["errors"]) <= 1
            assert mine["eval"][split]["nll"] == pytest.approx(m["nll"], rel=1e-4)


def _plain(cfg):
    import dataclasses

    return dataclasses.asdict(cfg)


def test_seeds_with_hard_targets_and_jitter_equal_each_run_alone(make_cfg):
    cfg = make_cfg(
        "replicas.seeds=[0, 1, 2]",
        "data.jitter=1",
        "optim.name=sgd",
        "optim.lr=0.3",
        "data.validation_size=50",
    )
    _check_equals_alone(cfg)


@pytest.mark.parametrize("outputs", ["teacher.outputs=precompute", "teacher.outputs=live"])
def test_a_temperature_sweep_with_soft_targets_equals_each_run_alone(
    make_cfg, teacher_file, outputs
):
    teacher = teacher_file(hidden=[16])
    cfg = make_cfg(
        "method.name=soft_targets",
        "method.hard_weight=0.1",
        f"teacher.checkpoints=[{teacher}]",
        outputs,
        "replicas.method.temperature=[1, 4, 20]",
        "optim.lr=0.5",
        name=outputs.split("=")[1],
    )
    _check_equals_alone(cfg, kind="distill")


@pytest.mark.parametrize(
    "optim",
    [
        ["optim.name=sgd", "optim.lr=0.3"],
        ["optim.name=paper_dropout", "optim.lr=0.5", "optim.momentum_epochs=2"],
    ],
)
def test_step_sizes_as_replicas_equal_each_run_alone(make_cfg, optim):
    """replicas.optim.lr: one batched run of K step sizes (how a `select:` on optim.lr trains its
    candidates); the SGD update is linear in the gradient, so scaling each model's loss is its step
    size."""
    cfg = make_cfg(
        *optim,
        "replicas.optim.lr=[0.05, 0.2, 0.6]",
        "optim.epochs=2",
        "data.validation_size=50",
        name=optim[0].split("=")[1],
    )
    assert [rc.optim.lr for rc in cfg.replica_configs()] == [0.05, 0.2, 0.6]
    _check_equals_alone(cfg)


def test_seeds_and_a_sweep_zip_together(make_cfg, teacher_file):
    cfg = make_cfg(
        "method.name=logit_matching",
        f"teacher.checkpoints=[{teacher_file()}]",
        "replicas.seeds=[3, 4]",
        "replicas.method.logit_weight=[1.0, 0.5]",
    )
    rcs = cfg.replica_configs()
    assert [(r.seed, r.method["logit_weight"]) for r in rcs] == [(3, 1.0), (4, 0.5)]
    _check_equals_alone(cfg, kind="distill")


def test_with_dropout_and_jitter_the_batched_run_is_deterministic(make_cfg):
    common = [
        "replicas.seeds=[0, 1]",
        "model.hidden_dropout=0.5",
        "model.input_dropout=0.2",
        "data.jitter=2",
    ]
    a, b = make_cfg(*common, name="a"), make_cfg(*common, name="b")
    run(a)
    run(b)
    for k in range(2):
        assert (Path(a.run_dir) / f"replicas/{k}/model.safetensors").read_bytes() == (
            Path(b.run_dir) / f"replicas/{k}/model.safetensors"
        ).read_bytes()
    assert (Path(a.run_dir) / "metrics.jsonl").read_text() == (
        Path(b.run_dir) / "metrics.jsonl"
    ).read_text()
    wa, wb = _weights(Path(a.run_dir) / "replicas/0"), _weights(Path(a.run_dir) / "replicas/1")
    assert not torch.equal(wa["layers.0.weight"], wb["layers.0.weight"])  # two different models


@pytest.mark.parametrize("stop", [4, 6, 9])
def test_a_stopped_batched_run_resumes_bitwise(make_cfg, stop):
    """Dropout, jitter, per-replica early stopping: the resumed run ends bitwise equal (CPU)."""
    common = [
        "replicas.seeds=[0, 1]",
        "model.hidden_dropout=0.5",
        "data.jitter=1",
        "optim.epochs=3",
        "checkpoint_every_steps=4",
        "data.validation_size=60",
        "select_best_on=valid",
    ]
    ref = make_cfg(*common, name="ref")
    summary = run(ref)
    assert isinstance(summary["best_epoch"], list) and len(summary["best_epoch"]) == 2
    cfg = make_cfg(*common, name="cut")
    with pytest.raises(Interrupted):
        run(load_config(None, [f"stop_after_steps={stop}"], base=_plain(cfg)))
    run(cfg, resume="auto")
    for k in range(2):
        assert (Path(cfg.run_dir) / f"replicas/{k}/model.safetensors").read_bytes() == (
            Path(ref.run_dir) / f"replicas/{k}/model.safetensors"
        ).read_bytes()
    assert (Path(cfg.run_dir) / "metrics.jsonl").read_text() == (
        Path(ref.run_dir) / "metrics.jsonl"
    ).read_text()
    again = run(cfg, resume="auto")  # finished: its summary, not retrained
    assert [r["eval"] for r in again["replicas"]] == [r["eval"] for r in summary["replicas"]]


def test_dk_train_with_replica_seeds_writes_k_models_and_reports_each(tmp_path, tiny_args, capsys):
    run_dir = tmp_path / "r"
    assert main(["train", "--run-dir", str(run_dir), *tiny_args, "replicas.seeds=[0,1,2]"]) == 0
    out = capsys.readouterr().out
    assert (
        out.count("replica ") == 3 and "replica 2 (seed 2):" in out and "3 models saved to" in out
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [r["seed"] for r in summary["replicas"]] == [0, 1, 2]
    for k in range(3):
        assert main(["eval", str(run_dir / "replicas" / str(k)), "--limit", "100", "--json"]) == 0
        assert (
            json.loads(capsys.readouterr().out)["errors"]
            == summary["replicas"][k]["eval"]["test"]["errors"]
        )
    # the K models are ordinary teachers: an ensemble of them distills a student
    student = tmp_path / "student"
    teachers = [a for k in range(3) for a in ("--teacher", str(run_dir / "replicas" / str(k)))]
    assert (
        main(["distill", "--run-dir", str(student), *teachers, *tiny_args, "optim.epochs=1"]) == 0
    )


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (
            ["replicas.seeds=[0, 1]", "replicas.method.temperature=[1, 2, 3]"],
            "replica lists differ in length",
        ),
        (["replicas.method.name=[a, b]"], "replicas.method.name cannot vary"),
        (["replicas.method.temperature=4"], "must be a non-empty list"),
        (["replicas.method.temperature=[]"], "must be a non-empty list"),
        (["replicas.seeds=[0, -1]"], "negative seed"),
        (["replicas.optim.momentum=[0.9, 0.5]"], "replicas.optim.momentum cannot vary"),
        (["replicas.optim.lr=[0.1, -1]"], "list of positive step sizes"),
        (
            ["replicas.optim.lr=[0.1, 0.3]", "optim.name=adam"],
            "needs an update linear in the gradient",
        ),
        (
            ["replicas.optim.lr=[0.1, 0.3]", "optim.name=sgd", "optim.weight_decay=0.01"],
            "cannot be combined with optim.weight_decay",
        ),
        (["replicas.seeds=3"], "replicas.seeds must be a list"),
        (["replicas.count=3"], "unknown config key replicas.count"),
    ],
)
def test_bad_replica_configs_are_one_line_errors(overrides, needle):
    with pytest.raises(DKError) as err:
        load_config(None, overrides)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_replicas_that_disagree_on_labels_or_with_a_bad_value_are_refused_before_writing(
    make_cfg, teacher_file
):
    t = f"teacher.checkpoints=[{teacher_file()}]"
    cfg = make_cfg("method.name=soft_targets", t, "replicas.method.hard_weight=[0.0, 0.5]")
    with pytest.raises(DKError, match="disagree on whether they need labels"):
        run(cfg, kind="distill")
    cfg = make_cfg("method.name=soft_targets", t, "replicas.method.temperature=[4, -1]", name="neg")
    with pytest.raises(DKError, match="temperature must be > 0"):
        run(cfg, kind="distill")
    assert not Path(cfg.run_dir).exists()


def test_the_hash_of_a_config_without_the_new_fields_is_unchanged():
    """Fast-path fields at their defaults do not enter the hash: old run dirs and checkpoints stay
    valid.
    """
    cfg = load_config(None, [])
    assert cfg.hash() == "8e88c51fa101c18c06835601711d7524c9669ad3dee23f08dd5849ae1c8db3c0"
    for same in ("sync_every=10", "train_step=compile", "progress=false"):  # how it runs, not what
        assert load_config(None, [same]).hash() == cfg.hash(), same
    for changed in ("replicas.seeds=[0, 1]", "precision=bf16"):
        assert load_config(None, [changed]).hash() != cfg.hash(), changed
    # replicas.optim came later: a replicated run without it keeps the hash it had before
    assert (
        load_config(None, ["replicas.seeds=[0, 1]"]).hash()
        == "c304c97f24c3aaf1493b49e8d7ae428bd97d08ad08e4edf4975e4634e97b63f7"
    )
