"""The fault matrix: a process killed with SIGKILL in the middle of registering, promoting or running any
stage, and a disk that fills up during a stage. After each: no half-written file where a reader looks, the
registry and its champion consistent, `dvc status` telling the truth, and the next run completes."""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.pipeline import push_until_in_sync
from lab2prod.registry.store import champion, champion_history, register, set_champion, verify, versions
from tests.conftest import LEAN_RUN, ROOT, TINY
from tests.sandbox import project_env, sh, up_to_date, write_params

LOOP = """
import sys, itertools
from pathlib import Path
from lab2prod.registry.store import register, set_champion
reg, project, what = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
for i in itertools.count():
    if what == "register":
        register(reg, project, {"note": "loop"}, None)
    else:
        set_champion(reg, "v0001" if i % 2 else "v0002", "loop")
"""


@pytest.fixture
def project(tmp_path: Path, tiny_run: dict[str, Any]) -> Path:
    return tiny_run["ws"].prepared.parent.parent


def _kill_repeatedly(cmd: list[str], times: int, check: Any) -> None:
    for k in range(times):
        proc = subprocess.Popen(cmd, cwd=ROOT)
        time.sleep(1.5 + 0.37 * k)  # start-up, then land somewhere different in the loop each time
        assert proc.poll() is None, "the writer stopped on its own"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        check()


def test_killing_a_promotion_never_leaves_a_broken_champion(project: Path, tmp_path: Path) -> None:
    reg = str(tmp_path / "registry")
    register(reg, project, {}, None)
    register(reg, project, {}, None)
    set_champion(reg, "v0001", "start")

    def consistent() -> None:
        current = champion(reg)
        assert current["version"] in ("v0001", "v0002") and len(current["onnx_sha256"]) == 64
        verify(reg, current["version"])
        history = champion_history(reg)
        assert [h["from"] for h in history[1:]] == [h["version"] for h in history[:-1]]
        assert history[-1]["version"] == current["version"]

    _kill_repeatedly([sys.executable, "-c", LOOP, reg, str(project), "promote"], 4, consistent)
    assert len(champion_history(reg)) > 4  # the loop really promoted between the kills
    set_champion(reg, "v0002", "after the kills")  # and the registry takes the next change
    assert champion(reg)["version"] == "v0002"


