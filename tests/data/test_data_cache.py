import os
from pathlib import Path

import pytest

from darkknowledge.data import atomic_write_bytes, cache_dir


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("DARKKNOWLEDGE_CACHE", str(tmp_path / "dk"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "dk"
    monkeypatch.delenv("DARKKNOWLEDGE_CACHE")
    assert cache_dir() == tmp_path / "xdg" / "darkknowledge"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # invalid per the XDG spec: ignored
    assert cache_dir() == Path.home() / ".cache" / "darkknowledge"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "darkknowledge"


def test_atomic_write_creates_and_replaces(tmp_path):
    path = tmp_path / "a" / "b" / "file.bin"
    atomic_write_bytes(path, b"one")
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    assert os.listdir(path.parent) == ["file.bin"]  # no temporary files left behind
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "file.bin"
    atomic_write_bytes(path, b"old")

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["file.bin"]
