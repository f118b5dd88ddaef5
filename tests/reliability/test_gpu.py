"""The exact-resume and determinism guarantees on CUDA (run with ``-m gpu`` on a GPU machine)."""

from __future__ import annotations

import pytest
import torch

from darkknowledge.cli import main

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

ARGS = [
    "device=cuda",
    "model.hidden=[64]",
    "model.hidden_dropout=0.5",
    "data.jitter=2",
    "data.train_size=600",
    "data.test_size=200",
    "optim.epochs=3",
    "optim.batch_size=50",
    "checkpoint_every_steps=5",
    "progress=false",
]


def test_cuda_resume_is_bitwise_exact_with_the_deterministic_switch(tmp_path):
    assert main(["train", "--deterministic", "--run-dir", str(tmp_path / "ref"), *ARGS]) == 0
    assert (
        main(
            [
                "train",
                "--deterministic",
                "--run-dir",
                str(tmp_path / "cut"),
                *ARGS,
                "stop_after_steps=17",
            ]
        )
        == 143
    )
    assert (
        main(
            [
                "train",
                "--deterministic",
                "--run-dir",
                str(tmp_path / "cut"),
                *ARGS,
                "--resume",
                "auto",
            ]
        )
        == 0
    )
    assert (tmp_path / "cut" / "model.safetensors").read_bytes() == (
        tmp_path / "ref" / "model.safetensors"
    ).read_bytes()


def test_cuda_distill_resume_is_bitwise_exact(tmp_path):
    assert main(["train", "--run-dir", str(tmp_path / "teacher"), *ARGS, "optim.epochs=1"]) == 0
    student = [
        *ARGS,
        "--teacher",
        str(tmp_path / "teacher"),
        "data.jitter=0",
        "method.temperature=20",
    ]
    assert main(["distill", "--deterministic", "--run-dir", str(tmp_path / "ref"), *student]) == 0
    assert (
        main(
            [
                "distill",
                "--deterministic",
                "--run-dir",
                str(tmp_path / "cut"),
                *student,
                "stop_after_steps=9",
            ]
        )
        == 143
    )
    assert (
        main(
            [
                "distill",
                "--deterministic",
                "--run-dir",
                str(tmp_path / "cut"),
                *student,
                "--resume",
                "auto",
            ]
        )
        == 0
    )
    assert (tmp_path / "cut" / "model.safetensors").read_bytes() == (
        tmp_path / "ref" / "model.safetensors"
    ).read_bytes()
