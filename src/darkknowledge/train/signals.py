"""Graceful stop on SIGTERM/SIGINT: the loop finishes its step, checkpoints, exits 128 + signum."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class StopRequest:
    """Set by the signal handler, read by the loop after each step."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def handler(self, signum: int, frame: object) -> None:
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None


class Interrupted(Exception):
    """The run stopped on a signal after saving a checkpoint; exit code 128 + signum."""

    def __init__(self, signum: int, checkpoint: str | None) -> None:
        self.signum = signum
        self.checkpoint = checkpoint
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name}; checkpoint saved at {checkpoint}; continue with --resume auto")


@contextmanager
def stop_on_signals(signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[StopRequest]:
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request  # handlers can only be installed from the main thread
        return
    old = {s: signal.signal(s, request.handler) for s in signals}
    try:
        yield request
    finally:
        for s, h in old.items():
            signal.signal(s, h)
