"""Determinism: `--deterministic` runs repeat bit for bit; so do plain CPU runs (same machine, same
threads).
"""

from __future__ import annotations

import torch

from darkknowledge.cli import main

ARGS = [
    "model.hidden=[32]",
    "model.hidden_dropout=0.5",
    "data.jitter=2",
    "data.train_size=300",
    "data.test_size=100",
    "optim.epochs=2",
    "optim.batch_size=50",
    "progress=false",
]


def _model(run_dir):
    return (run_dir / "model.safetensors").read_bytes()


def test_deterministic_runs_are_bitwise_equal(tmp_path):
    for name in ("a", "b"):
        assert main(["train", "--deterministic", "--run-dir", str(tmp_path / name), *ARGS]) == 0
    assert _model(tmp_path / "a") == _model(tmp_path / "b")
    assert (tmp_path / "a" / "metrics.jsonl").read_text() == (
        tmp_path / "b" / "metrics.jsonl"
    ).read_text()
    # the switch does not leak out of the run
    assert not torch.are_deterministic_algorithms_enabled()


def test_plain_cpu_runs_repeat_and_seeds_differ(tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert main(["train", "--run-dir", str(tmp_path / name), *ARGS, f"seed={seed}"]) == 0
    assert _model(tmp_path / "a") == _model(tmp_path / "b")
    assert _model(tmp_path / "a") != _model(tmp_path / "c")


def test_the_switch_is_part_of_the_run_config(tmp_path):
    from darkknowledge.config import load_config

    assert (
        main(
            ["train", "--deterministic", "--run-dir", str(tmp_path / "a"), *ARGS, "optim.epochs=1"]
        )
        == 0
    )
    assert load_config(tmp_path / "a" / "config.yaml").deterministic is True
