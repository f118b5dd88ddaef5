import pytest
import torch

from darkknowledge.data import cache_dir, datasets, fetch_dataset, load_fashion_mnist
from darkknowledge.data import fashion_mnist as source
from darkknowledge.errors import DKError


@pytest.fixture(scope="module")
def fashion_test():
    try:
        return load_fashion_mnist("test")
    except DKError as e:
        pytest.skip(f"Fashion-MNIST not available here: {e}")


def test_load(fashion_test):
    assert (
        fashion_test.images.shape == (10_000, 28, 28) and fashion_test.images.dtype == torch.uint8
    )
    assert fashion_test.labels.dtype == torch.int64 and fashion_test.class_counts() == [1000] * 10
    assert fashion_test.labels[:3].tolist() == [9, 2, 1]  # ankle boot, pullover, trouser
    assert fashion_test.name == "fashion_mnist/test" and fashion_test.num_classes == 10
    assert datasets.get("fashion_mnist") is load_fashion_mnist


def _fill(directory, names):
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_bytes(b"")


ALL_GZ = [f"{stem}.gz" for stems in source.FILES.values() for stem in stems]


def test_lookup_prefers_system_dir_then_cache(tmp_path, monkeypatch):
    system, cache = tmp_path / "system", tmp_path / "cache"
    monkeypatch.setattr(source, "SYSTEM_DIR", system)
    monkeypatch.setenv("DARKKNOWLEDGE_CACHE", str(cache))
    _fill(cache / "fashion_mnist", ALL_GZ)
    _fill(system, ALL_GZ[:3])  # incomplete: skipped
    assert fetch_dataset("fashion_mnist") == cache / "fashion_mnist"
    _fill(system, [ALL_GZ[3].removesuffix(".gz")])  # uncompressed files count too
    assert fetch_dataset("fashion_mnist") == system


def test_unavailable_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setattr(source, "SYSTEM_DIR", tmp_path / "nowhere")
    monkeypatch.setenv("DARKKNOWLEDGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get
    with pytest.raises(DKError, match="apt-get install dataset-fashion-mnist") as info:
        load_fashion_mnist("train")
    assert "\n" not in str(info.value) and str(cache_dir() / "fashion_mnist") in str(info.value)


def test_wrong_content_is_a_dkerror(tmp_path, monkeypatch):
    monkeypatch.setattr(source, "SYSTEM_DIR", tmp_path)
    for name in ALL_GZ:  # valid IDX files of the wrong size
        header = (
            b"\x00\x00\x08\x03\x00\x00\x00\x01\x00\x00\x00\x1c\x00\x00\x00\x1c"
            if "images" in name
            else b"\x00\x00\x08\x01\x00\x00\x00\x01"
        )
        size = 784 if "images" in name else 1
        (tmp_path / name.removesuffix(".gz")).write_bytes(header + bytes(size))
    with pytest.raises(DKError, match=r"images uint8 \(1, 28, 28\)"):
        load_fashion_mnist("test")


def test_unknown_split():
    with pytest.raises(DKError, match="'valid'"):
        load_fashion_mnist("valid")
