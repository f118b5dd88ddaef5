"""How many CPU threads a run's PyTorch operators use (``threads`` in a run config).

PyTorch starts one OpenMP thread per core. When another process is already busy on those
cores, both processes' threads spin and wait for each other: on the 2-core machine, a teacher
run alongside another 2-thread run trained at 273 samples/s instead of about 8,000, and with
one thread at 2,000-2,900 (``benchmarks/run.py --only contention`` measures it). ``threads:
auto`` (the default) therefore measures how busy the cores are just before a CPU run starts and
uses only the idle ones (at least one), saying so in a warning; an integer sets the count as given.
It changes how fast a run goes, never what it computes beyond float rounding, so it is not part
of the config hash.
"""

from __future__ import annotations

import os
import time
import warnings

import torch

from darkknowledge.errors import DKError

_DEFAULT: int | None = None  # PyTorch's own thread count, before any run changed it
_MEASURED: tuple[float, float | None] | None = None  # (when, busy cores): reused for 30 s


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of all cores from /proc/stat; None where there is no /proc."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(window: float = 0.05) -> float | None:
    """How many cores other processes keep busy, measured over ``window`` seconds (this process
    sleeps meanwhile); None where it cannot be measured (no /proc)."""
    a = _cpu_times()
    if a is None:
        return None
    time.sleep(window)
    b = _cpu_times()
    if b is None or b[1] <= a[1]:
        return None
    return (b[0] - a[0]) / (b[1] - a[1]) * (os.cpu_count() or 1)


def choose_threads(setting: int | str, busy: float | None, default: int) -> int:
    """The thread count for ``setting`` (an integer, or ``auto``): with ``auto``, PyTorch's
    default minus the cores other processes keep busy (rounded), and never fewer than one."""
    if setting != "auto":
        return int(setting)
    if busy is None:
        return default
    cores = os.cpu_count() or default
    idle = cores - round(busy)
    return max(1, min(default, idle))


def apply_threads(setting: int | str, device: torch.device) -> int:
    """Set the CPU thread count for a run on ``device`` (CUDA runs keep PyTorch's); returns it.

    ``DARKKNOWLEDGE_THREADS`` (a count) replaces ``auto`` for every run of a process tree: the
    test suite sets it to 1 so that its runs do not depend on how busy the machine is.
    """
    global _DEFAULT
    env = os.environ.get("DARKKNOWLEDGE_THREADS", "").strip()
    if setting == "auto" and env:
        if not env.isdigit() or int(env) < 1:
            raise DKError(
                f"DARKKNOWLEDGE_THREADS={env!r} is not a thread count",
                "set it to a positive integer, or unset it for threads=auto",
            )
        setting = int(env)
    if _DEFAULT is None:
        _DEFAULT = torch.get_num_threads()
    if device.type != "cpu":
        return torch.get_num_threads()
    global _MEASURED
    busy = None
    if setting == "auto":  # measured at most every 30 s (a test suite starts many runs)
        if _MEASURED is None or time.monotonic() - _MEASURED[0] > 30:
            _MEASURED = (time.monotonic(), busy_cores())
        busy = _MEASURED[1]
    n = choose_threads(setting, busy, _DEFAULT)
    if setting == "auto" and n < _DEFAULT:
        warnings.warn(
            f"other processes keep about {busy:.1f} of {os.cpu_count()} cores busy; training with "
            f"{n} thread(s) instead of {_DEFAULT} "
            "(threads=auto: a run whose OpenMP threads contend with another process's can be "
            f"10-30x slower; threads={_DEFAULT} overrides)",
            stacklevel=2,
        )
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
