"""`lab2prod prefect ...` as a user meets it: no server running, and stopping the server it wraps."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.prefect_server import free_port, wait_healthy
from tests.sandbox import make_project, project_env


@pytest.mark.parametrize("args", [["run"], ["deploy"], ["worker"]])
def test_without_a_server_it_says_so_and_starts_nothing(args: list[str], tmp_path: Path) -> None:
    repo = make_project(tmp_path / "project")
    url = f"http://127.0.0.1:{free_port()}/api"
    env = project_env(repo, PREFECT_HOME=str(tmp_path / "home"), PREFECT_API_URL=url)
    start = time.monotonic()
    proc = subprocess.run(["lab2prod", "prefect", *args], cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode != 0
    assert f"no Prefect server answers at {url}" in proc.stderr and "lab2prod prefect server" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    # Prefect's temporary server would have taken a database of its own in PREFECT_HOME
    assert not list((tmp_path / "home").glob("*.db")), "a temporary Prefect server was started"
    assert time.monotonic() - start < 60


def test_unset_api_url_means_the_local_server_not_a_temporary_one(tmp_path: Path) -> None:
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 4200)) == 0:
            pytest.skip("something listens on 127.0.0.1:4200 here")
    repo = make_project(tmp_path / "project")
    env = project_env(repo, PREFECT_HOME=str(tmp_path / "home"))
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.run(["lab2prod", "prefect", "run"], cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "no Prefect server answers at http://127.0.0.1:4200/api" in proc.stderr
    assert not list((tmp_path / "home").glob("*.db")), "a temporary Prefect server was started"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_server_stops_with_its_wrapper(sig: signal.Signals, tmp_path: Path) -> None:
    """A signal to `lab2prod prefect server` alone stops the Prefect server under it and frees the port."""
    port = free_port()
    home = tmp_path / "home"
    env = project_env(tmp_path, PREFECT_HOME=str(home), PREFECT_UI_ENABLED="false")
    log = tmp_path / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["lab2prod", "prefect", "server", "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            wait_healthy(port, proc, log)
            tree = psutil.Process(proc.pid).children(recursive=True)
            assert tree, "the wrapper runs the server as a child"
            proc.send_signal(sig)
            assert proc.wait(timeout=60) is not None
            _, alive = psutil.wait_procs(tree, timeout=30)
            assert not alive, f"left running: {[p.pid for p in alive]}\n{log.read_text()}"
        finally:
            if proc.poll() is None:
                proc.kill()
    with socket.socket() as s:  # nothing listens there any more (SO_REUSEADDR: closed connections may linger)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


HANGS = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a worker stuck in its shutdown: the signal changes nothing
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # a flow run it started
print("ready", flush=True)
time.sleep(600)
"""


def test_a_child_that_does_not_stop_within_its_grace_is_killed_with_its_processes(tmp_path: Path) -> None:
    """What `lab2prod prefect worker --grace` relies on: SIGTERM is passed on, and a child still running after
    the grace period is killed together with everything it started."""
    wrapper = (
        "import sys; from lab2prod.cli.prefect import run_child; "
        f"sys.exit(run_child([sys.executable, '-c', {HANGS!r}], grace_s=2))"
    )
    proc = subprocess.Popen([sys.executable, "-c", wrapper], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    family = psutil.Process(proc.pid).children(recursive=True)
    assert len(family) == 2  # the hanging child and its own child
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert time.monotonic() - start < 15 and proc.returncode != 0
    _, alive = psutil.wait_procs(family, timeout=10)
    assert not alive, alive
    assert "did not stop within 2 s of the signal" in proc.stderr.read()
