"""The teacher-output store: computed once, reused, refused when foreign, repaired when broken."""

from __future__ import annotations

import errno
import importlib
import json
import os

import pytest
import torch
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from darkknowledge.data import TensorDataset
from darkknowledge.errors import DKError
from darkknowledge.models import build_model
from darkknowledge.teachers import (
    StoreOptions,
    Teacher,
    compute_teacher_logits,
    default_store_path,
    load_store,
    read_store_manifest,
    teacher_outputs,
)
from darkknowledge.train import run

build_module = importlib.import_module("darkknowledge.teachers.build")


def _teacher(seed=0, classes=10, members=1):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        models = [build_model("mlp", {"hidden": [8]}, 16, classes) for _ in range(members)]
    return Teacher(
        models, [f"teacher{seed}" + (f".{m}" if members > 1 else "") for m in range(members)]
    )


def _data(n=30, seed=0, name="toy/train"):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(
        images=torch.randint(0, 256, (n, 4, 4), dtype=torch.uint8, generator=g),
        labels=torch.randint(0, 10, (n,), generator=g),
        index=torch.arange(n),
        num_classes=10,
        name=name,
    )


def _files(path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


@pytest.fixture
def shard_computes(monkeypatch):
    """Every shard computation, as (dataset name, first row)."""
    calls = []
    real = build_module.compute_shard

    def counting(teacher, dataset, start, stop, *args, **kwargs):
        calls.append((dataset.name, start))
        return real(teacher, dataset, start, stop, *args, **kwargs)

    monkeypatch.setattr(build_module, "compute_shard", counting)
    return calls


def test_computed_once_then_reused(shard_computes, isolated_cache):
    teacher, data = _teacher(), _data()
    first = teacher_outputs(teacher, data)
    path = default_store_path(teacher, data)
    assert (path / "manifest.json").is_file() and path.parent == isolated_cache / "teacher_outputs"
    assert path.name.endswith("-dense-float32")
    mtimes = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}
    second = teacher_outputs(teacher, data)
    assert shard_computes == [("toy/train", 0)]
    assert {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == mtimes
    assert torch.equal(first, second)
    assert first.shape == (1, 30, 10) and first.dtype == torch.float32
    assert torch.equal(first, compute_teacher_logits(teacher, data))


def test_students_at_different_temperatures_share_one_dense_store(
    make_cfg, teacher_file, shard_computes
):
    path = teacher_file()
    for name, t in (("a", 2), ("b", 20)):
        run(
            make_cfg(
                "method.name=soft_targets",
                f"method.temperature={t}",
                f"teacher.checkpoints=[{path}]",
                "optim.epochs=1",
                name=name,
            ),
            kind="distill",
        )
    assert shard_computes == [
        ("mnist/train", 0)
    ]  # the test set's logits are computed by run(), not stored


def test_rows_are_keyed_by_dataset_position_and_index():
    teacher, full = _teacher(), _data(40)
    subset = full.subset(torch.tensor([7, 3, 30, 12]))  # out of order on purpose
    logits = teacher_outputs(teacher, subset)
    shard = load_file(default_store_path(teacher, subset) / "shard-00000.safetensors")
    assert torch.equal(shard["index"], torch.tensor([7, 3, 30, 12]))
    for pos, src in enumerate([7, 3, 30, 12]):
        expected = teacher(full.features(torch.tensor([src])))[:, 0]
        # batch size may change the last bits
        assert torch.allclose(logits[:, pos], expected, rtol=0, atol=1e-6)


def test_explicit_store_from_another_teacher_is_refused(tmp_path):
    data, path = _data(), tmp_path / "store"
    teacher_outputs(_teacher(0), data, path)
    with pytest.raises(
        DKError,
        match=r"store .*store was made by another teacher .*set teacher.store to a new path",
    ):
        teacher_outputs(_teacher(1), data, path)


def test_explicit_store_over_other_data_is_refused(tmp_path):
    teacher, path = _teacher(), tmp_path / "store"
    teacher_outputs(teacher, _data(seed=0), path)
    with pytest.raises(DKError, match=r"was made over other data \(toy/train"):
        teacher_outputs(teacher, _data(seed=1), path)  # same name and indices, other pixels
    with pytest.raises(DKError, match=r"other data \(toy/train.*than the transfer set toy/test"):
        teacher_outputs(teacher, _data(seed=0, name="toy/test"), path)
    with pytest.raises(
        DKError, match=r"other data .*5 of its 35 source indices are not in the store"
    ):
        teacher_outputs(teacher, _data(n=35, seed=0), path)


def test_a_store_of_a_whole_split_serves_any_subset_of_it(tmp_path):
    """Rows are found by source index and proven to be the same pixels by their digests."""
    teacher, full, path = _teacher(), _data(40), tmp_path / "store"
    everything = teacher_outputs(teacher, full, path, StoreOptions(shard_size=7))
    subset = full.subset(torch.tensor([39, 0, 8, 8, 21]))
    assert torch.equal(teacher_outputs(teacher, subset, path), everything[:, [39, 0, 8, 8, 21]])
    forged = TensorDataset(subset.images.clone(), subset.labels, subset.index, 10, "toy/train")
    forged.images[2, 0, 0] ^= 1  # one pixel of one example
    with pytest.raises(
        DKError, match=r"other data .*; 1 of its 5 examples have other pixels than the stored rows"
    ):
        teacher_outputs(teacher, forged, path)


def test_a_directory_that_is_not_a_store_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DKError, match="is not a teacher-output store"):
        teacher_outputs(_teacher(), _data(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_foreign_safetensors_file_is_not_a_store(tmp_path):
    path = tmp_path / "s.safetensors"
    path.write_bytes(st_save({"logits": torch.zeros(1, 30, 10)}))
    with pytest.raises(DKError, match="is a safetensors file that is not a teacher-output store"):
        load_store(path, _teacher(), _data())


def test_a_manifest_of_another_format_is_not_a_store(tmp_path):
    teacher, data, path = _teacher(), _data(), tmp_path / "store"
    teacher_outputs(teacher, data, path)
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "format": "someone.else/1"}))
    with pytest.raises(DKError, match="is not a darkknowledge store"):
        teacher_outputs(teacher, data, path)


