"""The serving install: pyproject's base dependencies and its `serve` extra, at the locked versions, and
nothing else. Prediction and the server work there, and torch cannot even be imported."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import ROOT, digit_png

pytestmark = pytest.mark.slow


def serve_requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["dependencies"] + project["optional-dependencies"]["serve"]


@pytest.fixture(scope="module")
def serve_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("serve-venv")
    constraints = where / "constraints.txt"  # the lock's versions, without its hashes
    lock = (ROOT / "requirements.lock").read_text().replace(" \\\n", "\n")
    constraints.write_text("\n".join(line for line in lock.splitlines() if not line.strip().startswith("--hash")))
    subprocess.run([sys.executable, "-m", "venv", str(where / "venv")], check=True)
    pip = [str(where / "venv/bin/python"), "-m", "pip", "--disable-pip-version-check", "install", "--quiet"]
    proc = subprocess.run([*pip, "-c", str(constraints), *serve_requirements()], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return where / "venv/bin/python"


def run(python: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin"}
    return subprocess.run([str(python), *args], capture_output=True, text=True, cwd=ROOT, env=env)


def test_serve_extra_has_no_torch_and_serves(serve_venv: Path) -> None:
    assert run(serve_venv, "-c", "import torch").returncode != 0, "torch is installed in the serving venv"
    proc = run(serve_venv, "-c", "import lab2prod.serve.app, lab2prod.monitor.check, lab2prod.registry.promotion")
    assert proc.returncode == 0, proc.stderr
    proc = run(serve_venv, "-m", "lab2prod.cli.main", "serve", "--help")
    assert proc.returncode == 0 and "--port" in proc.stdout, proc.stderr


def test_serve_extra_predicts_like_the_full_install(serve_venv: Path, tiny_run: dict, tmp_path: Path) -> None:
    images = []
    for i in (0, 1, 2, 3):
        digit_png(i).save(tmp_path / f"{i}.png")
        images.append(str(tmp_path / f"{i}.png"))
    args = ["-m", "lab2prod.cli.main", "predict", *images, "--model", str(tiny_run["onnx"]), "--csv"]
    light = run(serve_venv, *args, str(tmp_path / "light.csv"))
    assert light.returncode == 0, light.stderr
    full = run(Path(sys.executable), *args, str(tmp_path / "full.csv"))
    assert full.returncode == 0, full.stderr
    assert (tmp_path / "light.csv").read_text() == (tmp_path / "full.csv").read_text()
