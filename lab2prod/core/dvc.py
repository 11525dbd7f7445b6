"""Running DVC in a project checkout with this interpreter: the stage commands say `python -m tasks.<stage>`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml


def dvc_env() -> dict[str, str]:
    """The environment for DVC: `python` is this interpreter (its venv first on PATH), no analytics."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}


def dvc_command(*args: str) -> list[str]:
    """argv for `dvc <args>` with this interpreter's DVC."""
    return [sys.executable, "-m", "dvc", *args]


class WorkspaceSnapshot:
    """What `dvc exp run` may change in a project, kept so that a failed run can be undone: params.yaml and
    dvc.lock byte for byte, and every uncached output of dvc.yaml (metrics, plots, checkpoints: `dvc checkout`
    cannot bring those back). Cached outputs come back from DVC's cache with `dvc checkout` once dvc.lock is
    restored; and git's index (a killed `dvc exp run` leaves files staged). Kept in .dvc/tmp (git-ignored, same
    filesystem) and removed afterwards."""

    def __init__(self, project: Path) -> None:
        self.project = project.resolve()
        tmp = self.project / ".dvc" / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        self.scratch = Path(tempfile.mkdtemp(prefix="lab2prod-run-", dir=tmp))
        stages = (yaml.safe_load((self.project / "dvc.yaml").read_text()) or {}).get("stages", {})
        uncached = {"params.yaml", "dvc.lock"}
        for stage in stages.values():
            for kind in ("outs", "metrics", "plots"):
                for entry in stage.get(kind, []) or []:
                    if isinstance(entry, dict):
                        ((name, opts),) = entry.items()
                        if not (opts or {}).get("cache", True):
                            uncached.add(name)
        git_index = subprocess.run(
            ["git", "rev-parse", "--git-path", "index"], cwd=self.project, capture_output=True, text=True
        ).stdout.strip()
        self.git_index = self.project / git_index if git_index else None
        if self.git_index is not None and self.git_index.is_file():
            shutil.copy2(self.git_index, self.scratch / "git-index")
        self.kept: dict[str, bool] = {}  # relative path -> existed before
        for name in sorted(uncached):
            src, dst = self.project / name, self.scratch / name
            self.kept[name] = src.exists()
            if src.is_dir():
                shutil.copytree(src, dst, symlinks=True)
            elif src.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)

    def restore(self, missing_only: bool = False) -> int:
        """Put every kept file back as it was (deleting what did not exist), then `dvc checkout` the cached
        outputs that dvc.lock names (none when there was no dvc.lock). Returns checkout's exit code.

        `missing_only` (after a failed `dvc repro`): bring back only the kept outputs that are gone — DVC deletes
        a stage's outputs before it runs — and leave params.yaml, dvc.lock, git's index, what the stages that
        succeeded wrote and a failed training's checkpoints (the next run resumes from them) as they are."""
        if not missing_only and self.git_index is not None and (self.scratch / "git-index").is_file():
            shutil.copy2(self.scratch / "git-index", self.git_index)
        for name, existed in self.kept.items():
            target = self.project / name
            if missing_only and (not existed or target.exists() or name in ("params.yaml", "dvc.lock")):
                continue
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            if existed:
                src = self.scratch / name
                if src.is_dir():
                    shutil.copytree(src, target, symlinks=True)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, target)
        if not self.kept["dvc.lock"]:
            return 0  # nothing was run before: no output to bring back
        return subprocess.call(
            dvc_command("checkout", "--force", "--quiet"), cwd=self.project, env=dvc_env(), stdout=subprocess.DEVNULL
        )

    def discard(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)
