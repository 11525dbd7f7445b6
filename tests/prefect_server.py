"""A real Prefect server on loopback for the tests (its own home, SQLite database and log file), and the
fixtures and helpers the Prefect test modules share: a deployed sandbox project with a worker, runs."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FP32_ONLY
from tests.sandbox import commit, make_project, project_env, sh, write_params


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(port: int, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2):
                return
        except OSError:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.5)
    proc.kill()
    pytest.fail(f"the Prefect server did not come up in {timeout:.0f} s:\n{log.read_text()}")


@contextlib.contextmanager
def prefect_server(home: Path, *, scheduler: bool, **extra: str) -> Iterator[dict[str, str]]:
    """Start `prefect server start` on a free port; yield the environment a client needs to reach it.

    `scheduler=False` turns the server's scheduler service off: the sandbox deployments carry real crons
    (drift-monitor fires hourly at :15), and a run that fires in the middle of a test would take the pool's
    one slot. tests/test_schedules.py runs one with the scheduler on.
    """
    port = free_port()
    env = {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": str(scheduler).lower(),
        "PREFECT_SERVER_DATABASE_TIMEOUT": "60",  # as `lab2prod prefect server` sets it
        **extra,
    }
    log = home / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=project_env(home, **env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_healthy(port, server, log)
            yield env
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=30)


RETRIED = {429, 502, 503}  # what Prefect's own client retries (PREFECT_CLIENT_RETRY_EXTRA_CODES adds more)


def api(env: dict[str, str], path: str, body: dict | None = None, attempts: int = 6) -> object:
    """POST `body` (or GET) to the server's REST API; the decoded JSON answer. Retried with backoff as Prefect's
    client retries: a server busy with a flow run's writes to SQLite answers slowly or 503 (database locked)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(env["PREFECT_API_URL"] + path, data=data, headers={"Content-Type": "application/json"})
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                raw = resp.read()
                return json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            if exc.code not in RETRIED or attempt == attempts - 1:
                raise AssertionError(f"{path}: HTTP {exc.code}: {exc.read().decode(errors='replace')}") from None
        except TimeoutError:
            if attempt == attempts - 1:
                raise
        time.sleep(2**attempt)
    raise AssertionError("unreachable")


def flow_runs(env: dict[str, str], deployment: str) -> list[dict]:
    """Every flow run of one deployment (by its name), oldest expected start first."""
    body = {"deployments": {"name": {"any_": [deployment]}}, "sort": "EXPECTED_START_TIME_ASC"}
    runs = api(env, "/flow_runs/filter", body)
    assert isinstance(runs, list)
    return runs


RUN = "training-pipeline/training-pipeline"
# These tests are about orchestration: the DAG with no compressed variant (tests/conftest.py: FP32_ONLY).
LEAN = FP32_ONLY


