"""Which code produced a result: the git commit of the darkknowledge source, recorded with each run."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def git_sha(root: str | Path = ".") -> str:
    """HEAD's SHA at ``root`` (``-dirty`` when tracked files differ). Outside a git checkout (a copy
    of the tree on another machine) ``$DARKKNOWLEDGE_GIT_SHA``, which whoever made the copy sets,
    else ``unknown``."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("DARKKNOWLEDGE_GIT_SHA") or "unknown"
    return sha + ("-dirty" if dirty else "")


def source_sha() -> str:
    """The commit of the darkknowledge source that is running."""
    return git_sha(Path(__file__).resolve().parent)
