"""tensorboard=true mirrors metrics.jsonl as TensorBoard scalars (the JSONL log is always there)."""

from __future__ import annotations

import json

import pytest

from darkknowledge.cli import main

pytest.importorskip("tensorboard")

ARGS = [
    "model.hidden=[16]",
    "data.train_size=200",
    "data.test_size=50",
    "optim.epochs=2",
    "optim.batch_size=50",
    "progress=false",
    "tensorboard=true",
]


def _scalars(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _jsonl(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_every_metrics_line_is_a_tensorboard_scalar_and_a_resume_purges_what_it_redoes(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), *ARGS]) == 0
    lines = _jsonl(run)
    tb = _scalars(run / "tensorboard")
    assert tb["train/loss"] == [(r["step"], pytest.approx(r["loss"])) for r in lines if "loss" in r]
    assert [v for _, v in tb["test/errors"]] == [
        r["errors"] for r in lines if r.get("split") == "test"
    ]

    stopped = tmp_path / "stopped"
    assert (
        main(
            [
                "train",
                "--run-dir",
                str(stopped),
                *ARGS,
                "stop_after_steps=3",
                "checkpoint_every_steps=3",
            ]
        )
        == 143
    )
    assert (
        main(
            [
                "train",
                "--run-dir",
                str(stopped),
                *ARGS,
                "checkpoint_every_steps=3",
                "--resume",
                "auto",
            ]
        )
        == 0
    )
    assert _scalars(stopped / "tensorboard")["train/loss"] == tb["train/loss"]  # no step twice
    assert _jsonl(stopped) == lines


def test_tensorboard_is_not_part_of_the_config_hash():
    from darkknowledge.config import load_config

    assert load_config(None, ["tensorboard=true"]).hash() == load_config(None, []).hash()