@pytest.fixture(scope="module")
def prefect_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A Prefect server on 127.0.0.1 with its own home and SQLite database, for this module; its scheduler
    is off (the deployments' crons must not start runs mid-test: tests/test_schedules.py tests them)."""
    with prefect_server(tmp_path_factory.mktemp("prefect"), scheduler=False) as env:
        yield env


@contextlib.contextmanager
def deploy(repo: Path, prefect_env: dict[str, str]) -> Iterator[tuple[Path, dict[str, str]]]:
    """`repo`'s deployments registered on the server and a process worker polling for their runs."""
    env = project_env(repo, **prefect_env)
    sh(repo, "python", "-m", "flows.deploy", env=env)
    log = (repo.parent / "worker.log").open("w")
    worker = subprocess.Popen(
        ["prefect", "worker", "start", "--pool", "lab2prod-process"],
        cwd=repo,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield repo, env
    finally:
        # One left running would take the next test's flow runs from the shared pool: its group (the worker and
        # any flow run it started) is killed outright. A worker's graceful stop is tests/test_schedules.py's to
        # test; asked politely here it sat out the whole grace period every time (15 s of each test).
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
        log.close()


@pytest.fixture
def deployed(tmp_path: Path, prefect_env: dict[str, str]) -> Iterator[tuple[Path, dict[str, str]]]:
    """A new sandbox project (nothing run yet) with its deployments registered and a process worker."""
    repo = make_project(tmp_path / "project")
    write_params(repo, LEAN)
    commit(repo, "lean compression")
    with deploy(repo, prefect_env) as deployment:
        yield deployment


@pytest.fixture
def deployed_lean(lean_repo: Path, prefect_env: dict[str, str]) -> Iterator[tuple[Path, dict[str, str]]]:
    """`lean_repo` (tests/conftest.py: the DAG has run once, not committed) committed, deployed, with a worker."""
    commit(lean_repo, "first run")
    with deploy(lean_repo, prefect_env) as deployment:
        yield deployment


def start_run(repo: Path, env: dict[str, str], *extra: str, deployment: str = RUN) -> str:
    """`prefect deployment run <deployment> [--param k=v ...]`, as a user types it; the new flow run's id."""
    out = sh(repo, "prefect", "deployment", "run", deployment, *extra, env=env).stdout
    return re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)


def create_run(env: dict[str, str], deployment: str = RUN, **parameters: object) -> str:
    """What `start_run` does, over the REST API (the CLI's own call: POST /deployments/{id}/create_flow_run):
    each CLI call imports Prefect, seconds of CPU taken from the runs being tested. The new flow run's id."""
    found = api(env, "/deployments/name/" + deployment)
    assert isinstance(found, dict), found
    run = api(env, f"/deployments/{found['id']}/create_flow_run", {"parameters": parameters})
    assert isinstance(run, dict), run
    return run["id"]


def wait_for(repo: Path, env: dict[str, str], run_id: str, timeout: float = 400) -> str:
    """Poll a flow run until it is terminal; return its state type (COMPLETED, FAILED, ...).

    Over the REST API, not `prefect flow-run inspect`: each CLI call imports Prefect, seconds of CPU a poll,
    which on a 2-core machine takes a core from the very run being waited for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = api(env, f"/flow_runs/{run_id}")
        assert isinstance(run, dict)
        state = run["state"]["type"]
        if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return state
        time.sleep(1)
    raise AssertionError(f"flow run {run_id} not finished after {timeout} s")


def logs(repo: Path, env: dict[str, str], run_id: str, quiet_s: float = 10) -> str:
    """One flow run's own log messages, one a line, oldest first: what `prefect flow-run logs` prints, read over the
    REST API as that command reads it (a subflow's task logs are the subflow run's, not its parent's). A run's last
    lines reach the server after its state does (its process sends them as it exits): read until its closing
    "Finished in state" line is there, or nothing new came for `quiet_s` (a crashed or cancelled run has none)."""
    text, changed = "", time.monotonic()
    while True:
        entries: list[dict] = []
        while True:
            body = {"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC", "limit": 200}
            page = api(env, "/logs/filter", {**body, "offset": len(entries)})
            assert isinstance(page, list), page
            entries += page
            if len(page) < 200:
                break
        if "\n".join(e["message"] for e in entries) != text:
            text, changed = "\n".join(e["message"] for e in entries), time.monotonic()
        closed = any(e["task_run_id"] is None and e["message"].startswith("Finished in state") for e in entries)
        if closed or time.monotonic() - changed > quiet_s:
            return text
        time.sleep(0.5)


def artifact_texts(env: dict[str, str], key: str) -> list[str]:
    """Every version of the artifact `key`, newest first: its markdown (what `prefect artifact inspect` shows)."""
    found = api(env, "/artifacts/filter", {"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC"})
    assert isinstance(found, list), found
    return [str(a["data"]) for a in found]


def worker_log(repo: Path) -> str:
    """Everything every flow run of this project printed, subflows included (the `deployed` worker's output)."""
    return (repo.parent / "worker.log").read_text()


RETRAIN = "scheduled-retrain/scheduled-retrain"
