"""Register this checkout's deployments with the Prefect server in PREFECT_API_URL.

Creates the process work pool if it is missing, caps it at one flow run at a time (both
deployments share one workspace, and DVC holds a repo lock), then `prefect deploy --all` with
prefect.yaml. Run by `lab2prod prefect deploy` (and `lab2prod prefect worker`).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from lab2prod.core.console import setup_logging

PROJECT_DIR = Path(__file__).resolve().parents[1]
log = logging.getLogger("flows.deploy")


def prefect(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "LAB2PROD_PROJECT_DIR": str(PROJECT_DIR)}
    proc = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", *args],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
    )
    if check and proc.returncode != 0:
        raise SystemExit(f"prefect {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def register_deployments(pool: str, concurrency: int) -> None:
    """Create the work pool (if missing), cap its concurrency and register prefect.yaml's deployments."""
    if prefect("work-pool", "inspect", pool, check=False).returncode != 0:
        prefect("work-pool", "create", pool, "--type", "process")
        log.info("created work pool %s", pool)
    prefect("work-pool", "set-concurrency-limit", pool, str(concurrency))
    out = prefect("deploy", "--all")
    log.info(
        "deployments registered from %s/prefect.yaml (pool %s, at most %d run at a time)",
        PROJECT_DIR,
        pool,
        concurrency,
    )
    for line in out.stdout.splitlines():
        if "prefect deployment run" in line or "Deployment '" in line:
            log.info(line.strip())


def main(
    pool: Annotated[str, typer.Option(help="Process work pool to create or reuse.")] = "lab2prod-process",
    concurrency: Annotated[int, typer.Option(help="Flow runs at once in the pool.")] = 1,
) -> None:
    """Create the work pool (if missing) and register prefect.yaml's deployments."""
    setup_logging()
    register_deployments(pool, concurrency)


if __name__ == "__main__":
    typer.run(main)
