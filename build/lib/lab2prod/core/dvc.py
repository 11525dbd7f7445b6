"""Running DVC in a project checkout with this interpreter: the stage commands say `python -m tasks.<stage>`."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def dvc_env() -> dict[str, str]:
    """The environment for DVC: `python` is this interpreter (its venv first on PATH), no analytics."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}


def dvc_command(*args: str) -> list[str]:
    """argv for `dvc <args>` with this interpreter's DVC."""
    return [sys.executable, "-m", "dvc", *args]