def test_corrupt_default_store_is_repaired_with_a_warning(shard_computes):
    teacher, data = _teacher(), _data()
    options = StoreOptions(shard_size=10)
    good = teacher_outputs(teacher, data, options=options)
    path = default_store_path(teacher, data, options)
    before = _files(path)
    raw = (path / "shard-00001.safetensors").read_bytes()
    (path / "shard-00001.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.warns(
        UserWarning,
        match=(
            f"rebuilding teacher-output store: teacher-output store {path} is corrupt "
            "\\(shard-00001.safetensors does not match the sha256"
        ),
    ):
        again = teacher_outputs(teacher, data, options=options)
    assert torch.equal(again, good)
    assert _files(path) == before
    assert shard_computes == [
        ("toy/train", 0),
        ("toy/train", 10),
        ("toy/train", 20),
        ("toy/train", 10),
    ]


def test_corrupt_explicit_store_is_an_error(tmp_path):
    teacher, data, path = _teacher(), _data(), tmp_path / "store"
    teacher_outputs(teacher, data, path)
    (path / "manifest.json").write_bytes(b"\x00" * 100)
    with pytest.raises(
        DKError, match=r"store .*store is corrupt \(manifest.json is not a JSON object\)"
    ):
        teacher_outputs(teacher, data, path)
    # a file of the user's, not a store: not called corrupt
    (path / "s.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(
        DKError,
        match=(
            "s.safetensors is a file that is not a teacher-output store; point teacher.store at a "
            "new or empty directory"
        ),
    ):
        teacher_outputs(teacher, data, path / "s.safetensors")
    assert (path / "s.safetensors").read_bytes() == b"\x00" * 100


def test_store_locks_live_inside_the_store_and_a_refused_build_leaves_nothing(tmp_path):
    teacher, data = _teacher(), _data()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine\n")
    with pytest.raises(DKError, match="is not a teacher-output store"):
        teacher_outputs(teacher, data, tmp_path / "mine")
    with pytest.raises(DKError):
        teacher_outputs(
            teacher,
            TensorDataset(
                torch.zeros(0, 28, 28, dtype=torch.uint8),
                torch.zeros(0, dtype=torch.long),
                torch.zeros(0, dtype=torch.long),
                10,
                "empty/train",
            ),
            tmp_path / "new",
        )
    teacher_outputs(teacher, data, tmp_path / "store")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "mine",
        "store",
    ]  # no .<name>.lock beside them
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
    assert ".store.lock" in {p.name for p in (tmp_path / "store").iterdir()}


def test_a_killed_precompute_leaves_ignored_temp_files(shard_computes):
    """atomic_write_bytes writes .<name>.<random>.tmp then renames; a kill leaves only temp
    files.
    """
    teacher, data = _teacher(), _data()
    path = default_store_path(teacher, data)
    path.mkdir(parents=True)
    (path / ".shard-00000.safetensors.abc123.tmp").write_bytes(b"half a shard")
    (path / ".manifest.json.xyz.tmp").write_bytes(b"{")
    logits = teacher_outputs(teacher, data)
    assert shard_computes == [("toy/train", 0)]
    assert torch.equal(load_store(path, teacher, data), logits)
    assert sorted(p.name for p in path.iterdir()) == [
        ".store.lock",
        "manifest.json",
        "shard-00000.json",
        "shard-00000.safetensors",
    ]


