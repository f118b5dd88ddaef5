"""Checkpoints written before the method contract v2 still resume, bit for bit.

``v1_runs/`` holds two runs stopped at step 7 of 18 by the code of commit e5a68dd (contract v1,
torch 2.13 CPU; the tiny MNIST subset of the suite, 4 hidden units, dropout, jitter for the
teacher-less run; soft targets from ``teacher.safetensors`` for the other): their newest
checkpoint, config and metrics. Resumed here, each must end in the very model file the
uninterrupted v1 run wrote (its sha256, computed by that code). The new state a checkpoint may
hold (a method's connector, ``method/*``) is absent from them, and nothing asks for it.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from darkknowledge.config import load_config
from darkknowledge.train import run

V1 = Path(__file__).resolve().parent / "v1_runs"
V1_FINAL = {
    "train": "6f5ad851bc547bec98fb92a5b030e00355dfb523247dfd43836d83e0b0cc9e2e",
    "distill": "2b316e846f8a5eb11940caa1068e8282307532307dcda1d95bd9a5832a227ca9",
}


@pytest.mark.skipif(
    not torch.__version__.startswith("2.13"), reason="v1 runs written with torch 2.13 CPU"
)
@pytest.mark.parametrize("kind", ["train", "distill"])
def test_a_v1_checkpoint_resumes_to_the_v1_model(tmp_path, monkeypatch, kind):
    shutil.copytree(V1, tmp_path / "v1")
    monkeypatch.chdir(tmp_path / "v1")  # the configs name the teacher and the run by relative paths
    # one thread: float sums are bitwise only for the thread count the v1 runs used
    cfg = load_config(Path(kind) / "config.yaml", ["stop_after_steps=0", "threads=1"])
    summary = run(cfg, kind=kind, resume="auto")
    assert summary["steps"] == 18
    assert (
        hashlib.sha256(Path(kind, "model.safetensors").read_bytes()).hexdigest() == V1_FINAL[kind]
    )
