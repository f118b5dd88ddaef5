"""Shared fixtures for run-level tests: an isolated cache, tiny configs, teacher model files.

``isolated_cache`` and ``memoized_data`` are switched on per folder by that folder's
conftest (train, teachers, cli, reliability, reproduce).
"""

from __future__ import annotations

import importlib
import os
import pickle
from pathlib import Path

import pytest
import torch

from darkknowledge.config import load_config
from darkknowledge.data import fetch_dataset
from darkknowledge.models import build_model, save_model
from darkknowledge.train.batches import IndexedBatches

# Runs (and the dk processes tests start) use one CPU thread whatever else keeps the machine busy
# (threads=auto would adapt to the load, and warn: the suite must not depend on it). A slow run on
# an idle machine may set DARKKNOWLEDGE_THREADS=2 itself.
os.environ.setdefault("DARKKNOWLEDGE_THREADS", "1")

# A run that takes about a second on one CPU core: 300 images, 2 epochs of 6 steps.
TINY = [
    "model.hidden=[32]",
    "data.train_size=300",
    "data.test_size=100",
    "optim.epochs=2",
    "optim.batch_size=50",
    "progress=false",
]
_PREPARED: dict[str, object] = {}


@pytest.fixture(scope="session")
def mnist_dir():
    return fetch_dataset("mnist")  # the user's cache (fetched once if missing)


@pytest.fixture
def isolated_cache(tmp_path_factory, monkeypatch, mnist_dir):
    """A private cache (teacher-output stores land here) that shares the MNIST files."""
    root = tmp_path_factory.mktemp("cache")
    (root / "mnist").symlink_to(mnist_dir, target_is_directory=True)
    monkeypatch.setenv("DARKKNOWLEDGE_CACHE", str(root))
    return root


@pytest.fixture
def memoized_data(monkeypatch):
    """prepare_data is pure; reuse its result across tests to keep the suite fast."""
    run_module = importlib.import_module("darkknowledge.train.run")  # the attribute is the function
    real = run_module.prepare_data

    def prepare(cfg):
        key = repr(cfg)
        if key not in _PREPARED:
            _PREPARED[key] = real(cfg)
        return _PREPARED[key]

    monkeypatch.setattr(run_module, "prepare_data", prepare)


@pytest.fixture
def tiny_args():
    """The tiny run's overrides, for CLI calls."""
    return list(TINY)


@pytest.fixture
def make_cfg(tmp_path):
    """``make_cfg("optim.lr=0.2", name="a")``: a tiny validated RunConfig in tmp_path/name."""

    def make(*overrides, name="run", run_dir=None):
        return load_config(None, [*TINY, *overrides, f"run_dir={run_dir or tmp_path / name}"])

    return make


@pytest.fixture
def teacher_file(tmp_path):
    """``teacher_file("t.safetensors", hidden=[16], num_classes=10)``: an untrained model file."""

    def make(name="teacher.safetensors", hidden=(16,), num_classes=10, in_features=784, seed=0):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = build_model("mlp", {"hidden": list(hidden)}, in_features, num_classes)
        return save_model(model, tmp_path / name)

    return make


# ---------------------------------------------------------------- failure injection


class _Payload:
    """Unpickling this runs ``touch marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def canary_payload(tmp_path):
    """(an object whose unpickling creates ``marker``, marker). The payload is checked to be
    live.
    """
    live = tmp_path / "live-check"
    pickle.loads(pickle.dumps(_Payload(live)))
    assert live.exists(), "the canary payload does not fire; a test using it would prove nothing"
    marker = tmp_path / "PWNED"
    return _Payload(marker), marker


@pytest.fixture
def canary(canary_payload):
    """(pickle bytes whose loading creates ``marker``, marker): for malicious-file tests."""
    payload, marker = canary_payload
    return pickle.dumps({"tensors": payload}), marker


@pytest.fixture
def snapshot():
    """``snapshot(root)``: every file's bytes below ``root`` (to prove nothing was rewritten)."""
    return lambda root: {p: p.read_bytes() for p in Path(root).rglob("*") if p.is_file()}


@pytest.fixture
def inject_nan(monkeypatch):
    """``inject_nan(at_call)``: the ``at_call``-th batch drawn gets a NaN pixel in its first
    example.
    """

    def inject(at_call):
        real = IndexedBatches.batch
        calls = []

        def batch(self, order, step):
            pos, x, y = real(self, order, step)
            calls.append(step)
            if len(calls) == at_call:
                x = x.clone()
                x[0, 100] = float("nan")
            return pos, x, y

        monkeypatch.setattr(IndexedBatches, "batch", batch)

    return inject
