"""User-facing errors.

Every problem a user can fix (bad config, bad data, wrong checkpoint) is raised as a
:class:`DKError` whose message is one line: what is wrong, the values involved, and the fix.
The CLI prints it without a traceback and exits with code 2.
"""

from __future__ import annotations


class DKError(ValueError):
    """A problem in the user's input, with a one-line message that names the fix."""

    exit_code = 2

    def __init__(self, what: str, fix: str | None = None) -> None:
        message = what if fix is None else f"{what}; {fix}"
        super().__init__(" ".join(message.split()))


class NonFiniteLossError(RuntimeError):
    """A loss component became NaN or Inf during training (the run stops, nothing is saved)."""

    exit_code = 3
