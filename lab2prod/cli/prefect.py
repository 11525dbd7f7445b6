"""`lab2prod prefect ...`: a local server, the deployments, a worker, a run.

The server and the worker are Prefect's own commands run as children: a SIGTERM, SIGINT or SIGHUP sent to
`lab2prod` is passed on to them (they sit in their own process group, so a terminal's Ctrl-C reaches them
once, through here; Prefect's command passes it on to its own processes), and `lab2prod` exits with their
exit code once they have stopped. Commands that talk
to a server check first that one answers, instead of letting Prefect start a temporary one of its own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from typing import Annotated

import typer

from lab2prod.cli.options import SetOpt, parse_overrides
from lab2prod.core.console import stage_entry
from lab2prod.core.dvc import dvc_env
from lab2prod.core.errors import ConfigError

log = logging.getLogger("lab2prod")

app = typer.Typer(
    help="Run the pipeline from Prefect: a local server, deployments, a worker, a run.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
)
POOL = "lab2prod-process"
DEPLOYMENTS = ("training-pipeline", "scheduled-retrain", "drift-monitor")
LOCAL_PORT = 4200
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

# Prefect's usage reporting, off unless the user set these: offline, a blocked report prints ERROR lines
# that read like failures of the run.
QUIET = {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def use_prefect() -> None:
    """Set Prefect's environment for this process and its children: no usage reporting (unless asked)."""
    for key, value in QUIET.items():
        os.environ.setdefault(key, value)


def server_url() -> str:
    """The API of the server Prefect's settings name, or the local one `lab2prod prefect server` starts;
    fails with what to do unless it answers."""
    import httpx

    use_prefect()
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        url = f"http://127.0.0.1:{LOCAL_PORT}/api"
        os.environ["PREFECT_API_URL"] = url  # the Prefect commands run below read it
        log.info("PREFECT_API_URL is not set: using the local server at %s", url)
    try:
        httpx.get(url.rstrip("/") + "/health", timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        raise ConfigError(
            f"no Prefect server answers at {url} ({exc.__class__.__name__}: {exc}). Start one with "
            f"`lab2prod prefect server` in another terminal, or point PREFECT_API_URL at yours "
            f"(`export PREFECT_API_URL=http://HOST:4200/api`)."
        ) from None
    return url


def run_child(cmd: list[str], env: dict[str, str] | None = None, grace_s: float | None = None) -> int:
    """Run `cmd` in its own process group and pass SIGINT/SIGTERM/SIGHUP on to it; its exit code.

    With `grace_s`, a child still running that long after the first signal is killed with everything in its
    group (Prefect's worker has been seen to hang in its own shutdown on a loaded machine)."""
    child = subprocess.Popen(cmd, env=env, process_group=0)
    deadline: list[threading.Timer] = []

    def kill_group() -> None:
        if child.poll() is None:
            log.warning("`%s` did not stop within %g s of the signal: killing it and its processes", cmd[2], grace_s)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)

    def forward(signum: int, _frame: object) -> None:
        # To the child alone: Prefect's own command passes it on to its server or worker process once
        # (a second copy sent to the whole group could leave the worker hanging in its shutdown).
        log.info("%s: passing it on to `%s`", signal.Signals(signum).name, " ".join(cmd[2:5]))
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)
        if grace_s is not None and not deadline:
            deadline.append(threading.Timer(grace_s, kill_group))
            deadline[0].daemon = True
            deadline[0].start()

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        return child.wait()
    finally:
        for timer in deadline:
            timer.cancel()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if child.poll() is None:  # this process is ending for another reason: take the child with it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
            child.wait()


@app.command("server")
@stage_entry
def server(port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = LOCAL_PORT) -> None:
    """Start a local Prefect server (SQLite in ~/.prefect); the UI is on http://127.0.0.1:PORT."""
    use_prefect()
    # SQLite waits this long for a lock (Prefect's default: 10 s): a machine busy training keeps the
    # server's writes waiting, and a state change that gives up fails the flow run.
    os.environ.setdefault("PREFECT_SERVER_DATABASE_TIMEOUT", "60")
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    raise typer.Exit(run_child(cmd))


@app.command("deploy")
@stage_entry
def deploy(
    pool: Annotated[str, typer.Option(help="Process work pool to create or reuse.")] = POOL,
    concurrency: Annotated[int, typer.Option(help="Flow runs at once in the pool.")] = 1,
) -> None:
    """Create the work pool (if missing) and register prefect.yaml's deployments with PREFECT_API_URL's server."""
    server_url()
    from flows.deploy import register_deployments

    register_deployments(pool, concurrency)


@app.command("worker")
@stage_entry
def worker(
    pool: Annotated[str, typer.Option(help="Work pool to take flow runs from.")] = POOL,
    grace: Annotated[
        float,
        typer.Option(min=1, help="Seconds a stopping worker may take (its flow runs finishing) before it is killed."),
    ] = 60.0,
) -> None:
    """Register the deployments, then run their flow runs on this machine until stopped (SIGTERM or Ctrl-C)."""
    server_url()
    from flows.deploy import register_deployments

    register_deployments(pool, 1)
    cmd = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool]
    raise typer.Exit(run_child(cmd, env=dvc_env(), grace_s=grace))


@app.command("run")
@stage_entry
def run(
    deployment: Annotated[str, typer.Argument(help=", ".join(DEPLOYMENTS) + ".")] = "training-pipeline",
    set_: SetOpt = None,
    watch: Annotated[bool, typer.Option(help="Follow the run until it ends.")] = True,
) -> None:
    """Start a run of a deployment on the server (a worker must be running) and follow it."""
    if deployment not in DEPLOYMENTS:
        raise ConfigError(f"deployment {deployment!r}: choose {', '.join(DEPLOYMENTS)}")
    overrides = parse_overrides(set_)
    server_url()
    cmd = [sys.executable, "-m", "prefect", "deployment", "run", f"{deployment}/{deployment}"]
    cmd += ["-p", f"overrides={json.dumps(overrides)}"] if overrides else []
    raise typer.Exit(run_child(cmd + (["--watch"] if watch else [])))
