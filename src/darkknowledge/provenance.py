"""Which code produced a result: the git commit of the darkknowledge source, recorded with each
run.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def git_sha(root: str | Path = ".", only_here: bool = False) -> str:
    """HEAD's SHA at ``root`` (``-dirty`` when tracked files differ: anywhere in the checkout, or
    with ``only_here`` below ``root`` only). Outside a git checkout (a copy of the tree on another
    machine) ``$DARKKNOWLEDGE_GIT_SHA``, which whoever made the copy sets, else ``unknown``."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = [
            "git",
            "status",
            "--porcelain",
            "--untracked-files=no",
            *(["--", "."] if only_here else []),
        ]
        dirty = subprocess.run(
            status, cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("DARKKNOWLEDGE_GIT_SHA") or "unknown"
    return sha + ("-dirty" if dirty else "")


def source_sha() -> str:
    """The commit of the darkknowledge source that is running; ``-dirty`` only when the source
    itself differs from it (results a command writes elsewhere in the checkout do not count)."""
    return git_sha(Path(__file__).resolve().parent, only_here=True)
