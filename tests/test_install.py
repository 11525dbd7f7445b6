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


def test_serve_extra_serves_a_text_model_and_takes_text_feedback(
    serve_venv: Path, text_run: dict, tmp_path: Path
) -> None:
    """The text model of the main install's tiny run (conftest `text_run`), served where torch is absent: JSON
    texts answered with the classes the full install predicts, a text correction stored, the texts' token
    statistics logged for the drift monitor."""
    import json

    from lab2prod.data.text import read_texts
    from lab2prod.serve.predict import Classifier
    from tests.conftest import serving

    texts, _ = read_texts(text_run["ws"].prepared, "test")
    sets = {"log_dir": tmp_path / "logs", "feedback_dir": tmp_path / "inbox"}
    with serving(text_run["onnx"], tmp_path, sets, python=str(serve_venv)) as client:
        answer = client.post("/predict", json={"texts": texts[:6]})
        feedback = client.post("/feedback", json={"text": "Run the event loop until stopped.", "label": "asyncio"})
        info = client.get("/model").json()
    assert answer.status_code == 200, answer.text
    model = Classifier.load(str(text_run["onnx"]))
    expected = [model.classes[k] for k in model.predict(texts[:6]).argmax(1)]
    assert [p["top"][0]["class"] for p in answer.json()["predictions"]] == expected
    assert info["modality"] == "text"
    assert feedback.status_code == 201, feedback.text
    assert Path(feedback.json()["path"]).read_text() == "Run the event loop until stopped."
    rows = [json.loads(line) for f in (tmp_path / "logs").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert sorted(r["tokens"] for r in rows) == sorted(len(i) for i in model.encoder.ids(texts[:6]))
