"""A throwaway copy of this project in a fresh git + DVC repo, and a way to run commands in it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from lab2prod.core.settings import validate_params
from tests.conftest import ROOT, TINY

PROJECT_FILES = [
    "lab2prod",
    "tasks",
    "models",
    "flows",
    "dvc.yaml",
    "params.yaml",
    "prefect.yaml",
    ".dvc/config",
    ".dvcignore",
    ".gitignore",
]


def project_env(repo: Path, **extra: str) -> dict[str, str]:
    """This venv first on PATH (stage commands say `python`), the sandbox importable, no analytics."""
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "PYTHONPATH": str(repo),
        **extra,
    }


def sh(
    repo: Path, *cmd: str, check: bool = True, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=repo, env=env or project_env(repo), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def write_params(repo: Path, overrides: dict) -> None:
    """Tiny settings plus `overrides`, every key written out (DVC tracks keys, not defaults)."""
    raw = {section: {**TINY[section], **overrides.get(section, {})} for section in TINY}
    full = validate_params(raw).model_dump(mode="json")
    (repo / "params.yaml").write_text(yaml.safe_dump(full, sort_keys=False))


def commit(repo: Path, message: str) -> None:
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", message)


def make_project(where: Path) -> Path:
    """Copy the pipeline's code and config into `where`, tiny params, git init and first commit."""
    for name in PROJECT_FILES:
        src, dst = ROOT / name, where / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    write_params(where, {})
    sh(where, "git", "init", "-q")
    commit(where, "init")
    return where


def up_to_date(repo: Path) -> bool:
    """`dvc status` names nothing but the sources stage, which runs every time (dvc.yaml: always_changed)."""
    return json.loads(sh(repo, "dvc", "status", "--json").stdout) == {"sources": ["always changed"]}


def stages_run(output: str) -> set[str]:
    """Names of the stages DVC says it ran, from its output."""
    return {line.split("'")[1] for line in output.splitlines() if "Running stage '" in line}
