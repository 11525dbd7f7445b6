"""Scheduled retraining on a real Prefect server with a real worker: the whole lifecycle on one workspace
(first champion, no new data, new data, a cancelled run, a killed run and the worse challenger that resumes
it, promotion and rollback by hand). Its own module, so its server and its long run do not hold up the rest."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.metrics import f1_score

from tests.conftest import LEAN_RUN, bare_onnx_predictions
from tests.prefect_server import (  # noqa: F401  (fixtures)
    RETRAIN,
    artifact_texts,
    create_run,
    deployed_lean,
    logs,
    prefect_env,
    start_run,
    wait_for,
    worker_log,
)
from tests.sandbox import commit, sh, write_params

pytestmark = pytest.mark.slow


def add_feedback(repo: Path, per_class: int, angle: float) -> None:
    """Labelled corrections in the inbox: digits rotated by `angle` (new pixels, so new data)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for cls in range(10):
        folder = repo / "data/feedback" / str(cls)
        folder.mkdir(parents=True, exist_ok=True)
        for i in np.flatnonzero(digits.target == cls)[:per_class]:
            img = Image.fromarray(np.rint(digits.images[i] * 255 / 16).astype(np.uint8), "L")
            img.rotate(angle, resample=Image.Resampling.BILINEAR).save(folder / f"{i}_{angle:g}.png")


def registry_state(repo: Path) -> tuple[list[str], str | None]:
    from lab2prod.registry.store import champion, versions

    reg = repo / "registry"
    return versions(reg), (champion(reg) or {}).get("version")


def workspace_state(repo: Path) -> dict[str, bytes]:
    """What a run that does not promote must leave as it found: settings, lock, metrics, models (those there:
    a run killed in training leaves no model file, DVC having removed the stage's outputs before it ran)."""
    files = [
        "params.yaml",
        "dvc.lock",
        "metrics/evaluate.json",
        "metrics/benchmark.json",
        "artifacts/export/model.onnx",
        "artifacts/train/model.pt",
        "data/prepared/meta.json",
    ]
    return {f: (repo / f).read_bytes() for f in files if (repo / f).exists()}


def _flow_run_processes(run_id: str) -> list:
    import psutil

    def environ(proc: psutil.Process) -> dict[str, str]:
        try:
            return proc.environ()
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            return {}

    return [p for p in psutil.process_iter(["cmdline"]) if environ(p).get("PREFECT__FLOW_RUN_ID") == run_id]


def wait_until_training(repo: Path, run_id: str, timeout: float = 300) -> list:
    """The flow run's processes, once its training stage has written a checkpoint."""
    checkpoint = repo / "artifacts/train/checkpoints/last.ckpt"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs = _flow_run_processes(run_id)
        training = [p for p in procs if "tasks.train" in (p.info["cmdline"] or [])]
        if training and checkpoint.exists() and checkpoint.stat().st_mtime > training[0].create_time():
            return procs
        time.sleep(0.2)
    raise AssertionError(f"flow run {run_id} never reached training with a checkpoint in {timeout} s")


