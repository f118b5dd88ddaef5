"""Config: every key validated, unknown keys with a suggestion, wrong types, overrides, YAML round
trip.
"""

from __future__ import annotations

import dataclasses
import types
import typing

import pytest

from darkknowledge.config import (
    DataConfig,
    EnsembleConfig,
    OptimConfig,
    ReplicasConfig,
    RunConfig,
    TeacherConfig,
    apply_overrides,
    build_dataclass,
    dump_config,
    hash_policy,
    load_config,
    parse_override,
    read_yaml,
)
from darkknowledge.errors import DKError


def _leaf_keys(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _leaf_keys(tp, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", tp


def _wrong_value(tp):
    """A YAML value of the wrong type for ``tp``."""
    if tp is str or str in typing.get_args(tp):
        return "[1, 2]"
    if tp in (int, float, bool) or typing.get_origin(tp) in (typing.Union, types.UnionType):
        return "'not-a-number'"
    return "'a-string'"  # lists and mappings


ALL_KEYS = list(_leaf_keys(RunConfig))


def test_every_key_is_covered():
    names = {k for k, _ in ALL_KEYS}
    assert {
        "optim.lr",
        "data.jitter",
        "teacher.combine",
        "seed",
        "stop_after_steps",
        "model",
        "method",
    } <= names
    assert len(names) >= 35


@pytest.mark.parametrize(("key", "tp"), ALL_KEYS, ids=[k for k, _ in ALL_KEYS])
def test_every_key_rejects_a_wrong_type(key, tp):
    with pytest.raises(DKError) as err:
        load_config(None, [f"{key}={_wrong_value(tp)}"])
    assert key in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("optim.lr=0", "optim.lr=0.0 must be positive"),
        ("optim.lr=-1", "must be positive"),
        ("optim.epochs=0", "optim.epochs=0"),
        ("optim.batch_size=0", "optim.batch_size=0"),
        ("optim.micro_batch_size=0", "micro_batch_size=0"),
        ("optim.momentum=1.0", "optim.momentum=1.0 is out of range"),
        ("optim.final_momentum=-0.1", "final_momentum"),
        ("optim.weight_decay=-1", "negative"),
        ("optim.name=sdg", "did you mean 'sgd'"),
        ("optim.schedule=linear", "unknown schedule"),
        ("data.jitter=9", "data.jitter=9"),
        ("data.fraction=0", "data.fraction=0.0"),
        ("data.fraction=1.5", "out of range"),
        ("data.train_size=0", "data.train_size=0"),
        ("data.validation_size=-1", "negative"),
        ("teacher.combine=median", "teacher.combine='median'"),
        ("teacher.outputs=cached", "teacher.outputs='cached'"),
        ("select_best_on=test", "never the test set"),
        ("select_best_on=valid", "needs a validation split"),
        ("eval_every=0", "eval_every=0"),
        ("checkpoint_every=0", "checkpoint_every=0"),
        ("keep_checkpoints=0", "keep_checkpoints=0"),
        ("log_every=0", "log_every=0"),
        ("checkpoint_every_steps=-1", "checkpoint_every_steps=-1"),
        ("stop_after_steps=-1", "stop_after_steps=-1"),
        ("seed=-1", "seed=-1"),
        ("optim.lr=.inf", "not finite"),
        ("model={hidden: [3]}", None),  # a section without name gets the default name: fine
        ("model=mlp", "model must be a mapping"),
        ("method={name: 3}", "needs a name"),
        ("label_smoothing=1.0", "label_smoothing=1.0 is out of range"),
        ("label_smoothing=-0.1", "label_smoothing=-0.1 is out of range"),
        ("generations=0", "generations=0 must be ≥ 1"),
    ],
)
def test_bad_values_are_one_line_errors(override, needle):
    if needle is None:
        assert load_config(None, [override]).model == {"name": "mlp", "hidden": [3]}
        return
    with pytest.raises(DKError) as err:
        load_config(None, [override])
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_omit_and_keep_together_rejected():
    with pytest.raises(DKError, match="use only one"):
        load_config(None, ["data.omit_classes=[3]", "data.keep_classes=[7, 8]"])


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        ("seeds", "seed"),
        ("optim.epoch", "epochs"),
        ("data.jiter", "jitter"),
        ("teacher.checkpoint", "checkpoints"),
    ],
)
def test_unknown_key_suggests_the_close_one(key, suggestion):
    with pytest.raises(DKError) as err:
        load_config(None, [f"{key}=1"])
    msg = str(err.value)
    assert f"unknown config key {key}" in msg
    assert f"did you mean {suggestion!r}" in msg


