"""NaN/Inf: checked every step per loss component; the run stops naming step, batch and component,
exit code 3, and the last good checkpoint is left byte for byte as it was."""

from __future__ import annotations

import pytest

from darkknowledge.cli import main

ARGS = [
    "model.hidden=[32]",
    "data.train_size=300",
    "data.test_size=100",
    "optim.epochs=2",
    "optim.batch_size=50",
    "checkpoint_every_steps=3",
    "progress=false",
]


def test_nan_in_a_data_point_stops_the_run_and_keeps_the_last_checkpoint(
    tmp_path, monkeypatch, capsys, snapshot, inject_nan
):
    run_dir = tmp_path / "run"
    assert main(["train", "--run-dir", str(run_dir), *ARGS, "stop_after_steps=3"]) == 143
    checkpoints = snapshot(run_dir / "checkpoints")
    assert [p.parent.name for p in checkpoints if p.name == "state.json"] == ["step-000000003"]
    capsys.readouterr()

    inject_nan(at_call=2)  # resumed at step 3: the 2nd batch is step 5 (epoch 0, batch 4)
    rc = main(["train", "--run-dir", str(run_dir), *ARGS, "--resume", "auto"])
    err = capsys.readouterr().err
    assert rc == 3
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(
        "dk: error: non-finite loss at step 5 (epoch 0, batch 4): loss=nan, hard=nan;"
    )
    assert "the last good checkpoint is kept" in err
    assert snapshot(run_dir / "checkpoints") == checkpoints
    assert not (run_dir / "model.safetensors").exists() and not (run_dir / "summary.json").exists()


def test_a_live_teacher_that_outputs_nan_names_the_soft_component(
    tmp_path, monkeypatch, capsys, teacher_file
):
    import torch

    from darkknowledge.teachers import Teacher

    real = Teacher.__call__

    def broken(self, x):
        out = real(self, x)
        return torch.full_like(out, float("nan"))

    monkeypatch.setattr(Teacher, "__call__", broken)
    rc = main(
        [
            "distill",
            "--run-dir",
            str(tmp_path / "s"),
            "--teacher",
            str(teacher_file()),
            *ARGS,
            "teacher.outputs=live",
            "method.hard_weight=0.1",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 3
    assert "non-finite loss at step 1 (epoch 0, batch 0): loss=nan, soft=nan;" in err
    assert "hard=" not in err.split(";")[0]  # the hard term stayed finite and is not blamed


@pytest.mark.parametrize("lr", ["1e30", ".inf"])
def test_an_absurd_learning_rate(tmp_path, capsys, lr):
    rc = main(
        [
            "train",
            "--run-dir",
            str(tmp_path / "r"),
            *ARGS,
            f"optim.lr={lr}",
            "optim.schedule=constant",
        ]
    )
    err = capsys.readouterr().err
    if lr == ".inf":  # refused by the config before anything runs
        assert rc == 2 and "optim.lr=inf is not finite" in err
        return
    assert rc == 3 and "non-finite loss at step 2 (epoch 0, batch 1)" in err