def test_non_finite_teacher_outputs_are_refused_before_training(tmp_path):
    teacher, data = _teacher(), _data()
    with torch.no_grad():
        teacher.members[0].layers[-1].bias[3] = float("nan")
    with pytest.raises(
        DKError,
        match=(
            r"teacher teacher0 outputs non-finite logits for 30 examples of toy/train, first at "
            r"source index 0"
        ),
    ):
        teacher_outputs(teacher, data, tmp_path / "s")
    assert not (tmp_path / "s").exists()


def _fail_writes(monkeypatch, err):
    def fail(path, data):
        raise OSError(err, os.strerror(err), str(path))

    monkeypatch.setattr(build_module, "atomic_write_bytes", fail)


def test_an_unwritable_default_store_only_costs_the_reuse(monkeypatch):
    _fail_writes(monkeypatch, errno.EROFS)
    teacher, data = _teacher(), _data()
    with pytest.warns(UserWarning, match="teacher-output store not saved"):
        logits = teacher_outputs(teacher, data)
    assert torch.equal(logits, compute_teacher_logits(teacher, data))
    with pytest.warns(UserWarning, match="teacher-output store not saved"):
        targets = teacher_outputs(teacher, data, options=StoreOptions(topk=3, temperature=2.0))
    assert targets.shape == (1, 30, 3) and targets.temperature == 2.0


def test_a_full_disk_at_an_explicit_store_is_an_error(monkeypatch, tmp_path):
    _fail_writes(monkeypatch, errno.ENOSPC)
    with pytest.raises(
        DKError,
        match=(
            r"disk full writing teacher-output store .*s; free space or set teacher.store to a "
            r"writable path"
        ),
    ):
        teacher_outputs(_teacher(), _data(), tmp_path / "s")


def test_store_files_hold_only_tensors_and_json_and_are_reproducible(tmp_path):
    teacher, data = _teacher(), _data()
    teacher_outputs(teacher, data, tmp_path / "a", StoreOptions(shard_size=8))
    teacher_outputs(teacher, data, tmp_path / "b", StoreOptions(shard_size=8))
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    for name, raw in _files(tmp_path / "a").items():
        if name.endswith(".json"):
            assert isinstance(json.loads(raw), dict)
        elif name == ".store.lock":  # the builders' lock: empty
            assert raw == b""
        else:
            tensors = load_file(tmp_path / "a" / name)
            assert set(tensors) == {"logits", "index", "row_sha256"}
            assert tensors["logits"].dtype == torch.float32


def test_the_manifest_describes_the_store(tmp_path):
    teacher, data = _teacher(members=2), _data()
    teacher_outputs(teacher, data, tmp_path / "s", StoreOptions(shard_size=12, dtype="float16"))
    m = read_store_manifest(tmp_path / "s")
    assert m["format"] == "darkknowledge.teacher_outputs/3" and m["complete"] is True
    assert (m["teacher_fingerprint"], m["dataset_fingerprint"], m["dataset_name"]) == (
        teacher.fingerprint,
        data.fingerprint(),
        "toy/train",
    )
    assert (m["n"], m["classes"], m["members"], m["dtype"], m["kind"], m["shard_size"]) == (
        30,
        10,
        2,
        "float16",
        "dense",
        12,
    )
    assert [(s["file"], s["start"], s["stop"]) for s in m["shards"]] == [
        ("shard-00000.safetensors", 0, 12),
        ("shard-00001.safetensors", 12, 24),
        ("shard-00002.safetensors", 24, 30),
    ]
    assert m["teacher_sources"] == ["teacher0.0", "teacher0.1"]


# ---------------------------------------------------------------- format 2 (one file): read only


def _format2_file(path, teacher, data, logits):
    meta = {
        "format": "darkknowledge.teacher_outputs/2",
        "teacher_fingerprint": teacher.fingerprint,
        "dataset_fingerprint": data.fingerprint(),
        "dataset_name": data.name,
        "teacher_sources": teacher.sources,
    }
    path.write_bytes(
        st_save(
            {"logits": logits.contiguous(), "index": data.index.contiguous()},
            metadata={"darkknowledge.teacher_outputs": json.dumps(meta, sort_keys=True)},
        )
    )
    return path


def test_a_format_2_single_file_store_is_still_read(tmp_path, shard_computes):
    teacher, data = _teacher(), _data()
    logits = compute_teacher_logits(teacher, data)
    path = _format2_file(tmp_path / "old.safetensors", teacher, data, logits)
    assert torch.equal(teacher_outputs(teacher, data, path), logits)
    assert shard_computes == []
    with pytest.raises(
        DKError,
        match=r"single-file store \(format 2\) of dense float32 logits but the run asks for top-3",
    ):
        teacher_outputs(teacher, data, path, StoreOptions(topk=3, temperature=4.0))
    with pytest.raises(DKError, match="was made by another teacher"):
        teacher_outputs(_teacher(1), data, path)
    with pytest.raises(DKError, match="was made over other data"):
        teacher_outputs(teacher, _data(seed=1), path)
