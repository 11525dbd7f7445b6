"""Scheduled retraining that only promotes a better model.

    new data in -> ingest -> dataset hash already trained on? stop ("no new data")
    -> the training pipeline (every dvc.yaml stage, through DVC; pushed to the DVC remote)
    -> gate: the challenger's served ONNX file vs the champion's, on the same new test split
    -> register an immutable version (always, with lineage) -> promote it (atomic champion pointer)
       only if it passed the gate; otherwise the champion stays as it was.

New data: images added to `ingest.source` and labelled corrections dropped into the feedback inbox
(`ingest.extra_sources`, default data/feedback/<class>/<image>). Nothing of a failed or rejected run
becomes champion: the pointer is switched in one rename, at the very end, after every check. The
run is a Prefect transaction: unless it promotes, its rollback puts the workspace back as it was.

    lab2prod retrain                       # once, now, no deployment needed
    lab2prod prefect run scheduled-retrain  # through the deployment (a worker must run)
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import TerminationSignal
from prefect.transactions import Transaction, get_transaction, transaction

from flows.pipeline import (
    PROJECT_DIR,
    has_remote,
    reproduce_stage,
    run_dvc,
    stop_stage_processes,
    training_pipeline,
    workspace_lock,
)
from lab2prod.core.errors import ConfigError
from lab2prod.core.files import read_json
from lab2prod.core.layout import Workspace
from lab2prod.core.settings import load_params
from lab2prod.core.storage import is_remote
from lab2prod.registry.promotion import decide_and_register
from lab2prod.registry.store import champion, location, manifest, versions

SNAPSHOT = Path(".dvc/tmp/lab2prod-snapshot")


def unrecoverable_by_dvc(project: Path) -> list[str]:
    """What `dvc checkout` cannot bring back: dvc.lock, params.yaml and the outputs DVC does not cache
    (metrics, plots, checkpoints: they live in git or nowhere)."""
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        uncached = {Path(out.fs_path).relative_to(project).as_posix() for out in repo.index.outs if not out.use_cache}
    return ["dvc.lock", "params.yaml", *sorted(uncached)]


@task
def snapshot_workspace(project: Path) -> list[str]:
    """Keep a copy of what the run may change and DVC's cache does not hold; the rollback hook puts it back."""
    snap = project / SNAPSHOT
    shutil.rmtree(snap, ignore_errors=True)
    snap.mkdir(parents=True)
    paths = unrecoverable_by_dvc(project)
    for rel in paths:
        src, dst = project / rel, snap / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst)
        elif src.exists():
            shutil.copy2(src, dst)
    txn = get_transaction()
    txn.set("project", str(project))
    txn.set("paths", paths)
    return paths


@snapshot_workspace.on_rollback
def restore_workspace(txn: Transaction) -> None:
    """Put the workspace back as the snapshot found it: the copied files, then `dvc checkout` for the
    cached outputs dvc.lock names (`dvc pull` for any the local cache lacks)."""
    logger = get_run_logger()
    project = Path(txn.get("project"))
    snap = project / SNAPSHOT
    stopped = stop_stage_processes(project)  # a cancelled run's stage must not write over what is put back
    if stopped:
        logger.info("stopped %d stage process(es) of this run before restoring: %s", len(stopped), stopped)
    for rel in txn.get("paths"):
        target, saved = project / rel, snap / rel
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        if saved.exists():
            saved.replace(target)
    rc, lines = run_dvc(project, "checkout", "--force", log_prefix="[restore] ")
    if rc != 0 and has_remote(project):
        rc, lines = run_dvc(project, "pull", "--force", log_prefix="[restore] ")
    if rc != 0:
        raise RuntimeError(
            "the workspace's files are back, but DVC could not check out every output dvc.lock "
            "names (see the lines above); run `dvc pull` or `dvc repro`"
        )
    shutil.rmtree(snap, ignore_errors=True)
    logger.info("workspace restored to its state before this run (dvc.lock, params.yaml, outputs)")


@snapshot_workspace.on_commit
def drop_snapshot(txn: Transaction) -> None:
    shutil.rmtree(Path(txn.get("project")) / SNAPSHOT, ignore_errors=True)


def _put_back(txn: Transaction) -> None:
    """Roll the transaction back; Prefect logs a failing hook and goes on, so fail the run here."""
    if not txn.rollback():
        raise RuntimeError("the workspace could not be restored to its state before this run: see the log")


