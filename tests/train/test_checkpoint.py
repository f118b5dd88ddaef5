"""Checkpoints: safetensors + JSON, atomic, previous ones kept, broken ones skipped with a
warning.
"""

from __future__ import annotations

import errno
import json
import os

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from darkknowledge.errors import DKError
from darkknowledge.train import checkpoint as checkpoint_module
from darkknowledge.train.checkpoint import (
    FORMAT,
    latest_checkpoint,
    list_checkpoints,
    optimizer_state,
    read_checkpoint,
    restore_optimizer,
    save_checkpoint,
)

STATE = {
    "epoch": 0,
    "step_in_epoch": 1,
    "global_step": 1,
    "optimizer": {},
    "config_hash": "h",
    "fingerprints": {},
}


def _save(root, step, value=0.0, keep=2):
    return save_checkpoint(
        root,
        step,
        {"w": torch.full((2, 3), value)},
        {"rng/torch": torch.zeros(4, dtype=torch.uint8)},
        {**STATE, "global_step": step},
        keep,
    )


def test_round_trip(tmp_path):
    path = _save(tmp_path, 5, 1.5)
    assert path.name == "step-000000005"
    assert sorted(p.name for p in path.iterdir()) == [
        "manifest.json",
        "model.safetensors",
        "state.json",
        "state.safetensors",
    ]
    ck = read_checkpoint(path)
    assert torch.equal(ck["model"]["w"], torch.full((2, 3), 1.5))
    assert ck["state"]["global_step"] == 5 and ck["state"]["format"] == FORMAT
    assert ck["path"] == path


def test_keeps_the_newest_and_prunes_the_rest(tmp_path):
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000000003", "step-000000004"]
    assert latest_checkpoint(tmp_path)["state"]["global_step"] == 4


@pytest.mark.parametrize(
    "victim", ["model.safetensors", "state.safetensors", "state.json", "manifest.json"]
)
def test_a_truncated_latest_is_skipped_with_a_warning_naming_it(tmp_path, victim):
    _save(tmp_path, 1)
    latest = _save(tmp_path, 2)
    f = latest / victim
    f.write_bytes(f.read_bytes()[:10])
    with pytest.warns(UserWarning, match=f"skipping checkpoint: checkpoint .*{latest.name}"):
        ck = latest_checkpoint(tmp_path)
    assert ck["state"]["global_step"] == 1
    with pytest.raises(DKError, match=latest.name):
        read_checkpoint(latest)


def test_a_missing_file_is_named(tmp_path):
    path = _save(tmp_path, 1)
    (path / "state.safetensors").unlink()
    with pytest.raises(
        DKError, match=r"step-000000001 is incomplete: state.safetensors is missing"
    ):
        read_checkpoint(path)
    with pytest.warns(UserWarning):
        assert latest_checkpoint(tmp_path) is None


def test_a_missing_checkpoint_directory(tmp_path):
    with pytest.raises(DKError, match="not found"):
        read_checkpoint(tmp_path / "step-000000009")


def test_state_written_by_something_else_is_refused(tmp_path):
    path = _save(tmp_path, 1)
    state = json.loads((path / "state.json").read_text())
    for mutate, needle in (
        (lambda s: s.pop("optimizer"), "lacks optimizer"),
        (lambda s: s.update(format=1), "has format 1"),
    ):
        changed = dict(state)
        mutate(changed)
        data = json.dumps(changed).encode()
        (path / "state.json").write_bytes(data)
        manifest = json.loads((path / "manifest.json").read_text())
        manifest["state.json"] = __import__("hashlib").sha256(data).hexdigest()
        (path / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(DKError, match=needle):
            read_checkpoint(path)


def test_a_stale_temp_directory_is_ignored_and_cleaned(tmp_path):
    stale = tmp_path / ".step-000000007.tmp"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    assert list_checkpoints(tmp_path) == []
    _save(tmp_path, 8)
    assert not stale.exists()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000000008"]


def test_resaving_a_step_replaces_it(tmp_path):
    _save(tmp_path, 3, 1.0)
    _save(tmp_path, 3, 2.0)
    assert [p.name for p in tmp_path.iterdir()] == ["step-000000003"]
    assert float(read_checkpoint(tmp_path / "step-000000003")["model"]["w"][0, 0]) == 2.0


def test_disk_full_while_writing_keeps_the_previous_and_leaves_no_temp(tmp_path, monkeypatch):
    _save(tmp_path, 1)
    before = {p: p.read_bytes() for p in (tmp_path / "step-000000001").iterdir()}
    real_write = checkpoint_module._fsync_write
    calls = []

    def fail_on_second_file(path, data):
        calls.append(path)
        if len(calls) >= 2:
            path.write_bytes(data[: len(data) // 2])  # a partial file, as a full disk leaves it
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(path, data)

    monkeypatch.setattr(checkpoint_module, "_fsync_write", fail_on_second_file)
    with pytest.raises(
        DKError,
        match=r"disk full writing checkpoint .*step-000000002; free space or choose another "
        r"run_dir",
    ):
        _save(tmp_path, 2)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000000001"]
    assert {p: p.read_bytes() for p in (tmp_path / "step-000000001").iterdir()} == before


@pytest.mark.parametrize("name", ["sgd", "adam", "paper_dropout"])
def test_optimizer_state_round_trips_exactly(name):
    from darkknowledge.config import OptimConfig
    from darkknowledge.train.optim import build_optimizer

    torch.manual_seed(0)
    a = torch.nn.Linear(3, 2)
    b = torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    cfg = OptimConfig(name=name, lr=0.1)
    opt_a, opt_b = build_optimizer(cfg, a.parameters()), build_optimizer(cfg, b.parameters())
    x = torch.randn(4, 3)
    for _ in range(2):
        opt_a.zero_grad()
        a(x).square().sum().backward()
        opt_a.step()
    tensors, scalars = optimizer_state(opt_a)
    scalars = json.loads(json.dumps(scalars))  # as stored in state.json
    tensors = st_load(st_save(tensors))  # as stored in state.safetensors
    b.load_state_dict(a.state_dict())
    restore_optimizer(opt_b, tensors, scalars)
    for model, opt in ((a, opt_a), (b, opt_b)):
        opt.zero_grad()
        model(x).square().sum().backward()
        opt.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