def test_overrides_parse_values_as_yaml_data():
    assert parse_override("optim.lr=0.1") == (["optim", "lr"], 0.1)
    assert parse_override("data.omit_classes=[3, 5]") == (["data", "omit_classes"], [3, 5])
    assert parse_override("teacher.store=null") == (["teacher", "store"], None)
    assert parse_override("run_dir=a=b") == (["run_dir"], "a=b")
    assert parse_override("teacher.store=") == (["teacher", "store"], "")
    cfg = load_config(
        None,
        [
            "optim.lr=0.25",
            "data.omit_classes=[3]",
            "model.hidden=[8, 4]",
            "method.name=soft_targets",
            "method.temperature=4",
        ],
    )
    assert cfg.optim.lr == 0.25 and isinstance(cfg.optim.lr, float)
    assert cfg.data.omit_classes == [3]
    assert cfg.model == {"name": "mlp", "hidden": [8, 4]}
    assert cfg.method == {"name": "soft_targets", "temperature": 4}


def test_ints_are_accepted_for_floats_but_not_the_reverse():
    assert load_config(None, ["optim.lr=1"]).optim.lr == 1.0
    with pytest.raises(DKError, match="optim.epochs must be an integer"):
        load_config(None, ["optim.epochs=1.5"])
    with pytest.raises(DKError, match="deterministic must be true/false"):
        load_config(None, ["deterministic=1"])
    with pytest.raises(DKError, match="optim.epochs must be an integer"):
        load_config(None, ["optim.epochs=true"])


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("optim.lr", "has no '='"),
        ("=3", "empty key"),
        ("optim..lr=3", "empty key"),
        ("optim.lr=[1", "not valid YAML"),
        ("seed.x=1", "config key seed must be an integer"),
    ],
)
def test_malformed_overrides(override, needle):
    with pytest.raises(DKError, match=needle):
        load_config(None, [override])


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\noptim: {lr: 0.5, epochs: 2}\nmodel: {name: mlp, hidden: [10]}\n")
    cfg = load_config(path, ["optim.lr=0.05"])
    assert (cfg.seed, cfg.optim.lr, cfg.optim.epochs, cfg.model["hidden"]) == (3, 0.05, 2, [10])


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("optim: {lr: 0.1\n", "not valid YAML at line"),
        ("- 1\n- 2\n", "must hold a mapping"),
        ("optim: 3\n", "config section optim must be a mapping"),
        ("\tseed: 1\n", "not valid YAML"),
    ],
)
def test_malformed_yaml(tmp_path, text, needle):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(DKError, match=needle):
        load_config(path)


def test_missing_and_binary_config_files(tmp_path):
    with pytest.raises(DKError, match="does not exist"):
        read_yaml(tmp_path / "nope.yaml")
    (tmp_path / "b.yaml").write_bytes(b"\xff\xfe\x00seed")
    with pytest.raises(DKError, match="not UTF-8"):
        read_yaml(tmp_path / "b.yaml")
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(DKError, match="empty.yaml is empty"):  # not a silent run with the defaults
        load_config(tmp_path / "empty.yaml")


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = load_config(
        None,
        [
            "seed=7",
            "optim.name=paper_dropout",
            "data.omit_classes=[3]",
            "teacher.checkpoints=[a, b]",
            "method={name: soft_targets, temperature: 20}",
            "teacher.store=null",
        ],
    )
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(cfg))
    again = load_config(path)
    assert again == cfg
    assert again.hash() == cfg.hash()
    assert dump_config(again) == dump_config(cfg)


def test_hash_ignores_only_what_may_change_on_resume():
    cfg = RunConfig()
    same = [
        dataclasses.replace(cfg, run_dir="elsewhere"),
        dataclasses.replace(cfg, progress=False),
        dataclasses.replace(cfg, stop_after_steps=5),
    ]
    assert all(c.hash() == cfg.hash() for c in same)
    assert load_config(None, ["optim.lr=0.2"]).hash() != cfg.hash()
    assert load_config(None, ["seed=1"]).hash() != cfg.hash()
    assert load_config(None, ["teacher.combine=geometric"]).hash() != cfg.hash()


def test_sections_build_from_mappings_and_reject_non_mappings():
    assert build_dataclass(OptimConfig, {"lr": 0.5}, "optim").lr == 0.5
    assert build_dataclass(DataConfig, None, "data") == DataConfig()
    with pytest.raises(DKError, match="config section teacher must be a mapping"):
        build_dataclass(TeacherConfig, [1], "teacher")


def test_apply_overrides_creates_sections():
    assert apply_overrides({}, ["optim.lr=0.3"]) == {"optim": {"lr": 0.3}}
    with pytest.raises(DKError, match="seed is not a section"):
        apply_overrides({"seed": 1}, ["seed.x=1"])


def test_exponent_floats_without_a_dot_are_numbers(tmp_path):
    assert load_config(None, ["optim.lr=1e-3"]).optim.lr == 0.001
    path = tmp_path / "c.yaml"
    path.write_text("optim: {lr: 5E-2, weight_decay: 1e-4}\n")
    cfg = load_config(path)
    assert (cfg.optim.lr, cfg.optim.weight_decay) == (0.05, 0.0001)
    assert load_config(None, ["run_dir=e5"]).run_dir == "e5"