@task
def gate_and_register(project: Path, registry: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Score challenger and champion on the new test split, register the challenger, promote if better."""
    return decide_and_register(project, registry, overrides, get_run_logger())


def _report_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """Failure and crash hook: say plainly that nothing was promoted, and what became of the workspace."""
    workspace = (
        "The workspace was put back as the run found it."
        if state.is_failed()
        else "The run was stopped before it could restore the workspace; the next run starts from it "
        "(and resumes training from its last checkpoint)."
    )
    markdown = f"## Retraining failed\n\n{state.message}\n\nThe champion is unchanged. {workspace}"
    create_markdown_artifact(key="lab2prod-retrain-decision", markdown=markdown, description="Retraining decision")


def _decision_report(result: dict[str, Any]) -> str:
    """The verdict, its reason, and both models' metrics on the same new test split, side by side."""
    verdict = "PROMOTED" if result["promoted"] else "NOT PROMOTED"
    new, old = result["scores"]["challenger"], result["scores"].get("champion")
    lines = [
        f"## {verdict}: {result['version']}",
        "",
        result["reason"],
        "",
        f"Both models' served files on the new test split (challenger: `{result['served']}`).",
        "",
    ]
    if old is None:
        lines += ["| metric | challenger |", "|---|---|"]
        lines += [f"| {k} | {100 * v:.2f} % |" for k, v in new.items()]
    else:
        lines += [
            f"| metric | champion {result['previous_champion']} | challenger {result['version']} | change |",
            "|---|---|---|---|",
        ]
        changed = [k for k in new if k in ("accuracy", "f1_macro") or new[k] != old[k]]
        lines += [
            f"| {k} | {100 * old[k]:.2f} % | {100 * new[k]:.2f} % | {100 * (new[k] - old[k]):+.2f} pt |"
            for k in changed
        ]
        if len(changed) < len(new):
            others = len(new) - len(changed)
            lines.append(f"| recall of {others} other class{'es' if others > 1 else ''} | unchanged | unchanged | |")
    now = result["champion"] or "none yet"
    lines += ["", f"Champion now: **{now}**. Roll back with `lab2prod registry rollback`."]
    return "\n".join(lines)


@flow(name="scheduled-retrain", on_failure=[_report_failure], on_crashed=[_report_failure])
def scheduled_retrain(
    overrides: dict[str, Any] | None = None, project_dir: str | None = None, lock_timeout_s: float = 6 * 3600
) -> dict[str, Any]:
    """Retrain on new data; promote the challenger only if it beats the champion.

    Unless a new champion is promoted, the run leaves the workspace as it found it (a Prefect
    transaction whose rollback restores dvc.lock, params.yaml and the outputs).

    Args:
        overrides: settings for the challenger's run, dotted keys (e.g. {"train.epochs": 40}).
        project_dir: the project checkout (default: the one holding this file).
        lock_timeout_s: how long to wait for another pipeline run in the same workspace to finish.
    """
    logger = get_run_logger()
    project = Path(project_dir or PROJECT_DIR).resolve()
    params = load_params(project / "params.yaml")
    registry = location(project, params.retrain.registry_dir)

    champion_at_start = champion(registry)
    try:
        with workspace_lock(project, lock_timeout_s), transaction() as txn:
            snapshot_workspace(project)
            current = champion(registry)
            # Sources live outside DVC's view (folders, buckets): the sources stage lists them (always) and
            # ingest re-runs regardless; on the same content its outputs are byte-identical and DVC skips
            # everything downstream anyway.
            remote = is_remote(params.ingest.source)
            reproduce_stage(project, "sources", remote_source=remote)
            reproduce_stage(project, "ingest", remote_source=remote, force=True)
            dataset_hash = read_json(Workspace.under(project).prepared / "meta.json")["dataset_hash"]
            seen = {manifest(registry, v)["lineage"].get("dataset_hash") for v in versions(registry)}
            if current and dataset_hash in seen and not overrides:
                message = (
                    f"No new data: dataset {dataset_hash[:12]} was already trained on (champion "
                    f"{current['version']}). Nothing trained, champion unchanged."
                )
                logger.info(message)
                create_markdown_artifact(
                    key="lab2prod-retrain-decision",
                    markdown=f"## No new data\n\n{message}",
                    description="Retraining decision",
                )
                _put_back(txn)
                return {"decision": "no new data", "champion": current["version"]}

            training_pipeline(overrides=overrides, project_dir=str(project), lock_timeout_s=lock_timeout_s)
            result = gate_and_register(project, registry, dict(overrides or {}))
            if not result["promoted"]:
                _put_back(txn)
    except TerminationSignal:  # cancelled (from the UI or `prefect flow-run cancel`): the transaction rolled back
        restored = not (project / SNAPSHOT).exists()
        workspace = (
            "The workspace was put back as the run found it (params.yaml, dvc.lock, outputs)."
            if restored
            else f"The workspace could not be fully restored: see the log; its copy is in {SNAPSHOT}."
        )
        now = champion(registry)
        verdict = (
            "Nothing was promoted: the champion is unchanged."
            if now == champion_at_start
            else f"The cancel came after {now and now['version']} was promoted; it stays champion "
            "(`lab2prod registry rollback` undoes it)."
        )
        create_markdown_artifact(
            key="lab2prod-retrain-decision",
            markdown=f"## Retraining cancelled\n\nThe run was cancelled before it finished. {verdict} {workspace}",
            description="Retraining decision",
        )
        raise
    create_markdown_artifact(
        key="lab2prod-retrain-decision", markdown=_decision_report(result), description="Retraining decision"
    )
    return {"decision": "promoted" if result["promoted"] else "rejected", **result}


if __name__ == "__main__":
    try:
        sys.stdout.write(json.dumps(scheduled_retrain(), indent=2) + "\n")
    except ConfigError as exc:
        sys.exit(str(exc))
