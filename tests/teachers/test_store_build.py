"""Building stores: shards, resume after a kill, float16, top-k, the CLI and torchrun."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from darkknowledge.cli import main
from darkknowledge.config import load_config
from darkknowledge.data import TensorDataset
from darkknowledge.errors import DKError
from darkknowledge.losses import TopKTargets, soft_target_loss, soft_target_loss_topk, topk_targets
from darkknowledge.models import build_model
from darkknowledge.teachers import (
    StoreOptions,
    Teacher,
    build_store,
    compute_teacher_logits,
    default_store_path,
    describe_store,
    iter_shards,
    load_store,
    store_options,
    teacher_outputs,
)
from darkknowledge.train import run

build_module = importlib.import_module("darkknowledge.teachers.build")


def _teacher(seed=0, members=1, classes=10, in_features=16):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        models = [build_model("mlp", {"hidden": [8]}, in_features, classes) for _ in range(members)]
    return Teacher(models, [f"teacher{seed}.{m}" for m in range(members)])


def _data(n=50, seed=0, classes=10):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(
        torch.randint(0, 256, (n, 4, 4), dtype=torch.uint8, generator=g),
        torch.randint(0, classes, (n,), generator=g),
        torch.arange(n),
        classes,
        "toy/train",
    )


def _files(path):
    """A store's files and their bytes (the builders' lock aside: a torchrun build takes none)."""
    return {p.name: p.read_bytes() for p in sorted(Path(path).iterdir()) if p.name != ".store.lock"}


@pytest.fixture
def shard_computes(monkeypatch):
    calls = []
    real = build_module.compute_shard

    def counting(teacher, dataset, start, stop, *args, **kwargs):
        calls.append(start)
        return real(teacher, dataset, start, stop, *args, **kwargs)

    monkeypatch.setattr(build_module, "compute_shard", counting)
    return calls


# ---------------------------------------------------------------- shards and resume


def test_a_stopped_build_finishes_only_the_missing_shards(tmp_path, monkeypatch, shard_computes):
    teacher, data, options = _teacher(), _data(), StoreOptions(shard_size=8)  # 7 shards
    build_store(teacher, data, tmp_path / "oneshot", options)
    shard_computes.clear()

    real, written = build_module.write_shard, []

    def killed_after_three(out, key, i, *args):
        if len(written) == 3:
            raise KeyboardInterrupt  # the process dies here: no more shards, no manifest
        real(out, key, i, *args)
        written.append(i)

    monkeypatch.setattr(build_module, "write_shard", killed_after_three)
    with pytest.raises(KeyboardInterrupt):
        build_store(teacher, data, tmp_path / "s", options)
    assert not (tmp_path / "s" / "manifest.json").exists()
    assert "incomplete, 3 of 7 shards built" in describe_store(tmp_path / "s")
    with pytest.raises(
        DKError, match=r"is incomplete \(no manifest.json; a build was stopped\); rerun"
    ):
        load_store(tmp_path / "s", teacher, data)

    monkeypatch.setattr(build_module, "write_shard", real)
    shard_computes.clear()
    result = build_store(teacher, data, tmp_path / "s", options)
    assert result.computed == [3, 4, 5, 6] and result.reused == [0, 1, 2]
    assert shard_computes == [24, 32, 40, 48]
    assert _files(tmp_path / "s") == _files(tmp_path / "oneshot")


def test_a_deleted_or_damaged_shard_is_rebuilt_alone(tmp_path, shard_computes):
    teacher, data, options = _teacher(), _data(), StoreOptions(shard_size=8)
    out = tmp_path / "s"
    build_store(teacher, data, out, options)
    reference = _files(out)
    assert build_store(teacher, data, out, options).computed == []  # complete: nothing to do
    (out / "shard-00004.safetensors").unlink()
    (out / "shard-00002.json").write_text("{not json")
    shard_computes.clear()
    result = build_store(teacher, data, out, options)
    assert sorted(result.computed) == [2, 4] and shard_computes == [16, 32]
    assert _files(out) == reference


def test_a_partial_build_keeps_its_shard_size_when_none_is_asked(
    tmp_path, monkeypatch, shard_computes
):
    teacher, data = _teacher(), _data()
    real = build_module.write_shard

    def stop_at_shard_two(out, key, i, *args):
        if i == 2:
            raise KeyboardInterrupt
        real(out, key, i, *args)

    monkeypatch.setattr(build_module, "write_shard", stop_at_shard_two)
    with pytest.raises(KeyboardInterrupt):
        build_store(teacher, data, tmp_path / "s", StoreOptions(shard_size=16))
    monkeypatch.setattr(build_module, "write_shard", real)
    shard_computes.clear()
    teacher_outputs(teacher, data, tmp_path / "s")  # a run finishing the build: auto shard size
    assert shard_computes == [32, 48]
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["shard_size"] == 16


def test_another_shard_size_replaces_stale_shards(tmp_path):
    teacher, data = _teacher(), _data()
    out = tmp_path / "s"
    build_store(teacher, data, out, StoreOptions(shard_size=5))
    (out / "manifest.json").unlink()  # a stopped rebuild with another layout
    build_store(teacher, data, out, StoreOptions(shard_size=25))
    assert sorted(_files(out)) == [
        "manifest.json",
        "shard-00000.json",
        "shard-00000.safetensors",
        "shard-00001.json",
        "shard-00001.safetensors",
    ]
    assert torch.equal(load_store(out, teacher, data), compute_teacher_logits(teacher, data))


def test_a_store_can_be_streamed_shard_by_shard(tmp_path):
    teacher, data = _teacher(members=2), _data()
    whole = teacher_outputs(
        teacher, data, tmp_path / "s", StoreOptions(shard_size=16, dtype="float16")
    )
    seen = []
    for entry, tensors in iter_shards(tmp_path / "s"):
        assert tensors["logits"].dtype == torch.float16  # as stored
        assert torch.equal(tensors["logits"].float(), whole[:, entry["start"] : entry["stop"]])
        assert torch.equal(tensors["index"], data.index[entry["start"] : entry["stop"]])
        seen.append((entry["start"], entry["stop"]))
    assert seen == [(0, 16), (16, 32), (32, 48), (48, 50)]


def test_building_over_a_store_of_other_content_is_refused(tmp_path):
    teacher, data, out = _teacher(), _data(), tmp_path / "s"
    build_store(teacher, data, out)
    with pytest.raises(
        DKError, match=r"holds other outputs \(dtype float32 ≠ float16\); choose another --out"
    ):
        build_store(teacher, data, out, StoreOptions(dtype="float16"))
    with pytest.raises(DKError, match=r"holds other outputs \(teacher_fingerprint"):
        build_store(_teacher(1), data, out)
    with pytest.raises(
        DKError, match="holds dense float32 logits but the run asks for dense float16 logits"
    ):
        teacher_outputs(teacher, data, out, StoreOptions(dtype="float16"))


def test_the_default_store_of_other_options_is_another_directory(isolated_cache):
    teacher, data = _teacher(members=2), _data()
    names = {
        default_store_path(teacher, data, o).name.split("-", 2)[2]
        for o in (
            StoreOptions(),
            StoreOptions(dtype="float16"),
            StoreOptions(topk=3, temperature=20.0),
            StoreOptions(topk=3, temperature=20.0, combine="geometric"),
        )
    }
    assert names == {
        "dense-float32",
        "dense-float16",
        "top3-T20.0-arithmetic-float32",
        "top3-T20.0-geometric-float32",
    }
    assert default_store_path(
        _teacher(), data, StoreOptions(topk=3, temperature=2.5)
    ).name.endswith("-top3-T2.5-float32")


def test_a_mismatched_teacher_is_refused_before_any_work(tmp_path):
    with pytest.raises(
        DKError, match=r"teacher predicts 5 classes from 16 inputs but toy/train has 10 classes"
    ):
        build_store(_teacher(classes=5), _data(), tmp_path / "s")
    with pytest.raises(DKError, match=r"top-k 11 exceeds the teacher's 10 classes"):
        build_store(_teacher(), _data(), tmp_path / "s", StoreOptions(topk=11, temperature=1.0))
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"dtype": "bfloat16"}, "dtype 'bfloat16' is unknown"),
        ({"topk": 0, "temperature": 1.0}, "must be a positive integer"),
        ({"topk": 3}, "needs a temperature > 0"),
        ({"temperature": 2.0}, "a dense teacher-output store has no temperature"),
        ({"shard_size": 0}, "shard size 0 must be a positive integer"),
        ({"combine": "median"}, "combine 'median' is unknown"),
    ],
)
def test_bad_store_options(kwargs, needle):
    with pytest.raises(DKError, match=needle):
        StoreOptions(**kwargs)


# ---------------------------------------------------------------- float16 and top-k


def test_float16_halves_the_logits_and_keeps_the_loss_close(tmp_path):
    teacher, data = _teacher(members=2), _data(200)
    with torch.no_grad():
        for m in teacher.members:
            m.layers[-1].weight.mul_(30)  # logits of magnitude ~10, like a trained teacher
    full = teacher_outputs(teacher, data, tmp_path / "f32")
    half = teacher_outputs(teacher, data, tmp_path / "f16", StoreOptions(dtype="float16"))
    assert half.dtype == torch.float32  # upcast on load
    assert load_file(tmp_path / "f16" / "shard-00000.safetensors")["logits"].dtype == torch.float16
    assert torch.equal(half, full.half().float())
    assert (half - full).abs().max() <= full.abs().max() * 2**-11
    student = torch.randn(200, 10) * 5
    for t in (1.0, 4.0, 20.0):
        a, b = soft_target_loss(student, full, t), soft_target_loss(student, half, t)
        assert abs(a - b) <= 2e-3 * a, (t, a, b)


@pytest.mark.parametrize("members", [1, 3])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_topk_store_holds_the_combined_topk_targets(tmp_path, members, dtype):
    teacher, data = _teacher(members=members), _data()
    options = StoreOptions(topk=4, temperature=5.0, combine="geometric", dtype=dtype, shard_size=16)
    got = teacher_outputs(teacher, data, tmp_path / "s", options)
    want = topk_targets(compute_teacher_logits(teacher, data), 4, 5.0, "geometric")
    assert isinstance(got, TopKTargets) and got.shape == (1, 50, 4)
    assert got.indices.dtype == torch.int64 and got.log_probs.dtype == torch.float32
    assert (got.temperature, got.members, got.combine) == (
        5.0,
        members,
        "geometric" if members > 1 else None,
    )
    assert torch.equal(got.indices, want.indices)
    if dtype == "float32":
        assert torch.equal(got.log_probs, want.log_probs) and torch.equal(
            got.tail_log_prob, want.tail_log_prob
        )
    else:
        assert torch.equal(got.log_probs, want.log_probs.half().float())
    shard = load_file(tmp_path / "s" / "shard-00000.safetensors")
    assert (
        set(shard) == {"indices", "log_probs", "tail_log_prob", "index", "row_sha256"}
        and shard["indices"].dtype == torch.int32
    )


def test_a_full_topk_store_gives_the_dense_loss(tmp_path):
    teacher, data = _teacher(members=2), _data()
    dense = teacher_outputs(teacher, data, tmp_path / "d")
    full_k = teacher_outputs(teacher, data, tmp_path / "k", StoreOptions(topk=10, temperature=3.0))
    student = torch.randn(50, 10) * 3
    a = soft_target_loss(student, dense, 3.0)
    b = soft_target_loss_topk(student, *full_k.at(3.0), 3.0)
    assert torch.allclose(a, b, rtol=1e-5)
    small_k = teacher_outputs(teacher, data, tmp_path / "k3", StoreOptions(topk=3, temperature=3.0))
    assert soft_target_loss_topk(student, *small_k.at(3.0), 3.0) <= a * (1 + 1e-6)


def test_a_topk_store_serves_a_subset_by_index(tmp_path):
    teacher, data = _teacher(), _data()
    whole = teacher_outputs(
        teacher, data, tmp_path / "s", StoreOptions(topk=2, temperature=4.0, shard_size=9)
    )
    pos = torch.tensor([49, 3, 17])
    part = teacher_outputs(
        teacher, data.subset(pos), tmp_path / "s", StoreOptions(topk=2, temperature=4.0)
    )
    assert torch.equal(part.indices, whole[:, pos].indices) and torch.equal(
        part.tail_log_prob, whole[:, pos].tail_log_prob
    )


def test_store_options_come_from_the_config_and_the_method():
    from darkknowledge.methods import build_method

    soft = build_method("soft_targets", {"temperature": 8})
    cfg = load_config(
        None, ["teacher.store_topk=5", "teacher.store_dtype=float16", "teacher.combine=geometric"]
    ).teacher
    assert store_options(cfg, soft) == StoreOptions(
        dtype="float16", topk=5, temperature=8.0, combine="geometric"
    )
    assert store_options(load_config(None, []).teacher, soft) == StoreOptions()
    with pytest.raises(
        DKError,
        match=r"store_temperature=4 but method.temperature=8; a top-k store serves one temperature",
    ):
        store_options(
            load_config(None, ["teacher.store_topk=5", "teacher.store_temperature=4"]).teacher, soft
        )
    with pytest.raises(
        DKError,
        match=(
            r"teacher.store_topk=5 stores soft targets at one temperature but LogitMatching uses "
            r"no temperature"
        ),
    ):
        store_options(cfg, build_method("logit_matching"))


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        (
            "teacher.store_dtype=bf16",
            "teacher.store_dtype='bf16' is unknown; choose float32 or float16",
        ),
        ("teacher.store_topk=0", "teacher.store_topk=0 must be ≥ 1"),
        (
            "teacher.store_temperature=4",
            "teacher.store_temperature=4.0 without teacher.store_topk; drop it",
        ),
        (
            "teacher.store_topk=3 teacher.store_temperature=-1",
            "teacher.store_temperature=-1.0 must be > 0",
        ),
        (
            "teacher.store_topk=3 teacher.outputs=live",
            "teacher.store_topk is set but teacher.outputs=live",
        ),
    ],
)
def test_store_config_is_validated(override, needle):
    with pytest.raises(DKError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, override.split())


def test_store_options_enter_the_config_hash_only_when_set():
    base = load_config(None, [])
    assert (
        load_config(None, ["teacher.store_dtype=float32", "teacher.store_topk=null"]).hash()
        == base.hash()
    )
    assert load_config(None, ["teacher.store_dtype=float16"]).hash() != base.hash()
    assert load_config(None, ["teacher.store_topk=3"]).hash() != base.hash()


# ---------------------------------------------------------------- runs with fp16 / top-k stores


def test_a_run_distills_from_a_topk_store(make_cfg, teacher_file):
    path = teacher_file()
    summary = run(
        make_cfg(
            "method.name=soft_targets",
            "method.temperature=4",
            f"teacher.checkpoints=[{path}]",
            "teacher.store_topk=3",
            "teacher.store_dtype=float16",
            "optim.epochs=1",
        ),
        kind="distill",
    )
    assert summary["steps"] == 6
    lines = [
        json.loads(x)
        for x in (Path(make_cfg().run_dir).parent / "run" / "metrics.jsonl")
        .read_text()
        .splitlines()
    ]
    assert all(0 < line["soft"] < 1e3 for line in lines if "soft" in line)


def test_a_run_at_another_temperature_than_its_topk_store_is_refused_before_training(
    make_cfg, teacher_file, tmp_path
):
    path = teacher_file()
    cfg = make_cfg(
        "method.name=soft_targets",
        "method.temperature=4",
        f"teacher.checkpoints=[{path}]",
        "teacher.store_topk=3",
        f"teacher.store={tmp_path / 'store'}",
        "optim.epochs=1",
        name="a",
    )
    run(cfg, kind="distill")
    other = make_cfg(
        "method.name=soft_targets",
        "method.temperature=20",
        f"teacher.checkpoints=[{path}]",
        "teacher.store_topk=3",
        f"teacher.store={tmp_path / 'store'}",
        "optim.epochs=1",
        name="b",
    )
    with pytest.raises(
        DKError,
        match=(
            r"holds top-3 float32 log-probabilities at T=4 but the run asks for top-3 float32 "
            r"log-probabilities at T=20"
        ),
    ):
        run(other, kind="distill")
    assert not (tmp_path / "b").exists()


# ---------------------------------------------------------------- pickle canaries


@pytest.mark.parametrize("victim", ["shard-00001.safetensors", "manifest.json", "shard-00001.json"])
def test_store_files_replaced_by_pickles_never_run(tmp_path, canary, victim, shard_computes):
    import hashlib

    payload, marker = canary
    teacher, data, out = _teacher(), _data(), tmp_path / "s"
    teacher_outputs(teacher, data, out, StoreOptions(shard_size=20))
    (out / victim).write_bytes(payload)
    # the attacker fixes the manifest too: only the format check is left
    if victim.endswith(".safetensors"):
        manifest = json.loads((out / "manifest.json").read_text())
        manifest["shards"][1]["sha256"] = hashlib.sha256(payload).hexdigest()
        (out / "manifest.json").write_text(json.dumps(manifest))
    if victim != "shard-00001.json":
        with pytest.raises(DKError, match="is corrupt"):
            teacher_outputs(teacher, data, out)
        assert main(["teacher-outputs", "info", str(out)]) in (0, 2)
    shard_computes.clear()
    result = build_store(teacher, data, out, StoreOptions(shard_size=20))  # the builder repairs it
    assert result.computed == ([] if victim == "manifest.json" else [1])
    assert torch.equal(teacher_outputs(teacher, data, out), compute_teacher_logits(teacher, data))
    assert not marker.exists()


# ---------------------------------------------------------------- dk teacher-outputs


def test_cli_build_and_info(tmp_path, teacher_file, capsys):
    t = teacher_file()
    out = tmp_path / "store"
    args = [
        "teacher-outputs",
        "build",
        "--teacher",
        str(t),
        "--dataset",
        "mnist",
        "--limit",
        "300",
        "--shard-size",
        "128",
        "--out",
        str(out),
    ]
    assert main([*args, "--dtype", "float16"]) == 0
    printed = capsys.readouterr().out
    assert "rank 0/1: computed 3 shard(s) [0, 1, 2], reused 0 of 3" in printed
    assert "content   dense float16 logits" in printed and "mnist/train, 300 examples" in printed
    assert main([*args, "--dtype", "float16"]) == 0
    assert "computed 0 shard(s) [], reused 3 of 3" in capsys.readouterr().out
    assert main(["teacher-outputs", "info", str(out)]) == 0
    assert "3 × up to 128 rows" in capsys.readouterr().out
    assert main(["teacher-outputs", "info", "--json", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["dtype"] == "float16"
    assert main([*args, "--topk", "3", "--temperature", "20"]) == 2
    assert "holds other outputs (kind dense ≠ topk" in capsys.readouterr().err


def test_cli_build_defaults_to_the_cache_teacher_outputs_reads(
    teacher_file, capsys, shard_computes
):
    from darkknowledge.data import datasets

    t = teacher_file()
    assert (
        main(
            [
                "teacher-outputs",
                "build",
                "--teacher",
                str(t),
                "--dataset",
                "mnist",
                "--limit",
                "300",
                "--dtype",
                "float16",
            ]
        )
        == 0
    )
    assert len(shard_computes) == 1
    teacher, first = (
        Teacher.from_checkpoints([t]),
        datasets.get("mnist")("train").subset(torch.arange(300)),
    )
    assert (
        str(default_store_path(teacher, first, StoreOptions(dtype="float16")))
        in capsys.readouterr().out
    )
    teacher_outputs(teacher, first, options=StoreOptions(dtype="float16"))
    assert len(shard_computes) == 1  # loaded, not computed again


def test_one_store_of_the_whole_split_serves_the_runs_of_a_sweep(
    tmp_path, teacher_file, make_cfg, shard_computes
):
    """Precompute the split once; runs over different transfer sets drawn from it only load rows."""
    from darkknowledge.train import prepare_data

    t = teacher_file()
    assert (
        main(
            [
                "teacher-outputs",
                "build",
                "--teacher",
                str(t),
                "--dataset",
                "mnist",
                "--out",
                str(tmp_path / "all"),
            ]
        )
        == 0
    )
    assert len(shard_computes) == 1
    store = f"teacher.store={tmp_path / 'all'}"
    for name, extra in (("omit3", ["data.omit_classes=[3]"]), ("t2", ["method.temperature=2"])):
        cfg = make_cfg(
            "method.name=soft_targets",
            f"teacher.checkpoints=[{t}]",
            "optim.epochs=1",
            store,
            *extra,
            name=name,
        )
        run(cfg, kind="distill")
        train = prepare_data(cfg.data).train
        got = load_store(tmp_path / "all", Teacher.from_checkpoints([t]), train)
        assert torch.allclose(
            got, compute_teacher_logits(Teacher.from_checkpoints([t]), train), atol=1e-6, rtol=0
        )
    assert len(shard_computes) == 1


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--temperature", "4"], "a dense teacher-output store has no temperature"),
        (["--topk", "3"], "needs a temperature > 0"),
        (["--limit", "-1"], "--limit -1 is negative"),
        (["--topk", "11", "--temperature", "2"], "top-k 11 exceeds the teacher's 10 classes"),
    ],
)
def test_cli_build_bad_arguments(tmp_path, teacher_file, capsys, extra, needle):
    assert (
        main(
            [
                "teacher-outputs",
                "build",
                "--teacher",
                str(teacher_file()),
                "--limit",
                "10",
                "--out",
                str(tmp_path / "s"),
                *extra,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("dk: error: ") and needle in err and err.count("\n") == 1
    assert not (tmp_path / "s").exists()


def test_cli_info_on_something_else(tmp_path, capsys):
    assert main(["teacher-outputs", "info", str(tmp_path)]) == 2
    assert "is not a teacher-output store" in capsys.readouterr().err
    assert main(["teacher-outputs", "info", str(tmp_path / "missing")]) == 2


# ---------------------------------------------------------------- separate processes: kill,
# torchrun


def _env(**extra):
    env = dict(
        os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore", **extra
    )
    return env


def _dk(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "darkknowledge.cli", *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


KILL_AFTER = """
import os, sys
import darkknowledge.teachers.build as b
real, done = b.write_shard, []
def write_then_die(out, key, i, start, stop, tensors):
    if len(done) == int(os.environ["DK_TEST_KILL_AFTER"]):
        # killed between the shard's rename and its sidecar, with a temp file of the next one left
        from safetensors.torch import save
        b.atomic_write_bytes(out / b.shard_name(i), save(tensors))
        (out / ".shard-99999.safetensors.x.tmp").write_bytes(b"half")
        os._exit(137)
    real(out, key, i, start, stop, tensors)
    done.append(i)
