"""Atomic outputs: a crash or a full disk never leaves a half-written file that is then trusted."""

from __future__ import annotations

import errno
import importlib
import os
from pathlib import Path

from darkknowledge.cli import main
from darkknowledge.train import checkpoint as checkpoint_module
from darkknowledge.train import metrics as metrics_module
from darkknowledge.train.checkpoint import list_checkpoints

run_module = importlib.import_module("darkknowledge.train.run")
ARGS = [
    "model.hidden=[32]",
    "data.train_size=300",
    "data.test_size=100",
    "optim.epochs=2",
    "optim.batch_size=50",
    "checkpoint_every_steps=2",
    "progress=false",
]


def _enospc(path):
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _one_error_line(capsys):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dk: error: ") and "Traceback" not in err, err
    return err


def test_run_outputs_go_through_atomic_writes(tmp_path, monkeypatch):
    """config.yaml, model.safetensors and summary.json are written with atomic_write_bytes (temp
    file,
    fsync, rename; tests/data/test_data_cache.py::test_failed_write_keeps_the_old_file proves
    it)."""
    written = []
    real = run_module.atomic_write_bytes

    def record(path, data):
        written.append(Path(path).name)
        return real(path, data)

    monkeypatch.setattr(run_module, "atomic_write_bytes", record)
    from darkknowledge import data as data_module

    # save_model imports it from here
    monkeypatch.setattr(data_module, "atomic_write_bytes", record)
    assert main(["train", "--run-dir", str(tmp_path / "r"), *ARGS]) == 0
    assert written == ["config.yaml", "model.safetensors", "summary.json"]
    assert [p.name for p in (tmp_path / "r").glob(".*")] == [
        ".darkknowledge-run"
    ]  # no temp files left, only the run's marker


def test_disk_full_at_a_checkpoint_keeps_the_previous_one_and_resume_is_exact(
    tmp_path, monkeypatch, capsys
):
    reference = tmp_path / "reference"
    assert main(["train", "--run-dir", str(reference), *ARGS]) == 0
    run_dir = tmp_path / "full"
    real = checkpoint_module._fsync_write
    writes = []

    def fill_up(path, data):
        writes.append(path)
        if "step-000000006" in str(path):  # the third checkpoint hits a full disk halfway
            path.write_bytes(data[: len(data) // 2])
            raise _enospc(path)
        return real(path, data)

    monkeypatch.setattr(checkpoint_module, "_fsync_write", fill_up)
    assert main(["train", "--run-dir", str(run_dir), *ARGS]) == 2
    err = _one_error_line(capsys)
    assert (
        f"disk full writing checkpoint {run_dir}/checkpoints/step-000000006; free space or choose "
        "another run_dir" in err
    )
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "step-000000002",
        "step-000000004",
    ]
    monkeypatch.undo()
    assert main(["train", "--run-dir", str(run_dir), *ARGS, "--resume", "auto"]) == 0
    assert (run_dir / "model.safetensors").read_bytes() == (
        reference / "model.safetensors"
    ).read_bytes()


def test_disk_full_writing_the_metrics_log(tmp_path, monkeypatch, capsys):
    class FullFile:
        def __init__(self, *args, **kwargs):
            self.n = 0

        def write(self, text):
            self.n += 1
            if self.n > 3:
                raise _enospc("metrics.jsonl")

        def flush(self):
            pass

        def close(self):
            pass

    monkeypatch.setattr(metrics_module, "open", FullFile, raising=False)
    assert main(["train", "--run-dir", str(tmp_path / "r"), *ARGS]) == 2
    assert f"disk full writing {tmp_path}/r/metrics.jsonl" in _one_error_line(capsys)


def test_disk_full_writing_the_model_or_summary(tmp_path, monkeypatch, capsys):
    real = run_module.atomic_write_bytes

    def fail_summary(path, data):
        if Path(path).name == "summary.json":
            raise _enospc(path)
        return real(path, data)

    monkeypatch.setattr(run_module, "atomic_write_bytes", fail_summary)
    assert main(["train", "--run-dir", str(tmp_path / "a"), *ARGS]) == 2
    assert f"disk full writing {tmp_path}/a/summary.json" in _one_error_line(capsys)
    assert not (tmp_path / "a" / "summary.json").exists()

    def fail_model(model, path):
        raise _enospc(path)

    monkeypatch.setattr(run_module, "save_model", fail_model)
    assert main(["train", "--run-dir", str(tmp_path / "b"), *ARGS]) == 2
    assert f"disk full writing {tmp_path}/b/model.safetensors" in _one_error_line(capsys)
    # the final checkpoint is there: resume finishes the run once space is free
    monkeypatch.undo()
    assert list_checkpoints(tmp_path / "b" / "checkpoints")[-1].name == "step-000000012"
    assert main(["train", "--run-dir", str(tmp_path / "b"), *ARGS, "--resume", "auto"]) == 0
    assert (tmp_path / "b" / "summary.json").is_file()


def test_a_killed_checkpoint_write_leaves_only_an_ignored_temp_dir(tmp_path, capsys):
    run_dir = tmp_path / "r"
    assert main(["train", "--run-dir", str(run_dir), *ARGS, "stop_after_steps=4"]) == 143
    stale = run_dir / "checkpoints" / ".step-000000006.tmp"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    assert main(["train", "--run-dir", str(run_dir), *ARGS, "--resume", "auto"]) == 0
    assert not stale.exists()
    assert "warning" not in capsys.readouterr().err