def wait_for_exit(run_id: str, timeout: float = 60) -> None:
    """Until no process of the flow run is left (a cancelled run's processes end after its state changes)."""
    deadline = time.monotonic() + timeout
    while _flow_run_processes(run_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _flow_run_processes(run_id), f"processes of flow run {run_id} still running after {timeout} s"


def kill_when_training(repo: Path, run_id: str, timeout: float = 300) -> None:
    """SIGKILL every process of a flow run (the flow, DVC, the stage) once training has written a checkpoint."""
    import psutil

    for proc in wait_until_training(repo, run_id, timeout):
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def test_scheduled_retrain_promotes_only_a_better_model(deployed_lean: tuple[Path, dict[str, str]]) -> None:
    """The retraining lifecycle on one workspace: first champion, no new data, new data, a run cancelled and
    one killed mid-training, the worse challenger that resumes the killed run's training, a rollback by hand."""
    from lab2prod.registry.store import champion_model, manifest

    repo, env = deployed_lean  # the DAG has run once there: the first retraining reruns train and what follows
    registry = repo / "registry"
    # The served file is the FP32 model here (no pruned or distilled variant: with the tiny fixture's generous
    # gates the fastest file, the one served, could be any variant, however poor), and the first champion is
    # lean_repo's model, trained to be bad on purpose (tests/conftest.py: LEAN_RUN, a learning rate that learns
    # nothing): the challenger trained on more data with the real settings must replace it, an outcome this test
    # knows in advance and measures itself below. The first run finds the DAG up to date and registers that model.
    base = {section: settings for section, settings in LEAN_RUN.items() if section != "train"}  # the real lr
    assert yaml.safe_load((repo / "params.yaml").read_text())["train"]["lr"] == LEAN_RUN["train"]["lr"]

    first = start_run(repo, env, deployment=RETRAIN)  # as a user types it
    assert wait_for(repo, env, first) == "COMPLETED", logs(repo, env, first)
    assert registry_state(repo) == (["v0001"], "v0001")  # no champion yet: the first model becomes it
    assert any((repo / "dvc-remote").rglob("*")), "the run's data and models were not pushed to the DVC remote"

    trainings = worker_log(repo).count("Running stage 'train'")
    again = create_run(env, RETRAIN)  # the same over REST (tests/prefect_server.py)
    assert wait_for(repo, env, again) == "COMPLETED", logs(repo, env, again)
    assert "No new data" in logs(repo, env, again)
    assert worker_log(repo).count("Running stage 'train'") == trainings  # nothing trained
    assert registry_state(repo) == (["v0001"], "v0001")

    add_feedback(repo, per_class=8, angle=10)
    write_params(repo, base)
    commit(repo, "the real learning rate")
    new_data = create_run(env, RETRAIN)
    assert wait_for(repo, env, new_data) == "COMPLETED", logs(repo, env, new_data)
    versions_, current = registry_state(repo)
    assert versions_ == ["v0001", "v0002"]
    m2 = manifest(registry, "v0002")
    assert (
        m2["parent"] == "v0001"
        and m2["lineage"]["dataset_hash"] != manifest(registry, "v0001")["lineage"]["dataset_hash"]
    )
    assert {"params_hash", "git_commit", "decision", "metrics"} <= set(m2["lineage"])
    assert {"dvc.lock", "params.yaml", "export.json", m2["deployable"]} <= set(m2["files"])
    assert current == "v0002", m2["lineage"]["decision"]
    # measured here, on the test images neither model trained on (splits never move: v0001's test images are in
    # v0002's test split too), by bare ONNX Runtime sessions and scikit-learn: the champion really is better
    labels, old = bare_onnx_predictions(
        registry / "versions/v0001" / manifest(registry, "v0001")["deployable"], repo / "data/prepared"
    )
    _, new = bare_onnx_predictions(registry / "versions/v0002" / m2["deployable"], repo / "data/prepared")
    assert f1_score(labels, new, average="macro") > f1_score(labels, old, average="macro") + 0.2

    # cancelled from the server mid-training: the workspace back byte for byte, champion unchanged, the
    # decision artifact says so; the runs below start from it
    before_cancel, champion_at_cancel = workspace_state(repo), registry_state(repo)
    add_feedback(repo, per_class=8, angle=20)
    cancelled = create_run(env, RETRAIN, overrides={"train.epochs": 20})
    wait_until_training(repo, cancelled)
    sh(repo, "prefect", "flow-run", "cancel", cancelled, env=env)
    assert wait_for(repo, env, cancelled) == "CANCELLED", logs(repo, env, cancelled)
    wait_for_exit(cancelled)
    assert workspace_state(repo) == before_cancel  # params.yaml (with the override), dvc.lock, outputs
    assert registry_state(repo) == champion_at_cancel
    decision = "".join(artifact_texts(env, "lab2prod-retrain-decision")[0].split())
    assert "Retrainingcancelled" in decision and "thechampionisunchanged" in decision, decision

    # killed mid-training: nothing registered, champion unchanged. The next run, with the same settings, resumes
    # the killed run's training and completes; those settings ruin the model it would serve, so that challenger
    # is registered, not promoted, and the run puts the workspace back as the killed run left it (one full DAG
    # run for both checks).
    champion_before = current
    served_before = Path(champion_model(registry)).read_bytes()
    add_feedback(repo, per_class=8, angle=15)
    ruin = {"train.lr": 1e-06, "train.epochs": 20}
    killed = create_run(env, RETRAIN, overrides=ruin)
    kill_when_training(repo, killed)
    assert wait_for(repo, env, killed) in ("CRASHED", "FAILED")
    assert registry_state(repo) == (["v0001", "v0002"], champion_before)
    assert Path(champion_model(registry)).read_bytes() == served_before
    assert "resuming the unfinished run" not in worker_log(repo)
    workspace_before = workspace_state(repo)
    worse = create_run(env, RETRAIN, overrides=ruin)
    assert wait_for(repo, env, worse) == "COMPLETED", logs(repo, env, worse)
    assert "resuming the unfinished run" in worker_log(repo)  # the stage logs are the subflow's, in the worker's log
    versions_, current = registry_state(repo)
    assert versions_ == ["v0001", "v0002", "v0003"] and current == champion_before
    assert manifest(registry, "v0003")["parent"] == champion_before
    assert Path(champion_model(registry)).read_bytes() == served_before
    text = logs(repo, env, worse)
    assert "NOT PROMOTED v0003" in text and "retrain.min_f1_gain" in text and "workspace restored" in text
    after_rollback = workspace_state(repo)
    assert {f: after_rollback.get(f) for f in workspace_before} == workspace_before  # as the killed run left it

    # by hand: promote v0003, then roll back to the champion before it, its served file byte-identical
    sh(repo, "python", "-m", "lab2prod.cli.main", "registry", "promote", "v0003", env=env)
    assert registry_state(repo)[1] == "v0003"
    sh(repo, "python", "-m", "lab2prod.cli.main", "registry", "rollback", env=env)
    assert registry_state(repo)[1] == champion_before
    assert Path(champion_model(registry)).read_bytes() == served_before
