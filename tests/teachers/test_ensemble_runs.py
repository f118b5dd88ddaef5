"""An ensemble is one thing: ``dk train ensemble.members=N`` trains N seeds as one batched run,
and its run directory serves whole as a teacher (dk distill, dk eval, dk teacher-outputs build,
the Python API) while each member stays loadable on its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import darkknowledge as dk
from darkknowledge.cli import main
from darkknowledge.config import load_config
from darkknowledge.errors import DKError
from darkknowledge.models import load_model
from darkknowledge.teachers import Teacher, member_files, read_store_manifest
from darkknowledge.train import combined_logits, run

RTOL, ATOL = 1e-5, 1e-6  # as for replicas (tests/train/test_replicas.py): bmm vs mm rounding


@pytest.fixture
def ensemble_dir(make_cfg):
    cfg = make_cfg(
        "ensemble.members=3", "seed=4", "optim.lr=0.3", "data.validation_size=50", name="ens"
    )
    summary = run(cfg)
    return cfg, summary


def test_members_are_seeds_and_member_k_equals_the_run_with_seed_k(make_cfg, ensemble_dir):
    cfg, summary = ensemble_dir
    assert cfg.replicas.seeds == [4, 5, 6]
    assert [r["seed"] for r in summary["replicas"]] == [4, 5, 6]
    alone = make_cfg("seed=5", "optim.lr=0.3", "data.validation_size=50", name="seed5")
    run(alone)
    a, b = (
        load_model(Path(cfg.run_dir) / "replicas" / "1").state_dict(),
        load_model(alone.run_dir).state_dict(),
    )
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=RTOL, atol=ATOL, msg=k)
    # the member's own config is the ordinary run's: it can be trained again or resumed alone
    assert load_config(Path(cfg.run_dir) / "replicas" / "1" / "config.yaml").hash() == alone.hash()


def test_the_summary_holds_every_member_and_both_combinations(ensemble_dir):
    cfg, summary = ensemble_dir
    assert set(summary["ensemble"]) == {"arithmetic", "geometric"}
    assert set(summary["ensemble"]["arithmetic"]) == {"valid", "test"}
    files = member_files(cfg.run_dir)
    assert files == [
        Path(cfg.run_dir) / "replicas" / str(k) / "model.safetensors" for k in range(3)
    ]


def test_config_round_trip_and_refusals(ensemble_dir, make_cfg):
    cfg, _ = ensemble_dir
    # holds ensemble.members and replicas.seeds
    again = load_config(Path(cfg.run_dir) / "config.yaml")
    assert again.hash() == cfg.hash()
    with pytest.raises(DKError, match="not an ensemble"):
        make_cfg("ensemble.members=1")
    with pytest.raises(DKError, match="differ by seed only"):
        make_cfg("ensemble.members=2", "replicas.method.temperature=[1, 2]")
    with pytest.raises(DKError, match="differ by seed only"):
        make_cfg("ensemble.members=2", "replicas.seeds=[7, 9]")
    assert make_cfg().hash() == make_cfg("ensemble.members=0").hash()


def test_dk_distill_eval_and_store_accept_the_run_directory(
    ensemble_dir, tmp_path, tiny_args, capsys
):
    cfg, _ = ensemble_dir
    teacher = Teacher.from_checkpoints([cfg.run_dir])
    assert len(teacher) == 3
    listed = Teacher.from_checkpoints([str(f) for f in member_files(cfg.run_dir)])
    assert listed.fingerprint == teacher.fingerprint  # one store serves both spellings
    student = tmp_path / "student"
    assert (
        main(
            [
                "distill",
                "--teacher",
                cfg.run_dir,
                *tiny_args,
                "--run-dir",
                str(student),
                "method.temperature=2",
            ]
        )
        == 0
    )
    assert "student saved" in capsys.readouterr().out
    assert main(["eval", cfg.run_dir, "--limit", "100", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["members"]) == 3 and {"arithmetic", "geometric"} <= set(out)
    assert main(["eval", cfg.run_dir, "--limit", "100"]) == 0
    text = capsys.readouterr().out
    assert (
        "member 2" in text and "ensemble of 3, arithmetic mean" in text and "geometric mean" in text
    )
    assert (
        main(
            [
                "teacher-outputs",
                "build",
                "--teacher",
                cfg.run_dir,
                "--limit",
                "200",
                "--out",
                str(tmp_path / "store"),
            ]
        )
        == 0
    )
    assert read_store_manifest(tmp_path / "store")["members"] == 3


def test_eval_combinations_are_computed_from_the_members(ensemble_dir):
    cfg, _ = ensemble_dir
    z = torch.randn(3, 5, 10)
    arith = combined_logits(z, "arithmetic").softmax(-1)
    torch.testing.assert_close(arith, z.softmax(-1).mean(0))
    torch.testing.assert_close(combined_logits(z, "geometric"), z.mean(0))


def test_python_api_takes_the_run_directory(ensemble_dir):
    cfg, _ = ensemble_dir
    members = dk.load_teacher(cfg.run_dir)
    assert len(members) == 3
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    batches = [(torch.rand(20, 784), torch.randint(0, 10, (20,))) for _ in range(3)]
    out = dk.distill(
        student,
        cfg.run_dir,
        batches,
        temperature=2,
        epochs=1,
        lr=0.01,
        eval_batches={"train": batches},
    )
    assert out["steps"] == 3


def test_one_model_is_asked_for_by_name_and_sweeps_or_unfinished_runs_are_refused(
    ensemble_dir, make_cfg
):
    cfg, _ = ensemble_dir
    with pytest.raises(DKError, match="several models"):
        load_model(cfg.run_dir)
    load_model(Path(cfg.run_dir) / "replicas" / "0")  # a member alone
    sweep = make_cfg("replicas.optim.lr=[0.1, 0.3]", name="sweep")
    run(sweep)
    with pytest.raises(DKError, match="a sweep"):
        Teacher.from_checkpoints([sweep.run_dir])
    (Path(cfg.run_dir) / "summary.json").unlink()
    with pytest.raises(DKError, match="has not finished"):
        Teacher.from_checkpoints([cfg.run_dir])
