"""The runs DVC keeps (the workspace, the commit it is on, every experiment of `lab2prod run -S` or `lab2prod
tune`), read from `dvc exp show --json` and cut down to what tells them apart: the settings whose values differ
between them and a few headline metrics. `dvc exp show` itself prints every setting and every metric (hundreds
of columns); `lab2prod runs` prints this instead.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab2prod.core.dvc import dvc_command, dvc_env
from lab2prod.core.errors import DataError
from lab2prod.core.layout import WORKSPACE

SUMMARY = WORKSPACE.summary.as_posix()  # the one metrics file dvc.yaml declares (lab2prod/core/summary.py)
# (column, metrics file, key): the headline figures of a run
HEADLINE = [
    ("val acc", SUMMARY, "val_acc"),
    ("test acc", SUMMARY, "test_acc"),
    ("beats baseline", SUMMARY, "deployable"),
]
# the stages' detailed records beside it (plain outputs in git): `lab2prod runs --compare` reads them too
DETAILS = tuple(
    path.as_posix()
    for path in (
        WORKSPACE.train_metrics / "metrics.json",
        WORKSPACE.evaluate_metrics,
        WORKSPACE.compress_metrics,
        WORKSPACE.benchmark,
    )
)


@dataclass
class Run:
    name: str
    rev: str
    commit: str = ""  # the full git revision ("workspace" for the working tree)
    params: dict[str, Any] = field(default_factory=dict)  # dotted key -> value
    metrics: dict[str, Any] = field(default_factory=dict)  # "file:dotted key" -> value
    served: str | None = None  # export's deployable default
    latency_ms: float | None = None  # its batch-1 p50
    error: str | None = None


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _run(state: dict[str, Any], name: str) -> Run:
    data = state.get("data") or {}
    params = flatten(((data.get("params") or {}).get("params.yaml") or {}).get("data") or {})
    metrics: dict[str, Any] = {}
    for path, record in (data.get("metrics") or {}).items():
        metrics.update({f"{path}:{k}": v for k, v in flatten((record or {}).get("data") or {}).items()})
    commit = str(state.get("rev", ""))
    run = Run(name=name, rev=commit[:7], commit=commit, params=params, metrics=metrics)
    run.served = metrics.get(f"{SUMMARY}:served")
    if run.served:
        run.latency_ms = metrics.get(f"{SUMMARY}:p50_ms")
    if state.get("error"):
        run.error = str((state["error"] or {}).get("msg", state["error"]))
    return run


def read_runs(project: Path) -> list[Run]:
    """The workspace, its baseline commit and their experiments, newest experiments first (as DVC lists them)."""
    proc = subprocess.run(
        dvc_command("exp", "show", "--json"), cwd=project, env=dvc_env(), capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise DataError(f"`dvc exp show` failed in {project}: {proc.stderr.strip()[-300:]}")
    runs: list[Run] = []
    for state in json.loads(proc.stdout or "[]"):
        runs.append(_run(state, state.get("name") or ("workspace" if state.get("rev") == "workspace" else "")))
        if not runs[-1].name:
            runs[-1].name = runs[-1].rev
        for group in state.get("experiments") or []:
            for rev in group.get("revs") or []:
                runs.append(_run(rev, group.get("name") or rev.get("name") or str(rev.get("rev", ""))[:7]))
    return runs


def differing_params(runs: list[Run]) -> list[str]:
    """The settings whose values are not the same in every run, in params.yaml's order."""
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.params if k not in keys]
    return [k for k in keys if len({json.dumps(r.params.get(k), sort_keys=True) for r in runs}) > 1]


def headline(run: Run, key: str) -> Any:
    return run.metrics.get(key)


def details(project: Path, run: Run) -> dict[str, Any]:
    """Every figure of the run's detailed records (DETAILS) as {"file:dotted key": value}: the workspace's from
    disk, a commit's or an experiment's from git (DVC commits each experiment's plain outputs)."""
    out: dict[str, Any] = {}
    for path in DETAILS:
        if run.commit == "workspace":
            text = (project / path).read_text() if (project / path).exists() else ""
        else:
            show = ["git", "show", f"{run.commit}:{path}"]
            text = subprocess.run(show, cwd=project, capture_output=True, text=True).stdout
        if text.strip():
            out.update({f"{path}:{k}": v for k, v in flatten(json.loads(text)).items()})
    return out


def find(runs: list[Run], name: str) -> Run:
    for run in runs:
        if name in (run.name, run.rev):
            return run
    raise DataError(f"no run named {name!r}; `lab2prod runs` lists them: {', '.join(r.name for r in runs)}")
