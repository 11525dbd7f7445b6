"""Prefect drives the same DAG: a real server on loopback, real deployments, a real process worker."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import TINY
from tests.prefect_server import prefect_server
from tests.sandbox import commit, make_project, project_env, sh, write_params

pytestmark = pytest.mark.slow

RUN = "training-pipeline/training-pipeline"
# These tests are about orchestration; two compressed variants instead of four keep every run shorter
# (tests/test_compress.py covers all four).
LEAN = {"compress": {**TINY["compress"], "sparse": {"enabled": False}, "int8": {"enabled": False}}}


@pytest.fixture(scope="module")
def prefect_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A Prefect server on 127.0.0.1 with its own home and SQLite database, for this module; its scheduler
    is off (the deployments' crons must not start runs mid-test: tests/test_schedules.py tests them)."""
    with prefect_server(tmp_path_factory.mktemp("prefect"), scheduler=False) as env:
        yield env


@pytest.fixture
def deployed(tmp_path: Path, prefect_env: dict[str, str]) -> Iterator[tuple[Path, dict[str, str]]]:
    """A sandbox project with its deployments registered and a process worker polling for runs."""
    repo = make_project(tmp_path / "project")
    write_params(repo, LEAN)
    commit(repo, "lean compression")
    env = project_env(repo, **prefect_env)
    sh(repo, "python", "-m", "flows.deploy", env=env)
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        ["prefect", "worker", "start", "--pool", "lab2prod-process"],
        cwd=repo,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    yield repo, env
    # A worker asked to stop finishes what it runs first, and may take its time; one left running would
    # take the next test's flow runs from the shared pool, so after a grace period its group is killed.
    worker.terminate()
    try:
        worker.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)


def start_run(repo: Path, env: dict[str, str], *extra: str, deployment: str = RUN) -> str:
    out = sh(repo, "prefect", "deployment", "run", deployment, *extra, env=env).stdout
    return re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)


def wait_for(repo: Path, env: dict[str, str], run_id: str, timeout: float = 400) -> str:
    """Poll a flow run until it is terminal; return its state type (COMPLETED, FAILED, ...)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = sh(repo, "prefect", "flow-run", "inspect", run_id, "--output", "json", env=env).stdout
        state = json.loads(out)["state"]["type"]
        if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return state
        time.sleep(1)
    raise AssertionError(f"flow run {run_id} not finished after {timeout} s")


def logs(repo: Path, env: dict[str, str], run_id: str) -> str:
    """One flow run's own log (a subflow's task logs are the subflow run's, not its parent's)."""
    return sh(repo, "prefect", "flow-run", "logs", run_id, env=env).stdout


def worker_log(repo: Path) -> str:
    """Everything every flow run of this project printed, subflows included (the `deployed` worker's output)."""
    return (repo.parent / "worker.log").read_text()


def test_deployment_run_completes_and_leaves_what_dvc_repro_would(deployed: tuple[Path, dict[str, str]]) -> None:
    repo, env = deployed
    run_id = start_run(repo, env)
    assert wait_for(repo, env, run_id) == "COMPLETED", logs(repo, env, run_id)
    assert "up to date" in sh(repo, "dvc", "status").stdout  # the flow and `dvc repro` are one DAG
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"ingest", "augment", "train", "evaluate", "compress", "export"}
    text = logs(repo, env, run_id)
    assert "[train]" in text and "Running stage 'train'" in text  # the stage's output is in the run log
    artifacts = sh(repo, "prefect", "artifact", "ls", env=env).stdout
    assert "lab2prod-metrics" in artifacts and "lab2prod-run" in artifacts

    # with overrides: validated, applied, and recorded as a DVC experiment
    commit(repo, "first run")
    run_id = start_run(repo, env, "--param", 'overrides={"train.epochs": 3}')
    assert wait_for(repo, env, run_id) == "COMPLETED", logs(repo, env, run_id)
    shown = json.loads(sh(repo, "dvc", "exp", "show", "--json").stdout)
    epochs = [
        r["data"]["params"]["params.yaml"]["data"]["train"]["epochs"]
        for commit_ in shown
        for exp in (commit_.get("experiments") or [])
        for r in exp["revs"]
    ]
    assert epochs == [3]
    assert "Running stage 'ingest'" not in logs(repo, env, run_id)  # only train and later reran


def test_failing_stage_fails_the_flow_and_stops_downstream(deployed: tuple[Path, dict[str, str]]) -> None:
    repo, env = deployed
    params_before = (repo / "params.yaml").read_bytes()
    run_id = start_run(repo, env, "--param", 'overrides={"ingest.source": "/no/such/images"}')
    assert wait_for(repo, env, run_id) == "FAILED"
    text = logs(repo, env, run_id)
    assert "ingest.source = '/no/such/images': not a directory" in text  # the stage's own error
    assert "Task run 'augment'" not in text and "[augment]" not in text
    assert not (repo / "data/prepared").exists()  # no output of the failed stage in place
    assert (repo / "params.yaml").read_bytes() == params_before  # the override was rolled back


