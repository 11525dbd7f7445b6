"""The schedules users deploy actually fire: a real server with its scheduler, `lab2prod prefect deploy`, and
`lab2prod prefect worker` taking the scheduled runs to COMPLETED.

Reading the stored cron back proved nothing: under SQLAlchemy 2.1 the deployments kept their crons while the
server's scheduler failed on every loop and created no run at all.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest
import yaml

from tests.prefect_server import api, flow_runs, prefect_server
from tests.sandbox import commit, make_project, project_env

pytestmark = pytest.mark.slow

DEPLOYMENTS = ("scheduled-retrain", "drift-monitor")
BUSY = ("PENDING", "RUNNING", "CANCELLING")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    """A server whose scheduler looks for due deployments every 5 s (its default: 60 s)."""
    home = tmp_path / "prefect"
    home.mkdir()
    with prefect_server(home, scheduler=True, PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="5") as env:
        yield env, home / "server.log"


def lab2prod(repo: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(["lab2prod", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"lab2prod {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def wait_runs(env: dict[str, str], deployment: str, done, timeout: float, log: Path) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = flow_runs(env, deployment)
        if done(runs):
            return runs
        time.sleep(1)
    errors = "\n".join(scheduler_errors(log)[:20])
    raise AssertionError(
        f"{deployment}: after {timeout:.0f} s its runs are {[r['state_type'] for r in runs]}\n{errors}"
    )


def scheduler_errors(log: Path) -> list[str]:
    """The server log's ERROR entries (with their tracebacks) that come from scheduling."""
    entries, current = [], None
    for line in log.read_text().splitlines():
        if re.match(r"\d\d:\d\d:\d\d\.\d+ \| ", line):  # a new log record
            current = [line] if "| ERROR" in line else None
            if current is not None:
                entries.append(current)
        elif current is not None:
            current.append(line)
    scheduling = re.compile(r"services/scheduler|schedule_\w*deployments|bulk DML")
    return ["\n".join(e) for e in entries if scheduling.search("\n".join(e))]


def stop(proc: subprocess.Popen, timeout: float = 120) -> None:
    """SIGTERM `lab2prod prefect worker` only (not its group): it passes it on to the worker it wraps, which
    lets a flow run it started finish and drains its event client first. Under a loaded machine Prefect's
    worker has been seen not to finish that shutdown at all (its own hang, after the signal reached it): the
    wrapper kills it after its --grace (30 s here; tests/test_prefect_cli.py tests that); should even that
    fail, the test kills everything left, so no process outlives it."""
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
    _, alive = psutil.wait_procs(children, timeout=30)
    for p in alive:
        p.kill()


def test_shipped_crons_produce_scheduled_runs(server: tuple[dict[str, str], Path], tmp_path: Path) -> None:
    """prefect.yaml as shipped: the scheduler creates the upcoming runs of both crons, at the cron's times."""
    env, log = server
    repo = make_project(tmp_path / "project")
    env = project_env(repo, **env)
    lab2prod(repo, env, "prefect", "deploy")
    for name in DEPLOYMENTS:
        runs = wait_runs(env, name, lambda runs: len(runs) >= 3, 60, log)
        starts = [datetime.fromisoformat(r["expected_start_time"]).astimezone(UTC) for r in runs]
        assert all(r["state_type"] == "SCHEDULED" and r["auto_scheduled"] for r in runs)
        assert all(s > datetime.now(UTC) for s in starts)
        if name == "scheduled-retrain":  # "0 3 * * *"
            assert {(s.hour, s.minute) for s in starts} == {(3, 0)}
        else:  # "15 * * * *"
            assert {s.minute for s in starts} == {15}
    assert not scheduler_errors(log), "\n".join(scheduler_errors(log))


def test_scheduled_runs_fire_and_complete(server: tuple[dict[str, str], Path], lean_repo: Path, tmp_path: Path) -> None:
    """Both crons made due every minute: their first scheduled runs are taken by the worker and complete. What
    is tested is that the runs happen: the project's DAG has run once already (lean_repo), so the first scheduled
    retraining finds its stages up to date and registers the model they made (its first champion)."""
    env, log = server
    repo = lean_repo
    spec = yaml.safe_load((repo / "prefect.yaml").read_text())
    for deployment in spec["deployments"]:
        if deployment["name"] in DEPLOYMENTS:
            deployment["schedules"] = [{"cron": "* * * * *", "timezone": "UTC", "active": True}]
    (repo / "prefect.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    commit(repo, "every minute")
    env = project_env(repo, **env)

    with (tmp_path / "worker.log").open("w") as out:
        worker = subprocess.Popen(
            ["lab2prod", "prefect", "worker", "--grace", "30"],
            cwd=repo,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            for name in DEPLOYMENTS:
                runs = wait_runs(env, name, lambda runs: any(r["state_type"] == "COMPLETED" for r in runs), 420, log)
                done = next(r for r in runs if r["state_type"] == "COMPLETED")
                assert done["auto_scheduled"], done  # the scheduler made it, not a manual `deployment run`
                assert not any(r["state_type"] in ("FAILED", "CRASHED") for r in runs), runs
            # every minute brings another run: pause both (their scheduled runs go), let the one running end
            for name in DEPLOYMENTS:
                api(env, f"/deployments/{flow_runs(env, name)[0]['deployment_id']}/pause_deployment", {})
            for name in DEPLOYMENTS:
                wait_runs(env, name, lambda runs: not any(r["state_type"] in BUSY for r in runs), 420, log)
        finally:
            stop(worker)
    assert (repo / "registry").is_dir(), "the scheduled retraining registered no model"
    assert not scheduler_errors(log), "\n".join(scheduler_errors(log))
