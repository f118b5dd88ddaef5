"""The teacher-output store: computed once, reused, refused when foreign, rebuilt when broken."""

from __future__ import annotations

import errno
import importlib
import os

import pytest
import torch

from darkknowledge.data import TensorDataset
from darkknowledge.errors import DKError
from darkknowledge.models import build_model
from darkknowledge.teachers import (
    Teacher,
    compute_teacher_logits,
    default_store_path,
    load_store,
    save_store,
    teacher_outputs,
)
from darkknowledge.train import run

store_module = importlib.import_module("darkknowledge.teachers.store")


def _teacher(seed=0, classes=10):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Teacher([build_model("mlp", {"hidden": [8]}, 16, classes)], [f"teacher{seed}"])


def _data(n=30, seed=0, name="toy/train"):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(
        images=torch.randint(0, 256, (n, 4, 4), dtype=torch.uint8, generator=g),
        labels=torch.randint(0, 10, (n,), generator=g),
        index=torch.arange(n),
        num_classes=10,
        name=name,
    )


@pytest.fixture
def count_computes(monkeypatch):
    calls = []
    real = store_module.compute_teacher_logits

    def counting(teacher, dataset, *args, **kwargs):
        calls.append(dataset.name)
        return real(teacher, dataset, *args, **kwargs)

    monkeypatch.setattr(store_module, "compute_teacher_logits", counting)
    return calls


def test_computed_once_then_reused(count_computes, isolated_cache):
    teacher, data = _teacher(), _data()
    first = teacher_outputs(teacher, data)
    path = default_store_path(teacher, data)
    assert path.is_file() and path.parent == isolated_cache / "teacher_outputs"
    mtime = path.stat().st_mtime_ns
    second = teacher_outputs(teacher, data)
    assert count_computes == ["toy/train"]
    assert path.stat().st_mtime_ns == mtime
    assert torch.equal(first, second)
    assert first.shape == (1, 30, 10)


def test_two_distillation_runs_share_one_precompute(make_cfg, teacher_file, count_computes):
    path = teacher_file()
    for name in ("a", "b"):
        run(make_cfg("method.name=soft_targets", f"teacher.checkpoints=[{path}]", "optim.epochs=1", name=name), kind="distill")
    assert count_computes == ["mnist/train"]  # the test set's logits are computed by run(), not stored


def test_rows_are_keyed_by_dataset_position_and_index():
    teacher, full = _teacher(), _data(40)
    subset = full.subset(torch.tensor([7, 3, 30, 12]))  # out of order on purpose
    logits = teacher_outputs(teacher, subset)
    stored = store_module.st_load((default_store_path(teacher, subset)).read_bytes())
    assert torch.equal(stored["index"], torch.tensor([7, 3, 30, 12]))
    for pos, src in enumerate([7, 3, 30, 12]):
        expected = teacher(full.features(torch.tensor([src])))[:, 0]
        assert torch.allclose(logits[:, pos], expected, rtol=0, atol=1e-6)  # batch size may change the last bits


def test_explicit_store_from_another_teacher_is_refused(tmp_path):
    data, path = _data(), tmp_path / "store.safetensors"
    teacher_outputs(_teacher(0), data, path)
    with pytest.raises(DKError, match=r"store .*store.safetensors was made by another teacher .*set teacher.store to a new path"):
        teacher_outputs(_teacher(1), data, path)


def test_explicit_store_over_other_data_is_refused(tmp_path):
    teacher, path = _teacher(), tmp_path / "store.safetensors"
    teacher_outputs(teacher, _data(seed=0), path)
    with pytest.raises(DKError, match=r"was made over other data \(toy/train"):
        teacher_outputs(teacher, _data(seed=1), path)
    with pytest.raises(DKError, match="other data"):
        teacher_outputs(teacher, _data(seed=0).subset(torch.arange(10)), path)


def test_a_foreign_safetensors_file_is_not_a_store(tmp_path):
    path = tmp_path / "s.safetensors"
    path.write_bytes(store_module.st_save({"logits": torch.zeros(1, 30, 10)}))
    with pytest.raises(DKError, match="is not a darkknowledge store"):
        load_store(path, _teacher(), _data())


def test_corrupt_default_store_is_rebuilt_with_a_warning(count_computes):
    teacher, data = _teacher(), _data()
    good = teacher_outputs(teacher, data)
    path = default_store_path(teacher, data)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.warns(UserWarning, match=f"rebuilding teacher-output store: teacher-output store {path} is corrupt"):
        again = teacher_outputs(teacher, data)
    assert torch.equal(again, good)
    assert path.read_bytes() == raw
    assert count_computes == ["toy/train", "toy/train"]


def test_corrupt_explicit_store_is_an_error(tmp_path):
    path = tmp_path / "s.safetensors"
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(DKError, match="is corrupt"):
        teacher_outputs(_teacher(), _data(), path)


def test_a_killed_precompute_leaves_an_ignored_temp_file(count_computes):
    """atomic_write_bytes writes .<name>.<random>.tmp then renames; a kill leaves only the temp file."""
    teacher, data = _teacher(), _data()
    path = default_store_path(teacher, data)
    path.parent.mkdir(parents=True)
    leftover = path.parent / f".{path.name}.abc123.tmp"
    leftover.write_bytes(b"half a store")
    logits = teacher_outputs(teacher, data)
    assert path.is_file() and count_computes == ["toy/train"]
    assert torch.equal(load_store(path, teacher, data), logits)


def test_non_finite_teacher_outputs_are_refused_before_training(tmp_path):
    teacher, data = _teacher(), _data()
    with torch.no_grad():
        teacher.members[0].layers[-1].bias[3] = float("nan")
    with pytest.raises(DKError, match=r"teacher teacher0 outputs non-finite logits for 30 examples of toy/train, first at source index 0"):
        teacher_outputs(teacher, data, tmp_path / "s.safetensors")
    assert not (tmp_path / "s.safetensors").exists()


def _fail_writes(monkeypatch, err):
    def fail(path, data):
        raise OSError(err, os.strerror(err), str(path))

    monkeypatch.setattr(store_module, "atomic_write_bytes", fail)


def test_an_unwritable_default_store_only_costs_the_reuse(monkeypatch):
    _fail_writes(monkeypatch, errno.EROFS)
    teacher, data = _teacher(), _data()
    with pytest.warns(UserWarning, match="teacher-output store not saved"):
        logits = teacher_outputs(teacher, data)
    assert torch.equal(logits, compute_teacher_logits(teacher, data))


def test_a_full_disk_at_an_explicit_store_is_an_error(monkeypatch, tmp_path):
    _fail_writes(monkeypatch, errno.ENOSPC)
    with pytest.raises(DKError, match=r"disk full writing teacher-output store .*s.safetensors; free space or set teacher.store to a writable path"):
        teacher_outputs(_teacher(), _data(), tmp_path / "s.safetensors")


def test_store_file_holds_only_tensors_and_json_metadata_and_is_reproducible(tmp_path):
    teacher, data = _teacher(), _data()
    logits = compute_teacher_logits(teacher, data)
    path = save_store(tmp_path / "s.safetensors", logits, teacher, data)
    assert save_store(tmp_path / "t.safetensors", logits, teacher, data).read_bytes() == path.read_bytes()
    tensors = store_module.st_load(path.read_bytes())
    assert set(tensors) == {"logits", "index"}
    assert tensors["logits"].dtype == torch.float32