def test_bad_override_is_rejected_before_any_stage_runs(deployed: tuple[Path, dict[str, str]]) -> None:
    repo, env = deployed
    run_id = start_run(repo, env, "--param", 'overrides={"train.epohcs": 3}')
    assert wait_for(repo, env, run_id) == "FAILED"
    text = logs(repo, env, run_id)
    assert "train.epohcs" in text and "Running stage" not in text


def test_two_runs_at_once_both_end_well_and_the_workspace_is_intact(deployed: tuple[Path, dict[str, str]]) -> None:
    repo, env = deployed
    first, second = start_run(repo, env), start_run(repo, env)
    states = {wait_for(repo, env, first), wait_for(repo, env, second)}
    assert states == {"COMPLETED"}, logs(repo, env, first) + logs(repo, env, second)
    assert "up to date" in sh(repo, "dvc", "status").stdout
    assert set(yaml.safe_load((repo / "dvc.lock").read_text())["stages"]) == {
        "ingest",
        "augment",
        "train",
        "evaluate",
        "compress",
        "export",
    }
    # one ran the stages, the other found nothing to do: they did not interleave
    ran = ["Running stage 'train'" in logs(repo, env, r) for r in (first, second)]
    assert sorted(ran) == [False, True]


RETRAIN = "scheduled-retrain/scheduled-retrain"


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
    """What a run that does not promote must leave as it found: settings, lock, metrics, models."""
    files = [
        "params.yaml",
        "dvc.lock",
        "metrics/evaluate.json",
        "metrics/benchmark.json",
        "artifacts/export/model.onnx",
        "artifacts/train/model.pt",
        "data/prepared/meta.json",
    ]
    return {f: (repo / f).read_bytes() for f in files}


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


def test_scheduled_retrain_promotes_only_a_better_model(deployed: tuple[Path, dict[str, str]]) -> None:
    """The retraining lifecycle on one workspace: first champion, no new data, new data, a worse
    challenger, a run killed mid-training and the run after it, a rollback by hand."""
    from lab2prod.registry.store import champion_model, manifest

    repo, env = deployed
    registry = repo / "registry"
    write_params(repo, {**LEAN, "ingest": {"extra_sources": ["data/feedback"]}})
    commit(repo, "feedback inbox on")

    first = start_run(repo, env, deployment=RETRAIN)
    assert wait_for(repo, env, first) == "COMPLETED", logs(repo, env, first)
    assert registry_state(repo) == (["v0001"], "v0001")  # no champion yet: the first model becomes it
    assert any((repo / "dvc-remote").rglob("*")), "the run's data and models were not pushed to the DVC remote"

    trainings = worker_log(repo).count("Running stage 'train'")
    again = start_run(repo, env, deployment=RETRAIN)
    assert wait_for(repo, env, again) == "COMPLETED", logs(repo, env, again)
    assert "No new data" in logs(repo, env, again)
    assert worker_log(repo).count("Running stage 'train'") == trainings  # nothing trained
    assert registry_state(repo) == (["v0001"], "v0001")

    add_feedback(repo, per_class=8, angle=10)
    new_data = start_run(repo, env, deployment=RETRAIN)
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
    assert current == ("v0002" if m2["lineage"]["decision"]["promote"] else "v0001")

    # cancelled from the server mid-training: the workspace back byte for byte, champion unchanged, the
    # decision artifact says so; the next run (the worse challenger below) starts from it and completes
    before_cancel, champion_at_cancel = workspace_state(repo), registry_state(repo)
    add_feedback(repo, per_class=8, angle=20)
    cancelled = start_run(repo, env, "--param", 'overrides={"train.epochs": 20}', deployment=RETRAIN)
    wait_until_training(repo, cancelled)
    sh(repo, "prefect", "flow-run", "cancel", cancelled, env=env)
    assert wait_for(repo, env, cancelled) == "CANCELLED", logs(repo, env, cancelled)
    wait_for_exit(cancelled)
    assert workspace_state(repo) == before_cancel  # params.yaml (with the override), dvc.lock, outputs
    assert registry_state(repo) == champion_at_cancel
    decision = "".join(sh(repo, "prefect", "artifact", "inspect", "lab2prod-retrain-decision", env=env).stdout.split())
    assert "Retrainingcancelled" in decision and "thechampionisunchanged" in decision, decision

    # a deliberately worse challenger: not promoted, champion and workspace as they were, the run says why
    champion_before = current
    served_before = Path(champion_model(registry)).read_bytes()
    workspace_before = workspace_state(repo)
    add_feedback(repo, per_class=8, angle=-10)
    # every model the run could serve is ruined: the network, and the pruned and distilled variants
    ruin = '{"train.lr": 1e-06, "train.epochs": 1, "compress.prune.lr": 1e-06, "compress.distill.lr": 1e-06}'
    worse = start_run(repo, env, "--param", f"overrides={ruin}", deployment=RETRAIN)
    assert wait_for(repo, env, worse) == "COMPLETED", logs(repo, env, worse)
    versions_, current = registry_state(repo)
    assert versions_ == ["v0001", "v0002", "v0003"] and current == champion_before
    assert Path(champion_model(registry)).read_bytes() == served_before
    text = logs(repo, env, worse)
    assert "NOT PROMOTED v0003" in text and "retrain.min_f1_gain" in text and "workspace restored" in text
    assert workspace_state(repo) == workspace_before
    assert "up to date" in sh(repo, "dvc", "status").stdout

    # killed mid-training: nothing registered, champion unchanged; the next run resumes and completes
    add_feedback(repo, per_class=8, angle=15)
    killed = start_run(repo, env, "--param", 'overrides={"train.epochs": 20}', deployment=RETRAIN)
    kill_when_training(repo, killed)
    assert wait_for(repo, env, killed) in ("CRASHED", "FAILED")
    assert registry_state(repo) == (["v0001", "v0002", "v0003"], champion_before)
    assert Path(champion_model(registry)).read_bytes() == served_before
    assert "resuming the unfinished run" not in worker_log(repo)
    after = start_run(repo, env, "--param", 'overrides={"train.epochs": 20}', deployment=RETRAIN)
    assert wait_for(repo, env, after) == "COMPLETED", logs(repo, env, after)
    assert "resuming the unfinished run" in worker_log(repo)  # the stage logs are the subflow's, in the worker's log
    versions_, current = registry_state(repo)
    assert versions_[-1] == "v0004" and manifest(registry, "v0004")["parent"] == champion_before

    # by hand: promote v0004, then roll back to the champion before it, its served file byte-identical
    if current != "v0004":
        sh(repo, "python", "-m", "lab2prod.cli.main", "registry", "promote", "v0004", env=env)
    assert registry_state(repo)[1] == "v0004"
    sh(repo, "python", "-m", "lab2prod.cli.main", "registry", "rollback", env=env)
    assert registry_state(repo)[1] == champion_before
    assert Path(champion_model(registry)).read_bytes() == served_before


