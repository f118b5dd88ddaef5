"""User-facing errors.

Every problem a user can fix (bad config, bad data, wrong checkpoint, a full or read-only disk)
is raised as a :class:`DKError` whose message is one line: what is wrong, the values involved,
and the fix. The CLI prints it without a traceback and exits with code 2.

Exit codes of ``dk``: 0 done; 2 a :class:`DKError` (bad input, found before training where it
can be); 3 :class:`NonFiniteLossError` (training diverged; the last good checkpoint is kept);
128 + signum when stopped by SIGTERM (143) or SIGINT (130) after saving a checkpoint.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class DKError(ValueError):
    """A problem in the user's input, with a one-line message that names the fix."""

    exit_code = 2

    def __init__(self, what: str, fix: str | None = None) -> None:
        message = what if fix is None else f"{what}; {fix}"
        super().__init__(" ".join(message.split()))


def short(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: messages never echo an unbounded value (a
    forged file or an expanded YAML alias could be megabytes)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 20]}... ({len(text):,} characters)"


class NonFiniteLossError(RuntimeError):
    """A loss component became NaN or Inf during training (the run stops, nothing is saved).
    ``replica``: in a batched run (``replicas``), the first replica that diverged."""

    exit_code = 3

    def __init__(self, message: str, replica: int | None = None) -> None:
        super().__init__(message)
        self.replica = replica


_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NOT_ALLOWED = {errno.EACCES, errno.EPERM, errno.EROFS}


def write_error(exc: OSError, what: str | Path, fix: str = "choose another run_dir") -> DKError:
    """The one-line :class:`DKError` for an ``OSError`` raised while writing ``what``."""
    if exc.errno in _DISK_FULL:
        return DKError(f"disk full writing {what}", f"free space or {fix}")
    reason = exc.strerror or exc.__class__.__name__
    if exc.errno in _NOT_ALLOWED:
        return DKError(f"cannot write {what}: {reason}", f"make it writable or {fix}")
    return DKError(f"cannot write {what}: {reason}", fix)


@contextmanager
def writing(what: str | Path, fix: str = "choose another run_dir") -> Iterator[None]:
    """Turn an ``OSError`` raised in the block into :func:`write_error`'s :class:`DKError`."""
    try:
        yield
    except OSError as exc:
        raise write_error(exc, what, fix) from None