b.write_shard = write_then_die
from darkknowledge.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow  # three processes; the in-process kill test above is in the default suite
def test_a_killed_process_leaves_shards_and_the_rerun_finishes_them(tmp_path, teacher_file):
    t = teacher_file()
    args = [
        "teacher-outputs",
        "build",
        "--teacher",
        str(t),
        "--dataset",
        "mnist",
        "--limit",
        "300",
        "--shard-size",
        "64",
    ]
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AFTER, *args, "--out", str(tmp_path / "s")],
        env=_env(DK_TEST_KILL_AFTER="2"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == 137, killed.stderr
    assert not (tmp_path / "s" / "manifest.json").exists()
    assert sorted(p.name for p in (tmp_path / "s").glob("shard-*.json")) == [
        "shard-00000.json",
        "shard-00001.json",
    ]
    rerun = _dk(*args, "--out", str(tmp_path / "s"))
    assert rerun.returncode == 0, rerun.stderr
    assert "computed 3 shard(s) [2, 3, 4], reused 2 of 5" in rerun.stdout
    oneshot = _dk(*args, "--out", str(tmp_path / "oneshot"))
    assert oneshot.returncode == 0, oneshot.stderr
    assert _files(tmp_path / "s") == _files(tmp_path / "oneshot")


def test_torchrun_builds_the_same_store_as_one_process(tmp_path, teacher_file):
    """Two gloo processes (rank r builds shards r, r+2, ...) write the one-process store bit for
    bit.
    """
    # an ensemble
    a, b = teacher_file("a.safetensors", seed=0), teacher_file("b.safetensors", seed=1)
    args = [
        "teacher-outputs",
        "build",
        "--teacher",
        str(a),
        "--teacher",
        str(b),
        "--dataset",
        "mnist",
        "--limit",
        "300",
        "--shard-size",
        "64",
        "--dtype",
        "float16",
    ]
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "darkknowledge.cli",
        *args,
    ]
    two = subprocess.run(
        [*torchrun, "--out", str(tmp_path / "two")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert (
        "rank 0/2: computed 3 shard(s) [0, 2, 4]" in two.stdout
        and "rank 1/2: computed 2 shard(s) [1, 3]" in two.stdout
    )
    one = _dk(*args, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    assert _files(tmp_path / "two") == _files(tmp_path / "one")
    # resumable under torchrun too: only the deleted shard is rebuilt, by its rank
    (tmp_path / "two" / "shard-00003.safetensors").unlink()
    again = subprocess.run(
        [*torchrun, "--out", str(tmp_path / "two")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert (
        "rank 0/2: computed 0 shard(s) [], reused 3 of 5" in again.stdout
        and "rank 1/2: computed 1 shard(s) [3], reused 1 of 5" in again.stdout
    )
    assert _files(tmp_path / "two") == _files(tmp_path / "one")


CONCURRENT_STUDENT = """
import time, torch
import darkknowledge.teachers.build as b
from darkknowledge.data import TensorDataset
from darkknowledge.models import build_model
from darkknowledge.teachers import StoreOptions, Teacher, teacher_outputs
real = b.compute_shard
def slow(teacher, data, start, *args):
    print("computed", start, flush=True)
    time.sleep(0.2)  # long enough for the two processes to overlap
    return real(teacher, data, start, *args)
b.compute_shard = slow
torch.manual_seed(0)
teacher = Teacher([build_model("mlp", {"hidden": [8]}, 16, 10)])
g = torch.Generator().manual_seed(0)
images = torch.randint(0, 256, (50, 4, 4), dtype=torch.uint8, generator=g)
data = TensorDataset(images, None, torch.arange(50), 10, "toy/train")
print("sum", float(teacher_outputs(teacher, data, options=StoreOptions(shard_size=10)).sum()))
"""


def test_students_started_together_build_the_shared_store_once(isolated_cache):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT_STUDENT],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    computed = [line for out, _ in outs for line in out.splitlines() if line.startswith("computed")]
    sums = {line for out, _ in outs for line in out.splitlines() if line.startswith("sum")}
    assert sorted(computed) == [f"computed {s}" for s in (0, 10, 20, 30, 40)] and len(sums) == 1


@pytest.mark.parametrize("method", ["decoupled", "logit_matching"])
def test_a_method_needing_dense_logits_is_refused_a_topk_store_before_any_file(
    method, make_cfg, teacher_file, tmp_path
):
    cfg = make_cfg(
        f"method.name={method}",
        f"teacher.checkpoints=[{teacher_file()}]",
        "teacher.store_topk=3",
        f"teacher.store={tmp_path / 'store'}",
        "optim.epochs=1",
        name="dense",
    )
    with pytest.raises(
        DKError,
        match=(
            rf"method '{method}' needs the teacher's dense logits, which a top-k teacher-output "
            r"store does not hold; use a dense store \(teacher.store_topk: null\)"
        ),
    ):
        run(cfg, kind="distill")
    assert not (tmp_path / "store").exists() and not (tmp_path / "dense").exists()
