"""Where an artifact came from: the code version it was made with."""

from __future__ import annotations

import subprocess


def git_commit() -> str:
    """The code version: HEAD's commit, suffixed `-dirty` when tracked files differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head
