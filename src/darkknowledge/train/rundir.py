"""Who may write a run directory: only darkknowledge, and only one process at a time.

A run directory is written only if it is new, empty, or already a darkknowledge run: it holds the
marker file ``.darkknowledge-run`` (written first, before anything else of the run), or it is a
run written before the marker existed (an intact-looking checkpoint or a ``summary.json`` with a
config hash). Anything else (a user's own ``config.yaml``, the current directory) is refused
before a byte is written.

The marker is also the run's lock: the process that writes the run holds an exclusive
``flock`` on it for the run's life and records itself in it (pid, host, start time). The lock
goes with the process however it ends (a crash or ``kill -9`` included: the kernel releases it),
so a stale lock never blocks a later run; a second writer is refused naming the holder.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from darkknowledge.errors import DKError

try:
    import fcntl
except ImportError:  # not POSIX: ownership is still checked, the one-writer lock is not available
    fcntl = None  # type: ignore[assignment]

MARKER = ".darkknowledge-run"


def check_owned(run_dir: Path) -> None:
    """Refuse ``run_dir`` unless it is missing, empty or a darkknowledge run (reads only)."""
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise DKError(f"run_dir {run_dir} is a file, not a directory", "choose a new run_dir")
    if (run_dir / MARKER).is_file():
        return
    entries = sorted(p.name for p in run_dir.iterdir())
    if not entries or _written_before_the_marker(run_dir):
        return
    shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
    raise DKError(
        f"run directory {run_dir} holds files that are not a darkknowledge run ({shown})",
        "choose a new or empty run_dir: darkknowledge writes only into directories it created",
    )


def _written_before_the_marker(run_dir: Path) -> bool:
    ckpts = run_dir / "checkpoints"
    if ckpts.is_dir() and any(
        p.name.startswith("step-") and (p / "manifest.json").is_file() for p in ckpts.iterdir()
    ):
        return True
    try:
        summary = json.loads((run_dir / "summary.json").read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and isinstance(summary.get("config_hash"), str)


@contextlib.contextmanager
def hold(run_dir: Path) -> Iterator[None]:
    """Mark ``run_dir`` (an existing directory) as a darkknowledge run and hold its one-writer
    lock until the block ends; a :class:`DKError` naming the holder if another process has it."""
    fd = os.open(run_dir / MARKER, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DKError(
                    f"run directory {run_dir} is being written by another process ({_holder(fd)})",
                    "wait for it to finish, or choose another run_dir",
                ) from None
        since = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
    """Who holds the lock, as its marker says (bounded and printable: the file could be edited)."""
    text = os.pread(fd, 200, 0).decode("utf-8", errors="replace").strip()
    text = "".join(c if c.isprintable() else "?" for c in text)[:120]
    return text or "holder unknown"
