"""No foreign code: nothing we write is pickle, and every load path refuses a malicious pickle
without running it (canary tests: the payload would create a marker file)."""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

import pytest
import torch

import darkknowledge
from darkknowledge.cli import main
from darkknowledge.errors import DKError
from darkknowledge.models import load_model
from darkknowledge.teachers import Teacher, default_store_path, teacher_outputs
from darkknowledge.train.checkpoint import list_checkpoints

SRC = Path(darkknowledge.__file__).parent
ARGS = [
    "model.hidden=[32]",
    "data.train_size=300",
    "data.test_size=100",
    "optim.epochs=1",
    "optim.batch_size=50",
    "progress=false",
]


# ---------------------------------------------------------------- static check of the sources


def _dotted(node):
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _kw(call, name):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _unsafe_calls(tree):
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name in {
            "pickle.dump",
            "pickle.dumps",
            "pickle.load",
            "pickle.loads",
            "pickle.Unpickler",
            "torch.save",
            "marshal.loads",
            "marshal.load",
            "shelve.open",
            "yaml.unsafe_load",
            "yaml.full_load",
            "eval",
            "exec",
            "__import__",
            "importlib.import_module",
            "dill.load",
            "dill.loads",
            "joblib.load",
        }:
            yield node.lineno, name
        elif name == "torch.load":
            weights_only = _kw(node, "weights_only")
            if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                yield node.lineno, "torch.load without weights_only=True"
        elif name == "yaml.load":
            loader = _dotted(_kw(node, "Loader")) if _kw(node, "Loader") is not None else ""
            if loader not in {"_DataLoader", "yaml.SafeLoader", "yaml.CSafeLoader"}:
                yield node.lineno, f"yaml.load with Loader={loader or 'default'}"
        elif name in {"numpy.load", "np.load"}:
            allow = _kw(node, "allow_pickle")
            if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                yield node.lineno, "np.load with allow_pickle"


def test_sources_neither_write_pickle_nor_load_it_unrestricted():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for line, what in _unsafe_calls(ast.parse(path.read_text(), str(path))):
            found.append(f"{path.relative_to(SRC)}:{line}: {what}")
    assert found == []


def test_the_only_unpickler_is_the_restricted_mnist_one():
    """data/mnist.py reads the pinned MNIST pickle with an Unpickler whose find_class allows numpy
    arrays only (tests/data/test_data_mnist.py::test_restricted_unpickler_refuses_other_globals)."""
    subclasses = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                _dotted(b).endswith("Unpickler") for b in node.bases
            ):
                methods = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
                subclasses.append((str(path.relative_to(SRC)), node.name, "find_class" in methods))
    assert subclasses == [("data/mnist.py", "_ArrayUnpickler", True)]


def test_the_scanner_catches_what_it_should():
    bad = (
        "import torch, pickle, yaml\ntorch.load(f)\ntorch.load(f, "
        "weights_only=False)\npickle.loads(b)\nyaml.load(t)\neval('1')\n"
    )
    assert len(list(_unsafe_calls(ast.parse(bad)))) == 5
    good = (
        "torch.load(f, weights_only=True)\nyaml.safe_load(t)\nmodel.eval()\nyaml.load(t, "
        "Loader=_DataLoader)\n"
    )
    assert list(_unsafe_calls(ast.parse(good))) == []


# ---------------------------------------------------------------- canaries


def test_model_file_that_is_a_pickle(tmp_path, canary, capsys):
    payload, marker = canary
    path = tmp_path / "model.safetensors"
    path.write_bytes(payload)
    with pytest.raises(DKError, match="is corrupt or not a darkknowledge model file"):
        load_model(path)
    assert main(["eval", str(path)]) == 2
    assert main(["distill", "--run-dir", str(tmp_path / "s"), "--teacher", str(path), *ARGS]) == 2
    assert capsys.readouterr().err.count("dk: error:") == 2
    assert not marker.exists()


def test_model_file_written_by_torch_save(tmp_path, canary_payload):
    payload, marker = canary_payload
    path = tmp_path / "model.safetensors"
    torch.save({"layers.0.weight": torch.zeros(2), "evil": payload}, path)
    with pytest.raises(DKError, match="is corrupt or not a darkknowledge model file"):
        load_model(path)
    assert main(["eval", str(path)]) == 2
    assert not marker.exists()


