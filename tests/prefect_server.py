"""A real Prefect server on loopback for the tests: its own home, SQLite database and log file."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sandbox import project_env


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


def api(env: dict[str, str], path: str, body: dict | None = None) -> object:
    """POST `body` (or GET) to the server's REST API; the decoded JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(env["PREFECT_API_URL"] + path, data=data, headers={"Content-Type": "application/json"})
    for attempt in range(3):  # a server busy with a flow run's writes to SQLite can be slow to answer
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return json.loads(resp.read())
        except TimeoutError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def flow_runs(env: dict[str, str], deployment: str) -> list[dict]:
    """Every flow run of one deployment (by its name), oldest expected start first."""
    body = {"deployments": {"name": {"any_": [deployment]}}, "sort": "EXPECTED_START_TIME_ASC"}
    runs = api(env, "/flow_runs/filter", body)
    assert isinstance(runs, list)
    return runs