def test_drift_in_served_traffic_starts_a_retraining_run(
    prefect_env: dict[str, str], tiny_run: dict, tmp_path: Path
) -> None:
    """The drift-monitor flow on a real server: in-distribution traffic starts nothing; inverted digits raise
    the drift flag and start a run of the scheduled-retrain deployment (left queued: no worker here)."""
    from models.nets.inputs import load_split
    from tests.test_monitor import champion_registry, log_traffic

    repo = make_project(tmp_path / "project")
    env = project_env(repo, **prefect_env)
    sh(repo, "python", "-m", "flows.deploy", env=env)
    classifier = champion_registry(tiny_run, repo / "registry")
    x_val = load_split(tiny_run["prepared"], "val")[0].numpy()
    write_params(repo, {"monitor": {"min_predictions": 100}})

    def monitor() -> dict:
        out = sh(repo, "python", "-m", "flows.monitor", env=env).stdout
        return json.loads(out[out.index("{") :])

    log_traffic(classifier, x_val, repo / "logs/predictions")
    calm = monitor()
    assert calm["drift"]["enough"] and not calm["drift"]["drift"] and "flow_run" not in calm["retrain"]

    shutil.rmtree(repo / "logs/predictions")
    log_traffic(classifier, 255 - x_val, repo / "logs/predictions")
    report = monitor()
    assert report["drift"]["drift"] and report["retrain"]["needed"], report["drift"]
    run_id = report["retrain"]["flow_run"]
    try:
        run = json.loads(sh(repo, "prefect", "flow-run", "inspect", run_id, "--output", "json", env=env).stdout)
        deployment = sh(repo, "prefect", "deployment", "inspect", RETRAIN, env=env).stdout
        assert run["deployment_id"] in deployment and "triggered-by-monitor" in run["tags"]
        assert run["state"]["type"] in ("SCHEDULED", "PENDING")
        assert json.loads((repo / "reports/drift/state.json").read_text())["flow_run"] == run_id
        artifact = "".join(sh(repo, "prefect", "artifact", "inspect", "lab2prod-drift", env=env).stdout.split())
        assert "**DRIFT**" in artifact and "Retraining:**started**" in artifact, artifact
    finally:  # a later test's worker must not pick up this run
        sh(repo, "prefect", "flow-run", "delete", run_id, env=env, check=False)
