"""The real pipeline: `dvc repro` in a temporary git repo, tiny settings, every stage for real."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.conftest import FP32_ONLY, LEAN_RUN
from tests.sandbox import commit, make_project, project_env, sh, stages_run, up_to_date, write_params

pytestmark = pytest.mark.slow


# These tests are about DVC's semantics: the DAG with no compressed variant (tests/conftest.py: FP32_ONLY).
LEAN = FP32_ONLY
# Long enough that a kill one second after the first checkpoint lands mid-training (an epoch of the tiny net on
# digits takes about 0.3 s alone on this machine, and the test checks that training had not finished).
EPOCHS = 16


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = make_project(tmp_path / "project")
    write_params(repo, LEAN_RUN)  # lean_repo's settings (the feedback inbox on, as by default)
    commit(repo, "lean compression")
    return repo


def test_repro_end_to_end_then_nothing_then_only_what_changed(lean_run: Path, lean_repo: Path) -> None:
    # the first `dvc repro` of a new project is lean_run's (tests/conftest.py), in a copy of which this test goes on
    repo, first = lean_repo, (lean_run / "repro.out").read_text()
    assert stages_run(first) == {"sources", "ingest", "augment", "train", "evaluate", "compress", "export"}
    for out in (
        "data/prepared/meta.json",
        "data/prepared/train/index.csv",
        "data/augmented/policy.json",
        "artifacts/train/model.pt",
        "metrics/evaluate.json",
        "plots/confusion_matrix.png",
        "artifacts/export/model.onnx",
    ):
        assert (repo / out).stat().st_size > 0, out
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"sources", "ingest", "augment", "train", "evaluate", "compress", "export"}

    again = sh(repo, "dvc", "repro")
    assert stages_run(again.stdout) == {"sources"} and up_to_date(repo)  # the sources are listed, nothing else

    commit(repo, "baseline run")
    before = json.loads((repo / "metrics/evaluate.json").read_text())
    exp = sh(repo, "dvc", "exp", "run", "-S", "train.epochs=4", "-S", "train.width=12")
    assert stages_run(exp.stdout) == {"sources", "train", "evaluate", "compress", "export"}  # not ingest, augment
    diff = json.loads(sh(repo, "dvc", "metrics", "diff", "--all", "--json").stdout)
    after = json.loads((repo / "metrics/evaluate.json").read_text())
    # DVC's tables show the one summary file: its test accuracy is evaluate's, its change the experiment's
    assert list(diff) == ["metrics/summary.json"], diff
    assert diff["metrics/summary.json"]["test_acc"]["new"] == after["accuracy"]
    assert diff["metrics/summary.json"]["test_acc"]["old"] == before["accuracy"]
    assert after["lineage"]["params_hash"] != before["lineage"]["params_hash"]
    shown = json.loads(sh(repo, "dvc", "exp", "show", "--json").stdout)
    assert "train.epochs" in json.dumps(shown) or '"epochs": 4' in json.dumps(shown)
    drawn = json.loads(sh(repo, "dvc", "plots", "show", "--json").stdout)["data"]
    assert '"actual"' in json.dumps(drawn["Confusion matrix (test split)"])  # drawn from predictions.csv

    # A failed experiment leaves the workspace as it found it: params.yaml byte for byte, every output in place
    before_files = workspace_files(repo)
    for setting, why in (("ingest.source=/nonexistent/dir", "not a directory"), ("train.precision=abc", "precision")):
        failed = sh(repo, sys.executable, "-m", "lab2prod.cli.main", "run", "-S", setting, check=False)
        assert failed.returncode != 0 and why in failed.stdout + failed.stderr, failed.stderr
        assert "Traceback" not in failed.stderr
        assert workspace_files(repo) == before_files, setting

    # A plain run whose stage fails (here on the user's own params.yaml) gets that stage's outputs back, deleted by
    # DVC before the stage ran; params.yaml stays as the user wrote it, and what the sources stage wrote is kept
    as_was = (repo / "params.yaml").read_text()
    edited = yaml.safe_load(as_was)
    edited["ingest"]["source"] = "/nonexistent/dir"
    (repo / "params.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))
    failed = sh(repo, sys.executable, "-m", "lab2prod.cli.main", "run", check=False)
    assert failed.returncode != 0 and "not a directory" in failed.stdout + failed.stderr, failed.stderr
    after = workspace_files(repo)
    changed = {f for f in before_files.keys() | after.keys() if before_files.get(f) != after.get(f)}
    assert changed == {"params.yaml", "data/sources.json", "dvc.lock"}, changed
    (repo / "params.yaml").write_text(as_was)

    # A correction dropped into the feedback inbox, outside DVC's view, is seen: ingest runs again and takes it
    inbox = repo / "data/feedback/3"
    inbox.mkdir(parents=True)
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(pixels).save(inbox / "correction.png")
    n_before = json.loads((repo / "data/prepared/meta.json").read_text())["n_samples"]
    rerun = sh(repo, "dvc", "repro", "ingest")
    assert stages_run(rerun.stdout) == {"sources", "ingest"}
    meta = json.loads((repo / "data/prepared/meta.json").read_text())
    assert meta["n_samples"] == n_before + 1 and sh(repo, "dvc", "status", "train").stdout.strip() != ""


def workspace_files(repo: Path) -> dict[str, str]:
    """sha256 of every file of the workspace, DVC's and git's own stores and caches left out."""
    skip = (".git/", ".dvc/", ".lab2prod/", "dvc_plots/")
    return {
        str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(repo.rglob("*"))
        if p.is_file() and not str(p.relative_to(repo)).startswith(skip) and "__pycache__" not in p.parts
    }


def test_bad_params_stop_the_run_naming_the_key_and_leave_nothing(repo: Path) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["ingest"]["image_sise"] = 16
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    proc = sh(repo, "dvc", "repro", check=False)
    assert proc.returncode != 0
    assert "ingest.image_sise" in proc.stdout + proc.stderr and "unknown key" in proc.stdout + proc.stderr
    assert not (repo / "data/prepared").exists() and not (repo / "dvc.lock").exists()


def test_broken_images_are_quarantined_through_the_pipeline(repo: Path, image_folder: Path) -> None:
    write_params(
        repo,
        {**LEAN, "ingest": {"source": str(image_folder), "image_size": 16}, "export": {"parity_batch_sizes": [1, 3]}},
    )
    sh(repo, "dvc", "repro")
    meta = json.loads((repo / "data/prepared/meta.json").read_text())
    assert meta["quarantined"] == {"truncated": 1, "not_an_image": 1, "empty_file": 1, "decompression_bomb": 1}
    assert json.loads((repo / "metrics/evaluate.json").read_text())["n_test"] > 0
    assert (repo / "artifacts/export/model.onnx").exists()


def test_kill_9_during_training_then_repro_resumes_and_completes(lean_repo: Path) -> None:
    repo = lean_repo  # every stage has run once: only train and what follows it run again
    write_params(repo, {**LEAN_RUN, "train": {"epochs": EPOCHS, "patience": 100}})  # a learning rate that learns
    started = time.time()
    proc = subprocess.Popen(
        ["dvc", "repro"],
        cwd=repo,
        env=project_env(repo),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = repo / "artifacts/train/checkpoints/last.ckpt"  # the first run's is there too: wait for this run's

    def checkpointed() -> bool:
        return last.exists() and last.stat().st_mtime > started

    deadline = time.monotonic() + 300
    while not checkpointed() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)  # let it get into a later epoch
    assert proc.poll() is None, "training finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (repo / "artifacts/train/model.pt").exists()  # nothing half-written became an output
    assert sh(repo, "dvc", "status", "train").stdout.strip() != ""  # DVC knows train did not finish

    resumed = sh(repo, "dvc", "repro")
    assert "resuming the unfinished run" in resumed.stdout + resumed.stderr
    assert stages_run(resumed.stdout) == {"sources", "train", "evaluate", "compress", "export"}
    assert up_to_date(repo)
    epochs = (repo / "metrics/train/plots/metrics/val/acc.tsv").read_text().splitlines()[1:]
    assert len(epochs) == EPOCHS
