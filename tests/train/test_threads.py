"""threads: a CPU run uses the cores other processes leave idle (auto), or the count given."""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import pytest
import torch

from darkknowledge.config import RunConfig
from darkknowledge.errors import DKError
from darkknowledge.train import threads as th


@pytest.mark.parametrize(
    ("setting", "busy", "default", "expected"),
    [
        ("auto", 0.0, 2, 2),  # an idle machine: PyTorch's default
        ("auto", None, 2, 2),  # not measurable (no /proc): PyTorch's default
        ("auto", 1e6, 2, 1),  # every core busy: one thread, never zero
        (3, 0.0, 2, 3),  # a count is taken as given
    ],
)
def test_choose_threads(setting, busy, default, expected):
    assert th.choose_threads(setting, busy, default) == expected


def test_auto_leaves_the_busy_cores_alone():
    cores = os.cpu_count() or 1
    assert th.choose_threads("auto", cores - 1.2, cores) == 1
    assert th.choose_threads("auto", 0.2, cores) == cores


@pytest.mark.parametrize("bad", [0, -1, "many", 1.5, True])
def test_a_bad_thread_count_is_refused(bad):
    with pytest.raises(DKError, match="threads="):
        RunConfig(threads=bad)


def test_threads_are_not_part_of_what_a_run_computes():
    assert RunConfig(threads=1).hash() == RunConfig().hash()


def test_the_environment_replaces_auto(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("DARKKNOWLEDGE_THREADS", "1")
        assert th.apply_threads("auto", torch.device("cpu")) == 1
        monkeypatch.setenv("DARKKNOWLEDGE_THREADS", "lots")
        with pytest.raises(DKError, match="DARKKNOWLEDGE_THREADS"):
            th.apply_threads("auto", torch.device("cpu"))
    finally:
        torch.set_num_threads(before)


def test_a_given_count_is_applied_on_cpu():
    before = torch.get_num_threads()
    try:
        assert th.apply_threads(1, torch.device("cpu")) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


@pytest.mark.skipif(
    not os.path.exists("/proc/stat"), reason="busy cores are read from /proc/stat (Linux)"
)
def test_busy_cores_sees_other_processes():
    cores = os.cpu_count() or 1
    procs = [mp.get_context("spawn").Process(target=_spin, args=(3.0,)) for _ in range(cores)]
    for p in procs:
        p.start()
    try:
        time.sleep(0.8)  # the spinners are up
        busy = th.busy_cores(0.5)
    finally:
        for p in procs:
            p.terminate()
            p.join()
    assert busy is not None and busy >= cores - 0.5  # one spinner per core: every core busy
    assert th.choose_threads("auto", busy, cores) == 1
