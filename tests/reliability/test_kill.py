"""Real signals to a real `dk` process: finish the step, checkpoint, exit 128 + signum, resume
exactly.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from darkknowledge.config import load_config
from darkknowledge.train import run
from darkknowledge.train.checkpoint import list_checkpoints

# ~1000 steps of ~2 ms: long enough that a signal sent after the first logged step lands mid-run.
LONG = [
    "model.hidden=[32]",
    "model.hidden_dropout=0.3",
    "data.jitter=1",
    "data.train_size=1000",
    "data.test_size=100",
    "optim.epochs=10",
    "optim.batch_size=10",
    "progress=false",
]


def _dk(*args):
    return [sys.executable, "-m", "darkknowledge.cli", *args]


def _start_and_signal(args, run_dir, signum, min_lines=1, timeout=60.0):
    """Start `dk`, wait until metrics.jsonl shows progress, send ``signum``; returns (returncode,
    stderr).
    """
    proc = subprocess.Popen(_dk(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = Path(run_dir) / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"dk exited early ({proc.returncode}): {proc.stderr.read()}")
            if metrics.exists() and metrics.read_text().count("\n") >= min_lines:
                break
            time.sleep(0.02)
        else:
            pytest.fail("no progress in metrics.jsonl")
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


def test_sigterm_checkpoints_exits_143_and_resume_is_bitwise_exact(tmp_path):
    reference = load_config(None, [*LONG, f"run_dir={tmp_path / 'reference'}"])
    run(reference)
    run_dir = tmp_path / "killed"
    rc, err = _start_and_signal(
        ["train", "--run-dir", str(run_dir), *LONG], run_dir, signal.SIGTERM
    )
    assert rc == 143, err
    assert (
        err.strip().startswith("dk: stopped by SIGTERM; checkpoint saved at")
        and "Traceback" not in err
    )
    ckpts = list_checkpoints(run_dir / "checkpoints")
    assert ckpts, "no checkpoint written on SIGTERM"
    step = json.loads((ckpts[-1] / "state.json").read_text())["global_step"]
    assert 0 < step < 1000
    assert not (run_dir / "model.safetensors").exists()

    done = subprocess.run(
        _dk("train", "--run-dir", str(run_dir), *LONG, "--resume", "auto"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (run_dir / "model.safetensors").read_bytes() == (
        Path(reference.run_dir) / "model.safetensors"
    ).read_bytes()
    assert (run_dir / "metrics.jsonl").read_text() == (
        Path(reference.run_dir) / "metrics.jsonl"
    ).read_text()


def test_sigint_takes_the_same_graceful_path(tmp_path):
    run_dir = tmp_path / "interrupted"
    rc, err = _start_and_signal(["train", "--run-dir", str(run_dir), *LONG], run_dir, signal.SIGINT)
    assert rc == 130, err
    assert (
        err.strip().startswith("dk: stopped by SIGINT; checkpoint saved at")
        and "KeyboardInterrupt" not in err
    )
    assert list_checkpoints(run_dir / "checkpoints")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["train", "distill"])
def test_repeated_kills_then_resume_is_bitwise_exact(tmp_path, teacher_file, kind):
    """Three SIGTERMs at random points of one run (train, or distill from a live teacher)."""
    extra = []
    if kind == "distill":
        extra = [
            "method.name=soft_targets",
            f"teacher.checkpoints=[{teacher_file()}]",
            "teacher.outputs=live",
        ]
    reference = load_config(None, [*LONG, *extra, f"run_dir={tmp_path / 'reference'}"])
    run(reference, kind=kind)
    run_dir = tmp_path / "killed"
    args = [kind, "--run-dir", str(run_dir), *LONG, *extra]
    lines = 1
    for _ in range(3):
        rc, err = _start_and_signal(
            [*args, "--resume", "auto"], run_dir, signal.SIGTERM, min_lines=lines
        )
        assert rc == 143, err
        lines = (run_dir / "metrics.jsonl").read_text().count("\n") + 50
    done = subprocess.run(
        _dk(*args, "--resume", "auto"), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert (run_dir / "model.safetensors").read_bytes() == (
        Path(reference.run_dir) / "model.safetensors"
    ).read_bytes()
