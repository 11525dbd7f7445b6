"""The Prefect flow that drives dvc.yaml: one Prefect task per DVC stage, never a second pipeline.

The stage graph is read from DVC; each task runs `dvc repro --single-item <stage>`, so DVC decides
skip or run and writes dvc.lock exactly as `dvc repro` would, and the stage's output streams into
the Prefect run log. Setting overrides are validated against the config schema before anything
runs, applied to params.yaml (comments kept) and the finished run is saved as a DVC experiment, so
`dvc exp show` compares it with every other run.

    python -m flows.pipeline                                    # run once, locally, no deployment
    prefect deployment run 'training-pipeline/training-pipeline' -p overrides='{"train.epochs": 5}'
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import networkx as nx
import yaml
from filelock import FileLock, Timeout
from prefect import flow, get_run_logger, task
from prefect.client.schemas.objects import TaskRun
from prefect.exceptions import MissingContextError
from prefect.states import State
from ruamel.yaml import YAML

from flows.reports import metrics_snapshot, publish_run_report
from lab2prod.core.dvc import dvc_command, dvc_env
from lab2prod.core.errors import ConfigError, DataError
from lab2prod.core.procs import process_group
from lab2prod.core.settings import load_params, set_dotted
from lab2prod.core.storage import is_remote

PROJECT_DIR = Path(__file__).resolve().parents[1]
# Stages whose failures can be passing I/O trouble (a remote source); every other failure is a
# property of the data, the settings or the code, and a retry would fail the same way.
IO_STAGES = {"sources", "ingest"}
SETTINGS_OR_DATA_ERROR = DataError.exit_code  # a stage that rejected its settings or data (lab2prod/core/errors.py)


class StageFailed(RuntimeError):
    """A DVC stage exited non-zero; its own error is in the lines logged just before."""

    def __init__(self, stage: str, returncode: int, tail: list[str], transient: bool) -> None:
        detail = "\n".join(tail)
        super().__init__(f"stage '{stage}' failed (exit {returncode}):\n{detail}")
        self.stage, self.returncode, self.transient = stage, returncode, transient


def run_dvc(project: Path, *args: str, log_prefix: str = "") -> tuple[int, list[str]]:
    """Run a DVC command, streaming each line of its output to the run logger (outside a flow run: this
    module's logger). Returns (rc, lines)."""
    try:
        logger = get_run_logger()
    except MissingContextError:
        logger = logging.getLogger("flows.pipeline")
    lines: list[str] = []
    # its own process group, which a watchdog stops if this process dies (even by SIGKILL): no orphan stage
    with process_group(
        dvc_command(*args),
        cwd=project,
        env=dvc_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    ) as proc:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                line = line.rstrip()
                if line:
                    lines.append(line)
                    logger.info("%s%s", log_prefix, line)
        except BaseException:  # cancelled (SIGTERM) or interrupted: DVC and its stage must be gone before anything
            proc.terminate()  # restores files, or a stage still finishing would write over what was restored
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            stop_stage_processes(project)
            raise
        return proc.wait(), lines


def stop_stage_processes(project: Path, timeout_s: float = 20) -> list[int]:
    """SIGKILL every stage process (`python -m tasks.<stage>`) running in `project` and wait until they are gone;
    returns their pids. A stage whose DVC parent died is re-parented and would otherwise finish on its own
    (Lightning, for one, saves its logs on SIGTERM). Reads /proc: a no-op where there is none."""
    proc_root = Path("/proc")
    if not proc_root.is_dir():
        return []
    found = []
    for entry in proc_root.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        if cwd == project.resolve() and any(a.startswith(b"tasks.") for a in argv):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
                found.append(int(entry.name))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any((proc_root / str(pid)).exists() and _alive(pid) for pid in found):
        time.sleep(0.05)
    return found


def _alive(pid: int) -> bool:
    """Not yet reaped and not a zombie."""
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def stage_order(project: Path) -> list[str]:
    """dvc.yaml's stages in dependency order (ties broken by their order in dvc.yaml)."""
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        stages = {s: s.addressing for s in graph.nodes}
    declared = list(yaml.safe_load((project / "dvc.yaml").read_text())["stages"])
    run_graph = nx.relabel_nodes(graph.reverse(), stages)
    return list(
        nx.lexicographical_topological_sort(run_graph, key=lambda s: f"{declared.index(s):04d}" if s in declared else s)
    )


def _retry_if_transient(task: Any, task_run: TaskRun, state: State) -> bool:
    return bool(getattr(state.result(raise_on_failure=False), "transient", False))


@task(task_run_name="{stage}", retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=_retry_if_transient)
def reproduce_stage(project: Path, stage: str, remote_source: bool, force: bool = False) -> dict[str, Any]:
    """`dvc repro --single-item <stage>`: DVC skips it if nothing changed, else runs it and locks it.

    `force` runs it even if DVC sees no change (for inputs DVC cannot see, like an image folder).
    """
    start = time.perf_counter()
    args = ["repro", "--single-item", stage] + (["--force"] if force else [])
    rc, lines = run_dvc(project, *args, log_prefix=f"[{stage}] ")
    if rc != 0:
        # DVC exits 255 whatever the stage did; the stage's own exit code is in its message.
        codes = [int(m.group(1)) for line in lines if (m := re.search(r"exited with (-?\d+)", line))]
        stage_rc = codes[-1] if codes else rc
        transient = stage in IO_STAGES and remote_source and stage_rc != SETTINGS_OR_DATA_ERROR
        raise StageFailed(stage, stage_rc, list(deque(lines, maxlen=15)), transient)
    ran = any(line.startswith(f"Running stage '{stage}'") for line in lines)
    return {"stage": stage, "ran": ran, "seconds": round(time.perf_counter() - start, 2)}


def push_until_in_sync(project: Path, attempts: int = 3) -> int:
    """`dvc push`, then `dvc status --cloud` to check the remote really holds everything; push again while it
    does not. Returns the pushes made. A push after one that was killed part-way has been seen (once, on a loaded
    2-core machine, tests/test_faults.py) to report success and leave objects out: the check catches that."""
    for attempt in range(1, attempts + 1):
        rc, lines = run_dvc(project, "push", log_prefix="[push] ")
        if rc != 0:
            raise RuntimeError("dvc push failed:\n" + "\n".join(lines[-10:]))
        rc, lines = run_dvc(project, "status", "--cloud", log_prefix="[push] ")
        if rc == 0 and any("in sync" in line for line in lines):
            return attempt
        logging.getLogger("flows.pipeline").warning("dvc push: the remote still misses objects; pushing again")
    raise RuntimeError(f"dvc push: the remote is still out of sync after {attempts} pushes:\n" + "\n".join(lines[-10:]))


@task(retries=3, retry_delay_seconds=[5, 30, 120])
def push_to_remote(project: Path) -> None:
    """Send data and models to the default DVC remote (network I/O: worth retrying), checked."""
    push_until_in_sync(project)


@task
def save_experiment(project: Path, name: str | None) -> str:
    """Record the finished run as a DVC experiment (`dvc exp show` lists it beside the others)."""
    args = ["exp", "save", "--force"] + (["--name", name] if name else [])
    rc, lines = run_dvc(project, *args, log_prefix="[exp] ")
    if rc != 0:
        raise RuntimeError("dvc exp save failed:\n" + "\n".join(lines[-10:]))
    return lines[-1] if lines else ""


def write_overrides(params_file: Path, overrides: dict[str, Any]) -> None:
    """Set dotted keys in params.yaml in place, keeping its comments (as `dvc exp run -S` does)."""
    rt = YAML()
    rt.preserve_quotes = True
    data = rt.load(params_file.read_text())
    for dotted, value in overrides.items():
        set_dotted(data, dotted, value)
    tmp = params_file.with_suffix(".yaml.tmp")
    with tmp.open("w") as fh:
        rt.dump(data, fh)
    tmp.replace(params_file)


@contextmanager
def workspace_lock(project: Path, timeout_s: float) -> Iterator[None]:
    """One run at a time per workspace, across processes; re-entrant within one (a flow that calls
    the pipeline flow holds it throughout)."""
    path = project / ".dvc" / "tmp" / "lab2prod-pipeline.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), thread_local=False, is_singleton=True)
    try:
        lock.acquire(timeout=timeout_s)
    except Timeout:
        raise RuntimeError(f"another pipeline run held {project} for {timeout_s:.0f} s; not started") from None
    try:
        yield
    finally:
        lock.release()


def has_remote(project: Path) -> bool:
    proc = subprocess.run(dvc_command("remote", "list"), cwd=project, env=dvc_env(), capture_output=True, text=True)
    return proc.returncode == 0 and bool(proc.stdout.strip())


@flow(name="training-pipeline", log_prints=True)
def training_pipeline(
    overrides: dict[str, Any] | None = None,
    experiment_name: str | None = None,
    project_dir: str | None = None,
    push: bool = True,
    lock_timeout_s: float = 6 * 3600,
) -> dict[str, Any]:
    """Run every dvc.yaml stage in dependency order, each as its own task, through DVC.

    Args:
        overrides: settings to change for this run, dotted keys, e.g. {"train.epochs": 5}; the run is
            then saved as a DVC experiment.
        experiment_name: name for that experiment (DVC picks one if empty).
        project_dir: the project checkout to run in (default: the one holding this file).
        push: `dvc push` to the default remote afterwards, if one is configured.
        lock_timeout_s: how long to wait for another pipeline run in the same workspace to finish.
    """
    logger = get_run_logger()
    project = Path(project_dir or PROJECT_DIR).resolve()
    overrides = dict(overrides or {})
    params_file = project / "params.yaml"
    params = load_params(params_file, overrides)

    with workspace_lock(project, lock_timeout_s):
        before = metrics_snapshot(project)
        original_params = params_file.read_bytes()
        if overrides:
            write_overrides(params_file, overrides)
            logger.info("settings for this run: %s", overrides)
        remote_source = is_remote(params.ingest.source)
        stages = stage_order(project)
        logger.info("stages in order: %s", " -> ".join(stages))
        results = []
        try:
            for stage in stages:
                results.append(reproduce_stage(project, stage, remote_source))
        except StageFailed:
            if overrides:  # nothing of a failed override run stays in the settings file
                params_file.write_bytes(original_params)
            raise
        experiment = save_experiment(project, experiment_name) if overrides else None
        if push and has_remote(project):
            push_to_remote(project)
        publish_run_report(project, before, results, overrides, experiment)
    return {"stages": results, "experiment": experiment}


if __name__ == "__main__":
    try:
        training_pipeline()
    except ConfigError as exc:
        sys.exit(str(exc))
