"""Graceful stop on SIGTERM/SIGINT: the loop finishes its step, checkpoints, exits 128 + signum.

``train.run`` installs the handlers for the whole run, so a signal that arrives while the data
or the teacher outputs are being prepared also stops the run cleanly (before its first step). A
second SIGINT while a graceful stop is pending raises ``KeyboardInterrupt`` at once (the usual
"press Ctrl-C twice" escape); the last checkpoint written is then still intact.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class StopRequest:
    """Set by the signal handler (or :meth:`request`), read by the loop after each step."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def handler(self, signum: int, frame: object) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def request(self, signum: int = signal.SIGTERM) -> None:
        """Ask for a graceful stop as if ``signum`` had arrived (``stop_after_steps`` uses this)."""
        if self.signum is None:
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
        saved = (
            f"checkpoint saved at {checkpoint}"
            if checkpoint
            else "no step was taken, nothing to save"
        )
        super().__init__(f"stopped by {name}; {saved}; continue with --resume auto")


@contextmanager
def stop_on_signals(
    signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT),
) -> Iterator[StopRequest]:
    """Record SIGTERM/SIGINT in a :class:`StopRequest` inside the block (main thread only)."""
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