# ---------------------------------------------------------------- the hash policy of every field

# Every config field and whether it enters the run's hash: a new field fails this test until its
# policy is decided (hashed: it changes what is computed; never: where/how a run reports or
# executes; if_not_default: added after runs were keyed, so older hashes stay valid).
HASH_POLICIES = {
    RunConfig: {
        "run_dir": "never",
        "seed": "always",
        "device": "always",
        "deterministic": "always",
        "data": "always",
        "model": "always",
        "method": "always",
        "optim": "always",
        "teacher": "always",
        "eval_every": "always",
        "select_best_on": "always",
        "checkpoint_every": "always",
        "checkpoint_every_steps": "always",
        "keep_checkpoints": "always",
        "log_every": "always",
        "progress": "never",
        "stop_after_steps": "never",
        "sync_every": "never",
        "train_step": "never",
        "threads": "never",
        "precision": "if_not_default",
        "tensorboard": "never",
        "replicas": "if_not_default",
        "ensemble": "if_not_default",
        "label_smoothing": "if_not_default",
        "generations": "if_not_default",
    },
    DataConfig: dict.fromkeys(
        [
            "dataset",
            "train_size",
            "test_size",
            "validation_size",
            "omit_classes",
            "keep_classes",
            "fraction",
            "unlabelled",
            "jitter",
        ],
        "always",
    ),
    OptimConfig: dict.fromkeys(
        [
            "name",
            "lr",
            "momentum",
            "weight_decay",
            "schedule",
            "epochs",
            "batch_size",
            "micro_batch_size",
            "lr_decay",
            "initial_momentum",
            "final_momentum",
            "momentum_epochs",
        ],
        "always",
    ),
    TeacherConfig: {
        "checkpoints": "always",
        "combine": "always",
        "outputs": "always",
        "store": "always",
        "store_dtype": "if_not_default",
        "store_topk": "if_not_default",
        "store_temperature": "if_not_default",
    },
    ReplicasConfig: {"seeds": "always", "method": "always", "optim": "if_not_default"},
    EnsembleConfig: {"members": "always"},
}


@pytest.mark.parametrize("cls", list(HASH_POLICIES), ids=lambda c: c.__name__)
def test_every_config_field_declares_whether_it_enters_the_hash(cls):
    assert {f.name: hash_policy(f) for f in dataclasses.fields(cls)} == HASH_POLICIES[cls]


@pytest.mark.parametrize(
    ("overrides", "digest"),
    [
        ([], "8e88c51fa101c18c06835601711d7524c9669ad3dee23f08dd5849ae1c8db3c0"),
        (
            ["replicas.seeds=[0,1]"],
            "c304c97f24c3aaf1493b49e8d7ae428bd97d08ad08e4edf4975e4634e97b63f7",
        ),
        (
            ["replicas.optim.lr=[0.1,0.3]"],
            "655b6e106f5f3f14e5f452ba98a91a45a8629eab4684bb2d90c87b25fd7eee43",
        ),
        (
            ["ensemble.members=3"],
            "683cc16f905a585a32611f20b4120e1cc20ec76183a92ad113a5e7fa38055c14",
        ),
        (
            ["teacher.store_dtype=float16", "teacher.store_topk=5"],
            "af6bb17ee87eb9fefc6e79072303015c8223b8fe4d1b104102c4cb553ca0391b",
        ),
        (
            ["precision=bf16", "threads=1", "run_dir=x", "tensorboard=true"],
            "eecdae81d04cf94ea5dc3a72bf23a2f9f7fd7d715fef579c1169a3171dae906e",
        ),
        (
            ["replicas.method.temperature=[1,2]", "method.name=soft_targets"],
            "0bd2f27a1907c2631683eae20312ce37bf19d2f6fcdef12929d3c9c05e564a98",
        ),
    ],
)
def test_config_hashes_stay_what_finished_runs_were_keyed_by(overrides, digest):
    # pinned when the policies moved onto the fields (2026-12-01): results.csv rows and run
    # directories are keyed by these; a change here orphans every finished run
    assert load_config(None, overrides).hash() == digest


def test_fields_that_are_never_hashed_change_no_hash():
    base = load_config(None, [])
    for key, value in (
        ("run_dir", "elsewhere"),
        ("progress", False),
        ("threads", 1),
        ("sync_every", 7),
        ("train_step", "compile"),
        ("tensorboard", True),
        ("stop_after_steps", 5),
    ):
        assert dataclasses.replace(base, **{key: value}).hash() == base.hash(), key
    assert dataclasses.replace(base, seed=1).hash() != base.hash()
