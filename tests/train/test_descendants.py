"""The descendants as runs (``dk train``/``dk distill`` configs): hints with its regressor in the
checkpoint, label smoothing for any method, born-again generations."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import darkknowledge as dk
from darkknowledge.config import load_config
from darkknowledge.errors import DKError
from darkknowledge.models import build_model
from darkknowledge.teachers import member_files
from darkknowledge.train import Interrupted, run
from darkknowledge.train.checkpoint import latest_checkpoint, list_checkpoints
from darkknowledge.train.loop import FitInputs, check_resumable
from darkknowledge.train.metrics import read_metrics

HINTS = [
    "method.name=hints",
    "method.hint_epochs=1",
    "method.student_layer=layers.0",
    "teacher.outputs=live",
    "model.hidden_dropout=0.3",
    "optim.epochs=3",
    "checkpoint_every_steps=4",
]


def _model_bytes(cfg):
    return (Path(cfg.run_dir) / "model.safetensors").read_bytes()


def test_hints_resume_is_bitwise_exact_with_the_regressor_in_the_checkpoint(make_cfg, teacher_file):
    common = [*HINTS, f"teacher.checkpoints=[{teacher_file(hidden=[16])}]"]
    ref = make_cfg(*common, name="ref")
    run(ref, kind="distill")
    for stop in (4, 9):  # in stage 1 (6 steps an epoch), and in stage 2
        cfg = make_cfg(*common, name=f"stop{stop}")
        with pytest.raises(Interrupted):
            run(
                load_config(None, [f"stop_after_steps={stop}"], base=dataclasses.asdict(cfg)),
                kind="distill",
            )
        ckpt = latest_checkpoint(Path(cfg.run_dir) / "checkpoints")
        assert {k for k in ckpt["tensors"] if k.startswith("method/")} == {
            "method/weight",
            "method/bias",
        }
        assert ckpt["tensors"]["method/weight"].shape == (16, 32)
        run(cfg, kind="distill", resume="auto")
        assert _model_bytes(cfg) == _model_bytes(ref)
        assert read_metrics(Path(cfg.run_dir) / "metrics.jsonl") == read_metrics(
            Path(ref.run_dir) / "metrics.jsonl"
        )
    lines = read_metrics(Path(ref.run_dir) / "metrics.jsonl")
    assert {"hint", "soft", "hard"} <= set(lines[0])


def test_a_checkpoint_without_the_regressor_is_refused(make_cfg, teacher_file):
    from darkknowledge.methods import build_method
    from darkknowledge.teachers import Teacher

    teacher = teacher_file(hidden=[16])
    cfg = make_cfg(*HINTS, f"teacher.checkpoints=[{teacher}]", "stop_after_steps=4")
    with pytest.raises(Interrupted):
        run(cfg, kind="distill")
    ckpt = latest_checkpoint(Path(cfg.run_dir) / "checkpoints")
    del ckpt["tensors"]["method/bias"]
    method = build_method("hints", {k: v for k, v in cfg.method.items() if k != "name"})
    model = build_model("mlp", {"hidden": [32]}, 784, 10)
    members = Teacher.from_checkpoints([teacher]).members
    with pytest.raises(
        DKError,
        match=r"cannot be restored: state.safetensors holds the method tensors \['method/weight'\]",
    ):
        check_resumable(
            cfg,
            ckpt,
            FitInputs(
                model,
                method,
                None,
                torch.device("cpu"),
                teacher_members=members,
                batches=_Batches(),
            ),
        )


class _Batches:
    steps_per_epoch = 6
    order_shape = None

    def get_state(self):
        return None


def test_a_method_without_connector_checkpoints_what_v1_did(make_cfg):
    cfg = make_cfg("checkpoint_every_steps=4", "stop_after_steps=4")
    with pytest.raises(Interrupted):
        run(cfg)
    ckpt = latest_checkpoint(Path(cfg.run_dir) / "checkpoints")
    assert not any(k.startswith("method/") for k in ckpt["tensors"])
    assert ckpt["state"]["format"] == 2


def test_label_smoothing_reaches_the_hard_term_of_any_method(make_cfg, teacher_file):
    plain, smooth = make_cfg(name="plain"), make_cfg("label_smoothing=0.2", name="smooth")
    assert plain.hash() != smooth.hash()
    run(plain)
    run(smooth)
    hard = [r["hard"] for r in read_metrics(Path(smooth.run_dir) / "metrics.jsonl") if "hard" in r]
    assert (
        hard[0]
        != [r["hard"] for r in read_metrics(Path(plain.run_dir) / "metrics.jsonl") if "hard" in r][
            0
        ]
    )
    teacher = teacher_file(hidden=[16])
    no_labels = make_cfg(
        "method.name=soft_targets",
        "method.hard_weight=0",
        f"teacher.checkpoints=[{teacher}]",
        "label_smoothing=0.1",
        name="nolabels",
    )
    with pytest.raises(
        DKError, match=r"label_smoothing=0.1 has no effect: method 'soft_targets' uses no labels"
    ):
        run(no_labels, kind="distill")
    assert not Path(no_labels.run_dir).exists()


def test_born_again_generations_and_their_ensemble_as_a_teacher(make_cfg, teacher_file):
    teacher = teacher_file(hidden=[32])  # generation 0: the student's architecture
    common = [
        "method.name=soft_targets",
        "method.temperature=2",
        f"teacher.checkpoints=[{teacher}]",
    ]
    cfg = make_cfg(*common, "generations=2", name="ban")
    summary = run(cfg, kind="distill")
    root = Path(cfg.run_dir)
    assert [g["generation"] for g in summary["generations"]] == [1, 2]
    assert [g["seed"] for g in summary["generations"]] == [0, 1]
    assert set(summary["ensemble"]["test"]) == {"arithmetic", "geometric"}
    assert summary["eval"] == summary["generations"][-1]["eval"]
    second = load_config(root / "generations" / "2" / "config.yaml")
    assert (
        second.teacher.checkpoints == [str(root / "generations" / "1")] and second.generations == 1
    )
    # generation 1 is exactly the plain distillation of the same config
    plain = make_cfg(*common, name="plain")
    run(plain, kind="distill")
    assert (root / "generations" / "1" / "model.safetensors").read_bytes() == _model_bytes(plain)
    # the run directory serves whole as a teacher: the ensemble of its generations
    assert member_files(root) == [
        root / "generations" / str(k) / "model.safetensors" for k in (1, 2)
    ]
    again = run(cfg, kind="distill", resume="auto")
    assert again == summary
    with pytest.raises(DKError, match="already holds a born-again run"):
        run(cfg, kind="distill")
    student = make_cfg(
        "method.name=soft_targets", f"teacher.checkpoints=[{root}]", name="from_ensemble"
    )
    assert run(student, kind="distill")["steps"] == 12


def test_born_again_continues_where_it_stopped(make_cfg, teacher_file):
    teacher = teacher_file(hidden=[32])
    common = [
        "method.name=soft_targets",
        f"teacher.checkpoints=[{teacher}]",
        "generations=2",
        "checkpoint_every_steps=4",
    ]
    ref = make_cfg(*common, name="ref")
    run(ref, kind="distill")
    cfg = make_cfg(*common, name="stopped")
    with pytest.raises(Interrupted):  # every generation stops at step 5: the first one does
        run(load_config(None, ["stop_after_steps=5"], base=dataclasses.asdict(cfg)), kind="distill")
    assert list_checkpoints(Path(cfg.run_dir) / "generations" / "1" / "checkpoints")
    run(cfg, kind="distill", resume="auto")
    for k in (1, 2):
        a, b = (Path(c.run_dir) / "generations" / str(k) / "model.safetensors" for c in (cfg, ref))
        assert a.read_bytes() == b.read_bytes()


def test_born_again_needs_one_teacher_of_the_students_architecture(make_cfg, teacher_file):
    other = make_cfg(
        "method.name=soft_targets",
        f"teacher.checkpoints=[{teacher_file(hidden=[16])}]",
        "generations=2",
    )
    with pytest.raises(DKError, match="born-again students have their teacher's architecture"):
        run(other, kind="distill")
    assert not Path(other.run_dir).exists()
    with pytest.raises(DKError, match="generations=2 distils born-again students"):
        run(make_cfg("generations=2", name="train"))


def test_born_again_from_the_python_api():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 6, generator=g), torch.randint(0, 3, (40,), generator=g)
    batches = [(x[i : i + 20], y[i : i + 20]) for i in (0, 20)]

    def make():
        return build_model("mlp", {"hidden": [5]}, 6, 3)

    torch.manual_seed(9)
    teacher = make()
    dk.fit(teacher, batches, epochs=2, device="cpu", progress=False)
    students, histories = dk.born_again(
        make, teacher, batches, generations=3, epochs=2, temperature=2, device="cpu", progress=False
    )
    assert len(students) == 3 and [h["steps"] for h in histories] == [4, 4, 4]
    assert not torch.equal(students[0].layers[0].weight, students[1].layers[0].weight)
    new = make()
    assert dk.distill(new, students, batches, epochs=1, device="cpu", progress=False)["steps"] == 2
    with pytest.raises(DKError, match="teacher's architecture"):
        dk.born_again(
            lambda: build_model("mlp", {"hidden": [7]}, 6, 3), teacher, batches, generations=2
        )
    assert json.dumps(histories[0]["eval"]) == "{}"