def test_killing_a_registration_leaves_only_complete_versions(project: Path, tmp_path: Path) -> None:
    reg = str(tmp_path / "registry")

    def complete() -> None:
        for v in versions(reg):  # a version exists only once its manifest is in place
            verify(reg, v)

    _kill_repeatedly([sys.executable, "-c", LOOP, reg, str(project), "register"], 3, complete)
    made = versions(reg)
    assert made and register(reg, project, {}, None) not in made  # the next one gets a fresh number


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def test_a_full_disk_during_a_stage_is_a_clear_error_and_the_previous_output_stays(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY))
    env = {"PYTHONPATH": str(ROOT), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    ingest = [sys.executable, "-m", "tasks.ingest"]
    first = subprocess.run(ingest, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    before = _digest(tmp_path / "data/prepared")
    changed = {**TINY, "ingest": {**TINY["ingest"], "image_size": 12}}  # every image decoded and written again
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(changed))

    def small_disk() -> None:  # writes past 200 KB fail (EFBIG), as on a full disk (ENOSPC)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    full = subprocess.run(
        ingest,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=small_disk,
    )
    assert full.returncode == 3 and "could not write" in full.stderr and "Traceback" not in full.stderr, full.stderr
    assert _digest(tmp_path / "data/prepared") == before
    again = subprocess.run(
        [sys.executable, "-m", "tasks.ingest"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert again.returncode == 0 and _digest(tmp_path / "data/prepared") != before


# Every stage's settings change at once; then each `dvc repro` is killed in the next stage (the ones before
# it completed in that same run), and a last one completes. Training's kill is tests/test_pipeline.py's
# (with a resume from the checkpoint).
CHANGES = {
    "ingest": {"cache": False},  # decodes every image again: long enough to be killed in
    "augment": {"seed": 8},
    "train": {"seed": 9},
    "evaluate": {"baseline_c": 2.0},
    "compress": {"seed": 3},
    "export": {"benchmark_calls": 30},
}
KILLED = ["ingest", "augment", "evaluate", "compress", "export"]


def _stage_process(parent: int, stage: str) -> Any:
    import psutil

    for p in psutil.Process(parent).children(recursive=True):
        try:
            if f"tasks.{stage}" in " ".join(p.cmdline()):
                return p
        except psutil.NoSuchProcess:
            continue
    return None


@pytest.mark.slow
def test_kill_9_during_each_stage_then_dvc_status_tells_the_truth_and_repro_completes(lean_repo: Path) -> None:
    repo = lean_repo  # every stage has run once (tests/conftest.py)
    write_params(repo, {**LEAN_RUN, **{k: {**LEAN_RUN.get(k, {}), **v} for k, v in CHANGES.items()}})
    for stage in KILLED:
        locked = yaml.safe_load((repo / "dvc.lock").read_text())["stages"][stage]
        proc = subprocess.Popen(
            ["dvc", "repro"],
            cwd=repo,
            env=project_env(repo),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # the stage's own process, half a second into its run
            running = _stage_process(proc.pid, stage)
            if running is not None and time.time() - running.create_time() > 0.5:
                break
            assert proc.poll() is None, f"dvc repro ended before {stage} could be killed"
            time.sleep(0.02)
        else:
            raise AssertionError(f"stage {stage} never started")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert yaml.safe_load((repo / "dvc.lock").read_text())["stages"][stage] == locked  # nothing recorded
        status = sh(repo, "dvc", "status").stdout
        assert f"{stage}:" in status, status  # DVC says the killed stage must run again
    sh(repo, "dvc", "repro")
    assert up_to_date(repo)

    # and `dvc push` to the remote killed part-way: the next push completes and the remote is in sync
    push = subprocess.Popen(
        ["dvc", "push"],
        cwd=repo,
        env=project_env(repo),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    os.killpg(push.pid, signal.SIGKILL)
    push.wait()
    push_until_in_sync(repo)  # what the flows push with: dvc push, checked by dvc status --cloud
    assert "in sync" in sh(repo, "dvc", "status", "--cloud").stdout


SLOW_STAGE = """
stages:
  slow:
    cmd: >-
      python -c "import subprocess, time; subprocess.Popen(['sleep', '300']);
      open('started', 'w').close(); time.sleep(300)"
    outs:
      - never-written
"""


def processes_in(folder: Path) -> dict[Any, str]:
    """The processes whose working directory is `folder` (this test's own excluded), with their command lines."""
    import psutil

    found = {}
    for p in psutil.process_iter(["pid", "cwd", "cmdline", "status"]):
        if p.info["pid"] != os.getpid() and p.info["cwd"] == str(folder) and p.info["status"] != "zombie":
            found[p] = " ".join(p.info["cmdline"] or [])
    return found


def test_kill_9_of_lab2prod_run_takes_dvc_and_its_stage_with_it(tmp_path: Path) -> None:
    repo = tmp_path.resolve()
    sh(repo, "git", "init", "-q")
    sh(repo, sys.executable, "-m", "dvc", "init", "-q")
    (repo / "dvc.yaml").write_text(SLOW_STAGE)
    run = subprocess.Popen(
        [sys.executable, "-m", "lab2prod.cli.main", "run"],
        cwd=repo,
        env=project_env(ROOT),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a group of its own, so that only the one process below is killed
    )
    deadline = time.monotonic() + 120
    while not (repo / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    running = list(processes_in(repo).values())
    assert any("dvc" in c for c in running) and "sleep 300" in running, running
    os.kill(run.pid, signal.SIGKILL)  # the lab2prod process alone: DVC, the stage and its child must follow
    run.wait()
    deadline = time.monotonic() + 30
    while processes_in(repo) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = processes_in(repo)
    for leftover in left:  # on failure, do not leave them running for the rest of the suite
        leftover.kill()
    assert not left, f"still running after lab2prod run was killed: {list(left.values())}"