@pytest.mark.parametrize(
    "victim", ["model.safetensors", "state.safetensors", "state.json", "manifest.json"]
)
def test_checkpoint_files_replaced_by_pickles(tmp_path, canary, capsys, victim):
    payload, marker = canary
    run_dir = tmp_path / "r"
    assert main(["train", "--run-dir", str(run_dir), *ARGS, "stop_after_steps=3"]) == 143
    (ckpt,) = list_checkpoints(run_dir / "checkpoints")
    (ckpt / victim).write_bytes(payload)
    # the attacker also fixes the manifest, so only the format check is left
    if victim != "manifest.json":
        manifest = json.loads((ckpt / "manifest.json").read_text())
        manifest[victim] = hashlib.sha256(payload).hexdigest()
        (ckpt / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(["train", "--run-dir", str(run_dir), *ARGS, "--resume", str(ckpt)]) == 2
    assert f"checkpoint {ckpt}" in capsys.readouterr().err
    # skipped, none left
    assert main(["train", "--run-dir", str(run_dir), *ARGS, "--resume", "auto"]) == 2
    assert not marker.exists()


def test_teacher_output_store_that_is_a_pickle(tmp_path, canary, teacher_file):
    payload, marker = canary
    from darkknowledge.data import TensorDataset

    teacher = Teacher.from_checkpoints([teacher_file()])
    data = TensorDataset(
        torch.zeros(4, 28, 28, dtype=torch.uint8), torch.arange(4), torch.arange(4), 10, "toy/train"
    )
    explicit = tmp_path / "store.safetensors"
    explicit.write_bytes(payload)
    with pytest.raises(DKError, match="is a file that is not a teacher-output store"):
        teacher_outputs(teacher, data, explicit)
    default = default_store_path(teacher, data)
    default.parent.mkdir(parents=True, exist_ok=True)
    default.write_bytes(payload)
    with pytest.warns(UserWarning, match="rebuilding teacher-output store"):
        teacher_outputs(teacher, data)
    assert not marker.exists()
    assert (
        default / "manifest.json"
    ).is_file()  # replaced by a real store (a directory since format 3)


@pytest.mark.parametrize(
    "tag",
    [
        "!!python/object/apply:os.system ['touch {m}']",
        "!!python/object/new:os.system ['touch {m}']",
        "!!python/name:os.system",
        "{{a: !!python/object/apply:subprocess.call [['touch', '{m}']]}}",
    ],
)
def test_config_with_python_tags(tmp_path, capsys, tag):
    marker = tmp_path / "PWNED"
    (tmp_path / "c.yaml").write_text("seed: " + tag.format(m=marker) + "\n")
    assert main(["train", "-c", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "r")]) == 2
    assert main(["train", "--run-dir", str(tmp_path / "r"), "seed=" + tag.format(m=marker)]) == 2
    err = capsys.readouterr().err
    assert (
        err.count("dk: error:") == 2
        and err.count("uses the YAML tag tag:yaml.org,2002:python/") == 2
    )
    assert not marker.exists() and not (tmp_path / "r").exists()


def test_run_outputs_are_safetensors_and_json(tmp_path):
    from safetensors.torch import load as st_load

    run_dir = tmp_path / "r"
    assert main(["train", "--run-dir", str(run_dir), *ARGS]) == 0
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    for path in files:
        raw = path.read_bytes()
        if path.suffix == ".safetensors":
            st_load(raw)
        elif path.suffix == ".jsonl":
            [json.loads(line) for line in raw.decode().splitlines()]
        elif path.suffix == ".json":
            json.loads(raw)
        elif path.name == ".darkknowledge-run":  # the marker and lock: one line of text
            assert raw.decode().startswith("pid ") and raw.count(b"\n") == 1
        else:
            assert path.name == "config.yaml", path
    assert {p.suffix for p in files if p.name != ".darkknowledge-run"} == {
        ".safetensors",
        ".json",
        ".jsonl",
        ".yaml",
    }
