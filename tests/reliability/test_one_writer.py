"""A run directory has one writer: a second process is refused naming the first, and a lock left
by a killed process never blocks the next run (the kernel drops it with the process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from darkknowledge.cli import main
from darkknowledge.errors import DKError
from darkknowledge.train import fit_model
from darkknowledge.train.rundir import hold

ARGS = [
    "model.hidden=[16]",
    "data.train_size=200",
    "data.test_size=50",
    "optim.epochs=1",
    "optim.batch_size=50",
    "progress=false",
]
SRC = str(Path(__file__).resolve().parents[2] / "src")


def _holder_process(run_dir: Path) -> subprocess.Popen:
    """Another process that takes the run directory's lock and keeps it until killed."""
    code = (
        "import sys, time\nfrom pathlib import Path\nfrom darkknowledge.train.rundir import "
        "hold\nwith hold(Path(sys.argv[1])):\n    print('held', flush=True)\n    time.sleep(600)\n"
    )
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_a_second_writer_is_refused_naming_the_first_and_a_killed_holder_blocks_nothing(
    tmp_path, capsys
):
    run_dir = tmp_path / "run"
    assert main(["train", "--run-dir", str(run_dir), *ARGS, "stop_after_steps=2"]) == 143
    holder = _holder_process(run_dir)
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    try:
        capsys.readouterr()
        assert main(["train", "--run-dir", str(run_dir), *ARGS, "--resume", "auto"]) == 2
        err = capsys.readouterr().err
        assert (
            f"is being written by another process (pid {holder.pid} on " in err
            and err.count("\n") == 1
        )
        assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before  # nothing touched
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding the lock
        holder.wait()
    assert main(["train", "--run-dir", str(run_dir), *ARGS, "--resume", "auto"]) == 0
    assert (run_dir / "model.safetensors").is_file()


def test_the_lock_is_released_when_the_run_ends_however_it_ends(tmp_path):
    run_dir = tmp_path / "run"
    # interrupted
    assert main(["train", "--run-dir", str(run_dir), *ARGS, "stop_after_steps=2"]) == 143
    with hold(run_dir):  # free again: this process can take it
        pass
    assert main(["train", "--run-dir", str(run_dir), *ARGS, "optim.lr=-1"]) == 2  # refused
    with hold(run_dir):
        pass


def test_fit_model_never_writes_into_a_users_directory(tmp_path):
    import torch

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine\n")
    model = torch.nn.Linear(4, 2)
    batches = [(torch.randn(8, 4), torch.randint(0, 2, (8,)))]
    with pytest.raises(DKError, match="holds files that are not a darkknowledge run"):
        fit_model(model, batches, optim={"epochs": 1}, run_dir=mine)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    # a new directory is ours
    fit_model(model, batches, optim={"epochs": 1}, run_dir=tmp_path / "new")
    assert (tmp_path / "new" / ".darkknowledge-run").is_file()
