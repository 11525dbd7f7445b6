"""Prefect drives the same DAG: a real server on loopback, real deployments, a real process worker."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import LEAN_RUN
from tests.prefect_server import (  # noqa: F401  (fixtures)
    LEAN,
    RETRAIN,
    RUN,
    api,
    artifact_texts,
    create_run,
    deployed,
    deployed_lean,
    logs,
    prefect_env,
    start_run,
    wait_for,
    worker_log,
)
from tests.sandbox import commit, make_project, project_env, sh, up_to_date, write_params

pytestmark = pytest.mark.slow


def test_deployment_runs_complete_one_at_a_time_and_leave_what_dvc_repro_would(
    deployed_lean: tuple[Path, dict[str, str]],
) -> None:
    """Two runs started at once after a change of training settings: both complete without interleaving (one
    runs the stages that change, the other finds nothing to do) and leave what `dvc repro` would; then a run
    with overrides reruns only what they change."""
    repo, env = deployed_lean  # the DAG has run once there
    write_params(repo, {**LEAN_RUN, "train": {"seed": 7}})
    commit(repo, "another training seed")
    first, second = start_run(repo, env), create_run(env)  # the command users type, then its REST call
    states = {wait_for(repo, env, first), wait_for(repo, env, second)}
    assert states == {"COMPLETED"}, logs(repo, env, first) + logs(repo, env, second)
    assert up_to_date(repo)  # the flow and `dvc repro` are one DAG
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"sources", "ingest", "augment", "train", "evaluate", "compress", "export"}
    texts = [logs(repo, env, r) for r in (first, second)]
    ran = ["Running stage 'train'" in text for text in texts]
    assert sorted(ran) == [False, True]  # they did not interleave
    assert "[train]" in texts[ran.index(True)]  # the stage's output is in the run log
    assert "| accuracy |" in artifact_texts(env, "lab2prod-metrics")[0]
    run_page = artifact_texts(env, "lab2prod-run")[0]  # files by their place in the project, the served one first
    assert str(repo) not in run_page and "`artifacts/export/model.onnx`" in run_page.split("| output |")[1]
    picture = artifact_texts(env, "lab2prod-results")[0]  # export's results.png itself, inlined
    png = base64.b64decode(picture.split("data:image/png;base64,")[1].split(")")[0])
    assert png == (repo / "artifacts/export/results.png").read_bytes() and png.startswith(b"\x89PNG")

    # with overrides: validated, applied, and recorded as a DVC experiment
    commit(repo, "first run")
    run_id = start_run(repo, env, "--param", 'overrides={"evaluate.baseline_c": 2.0}')  # only evaluate reruns
    assert wait_for(repo, env, run_id) == "COMPLETED", logs(repo, env, run_id)
    shown = json.loads(sh(repo, "dvc", "exp", "show", "--json").stdout)
    values = [
        r["data"]["params"]["params.yaml"]["data"]["evaluate"]["baseline_c"]
        for commit_ in shown
        for exp in (commit_.get("experiments") or [])
        for r in exp["revs"]
    ]
    assert values == [2.0]
    text = logs(repo, env, run_id)
    assert "Running stage 'evaluate'" in text and "Running stage 'train'" not in text  # only what changed reran


def test_failing_stage_fails_the_flow_and_stops_downstream(deployed: tuple[Path, dict[str, str]]) -> None:
    repo, env = deployed
    params_before = (repo / "params.yaml").read_bytes()
    run_id = create_run(env, overrides={"ingest.source": "/no/such/images"})
    assert wait_for(repo, env, run_id) == "FAILED"
    text = logs(repo, env, run_id)
    assert "ingest.source = '/no/such/images': not a directory" in text  # the stage's own error
    assert "Task run 'augment'" not in text and "[augment]" not in text
    assert not (repo / "data/prepared").exists()  # no output of the failed stage in place
    assert (repo / "params.yaml").read_bytes() == params_before  # the override was rolled back


def test_bad_override_is_rejected_before_any_stage_runs(deployed: tuple[Path, dict[str, str]]) -> None:
    repo, env = deployed
    run_id = create_run(env, overrides={"train.epohcs": 3})
    assert wait_for(repo, env, run_id) == "FAILED"
    text = logs(repo, env, run_id)
    assert "train.epohcs" in text and "Running stage" not in text


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
        run, deployment = api(env, f"/flow_runs/{run_id}"), api(env, "/deployments/name/" + RETRAIN)
        assert isinstance(run, dict) and isinstance(deployment, dict)
        assert run["deployment_id"] == deployment["id"] and "triggered-by-monitor" in run["tags"]
        assert run["state"]["type"] in ("SCHEDULED", "PENDING")
        assert json.loads((repo / "reports/drift/state.json").read_text())["flow_run"] == run_id
        artifact = "".join(artifact_texts(env, "lab2prod-drift")[0].split())
        assert "**DRIFT**" in artifact and "Retraining:**started**" in artifact, artifact
    finally:  # a later test's worker must not pick up this run
        sh(repo, "prefect", "flow-run", "delete", run_id, env=env, check=False)
