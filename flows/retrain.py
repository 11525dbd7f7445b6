"""Scheduled retraining that only promotes a better model.

    new data in -> ingest -> same dataset hash as the champion's? stop ("no new data")
    -> the training pipeline (every dvc.yaml stage, through DVC) -> gate: challenger vs champion on
    the same new test split -> register an immutable version (always, with lineage) -> promote it
    (atomic champion pointer) only if it passed the gate; otherwise the champion stays as it was.

New data: images added to `ingest.source` and labelled corrections dropped into the feedback inbox
(`ingest.extra_sources`, default data/feedback/<class>/<image>). Nothing of a failed or rejected run
becomes champion: the pointer is switched in one rename, at the very end, after every check.

    python -m flows.retrain
    prefect deployment run 'scheduled-retrain/scheduled-retrain'
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows.pipeline import PROJECT_DIR, reproduce_stage, training_pipeline
from tasks.artifacts import git_commit, read_json
from tasks.config import ConfigError, load_params
from tasks.gate import decide
from tasks.registry import champion, manifest, register, set_champion, versions


@task
def gate_and_register(project: Path, registry: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """Score challenger and champion on the new test split, register the challenger, promote if better."""
    logger = get_run_logger()
    params = load_params(project / "params.yaml")
    meta = read_json(project / "data/prepared/meta.json")
    current = champion(registry)
    champion_onnx = registry / "versions" / current["version"] / "model.onnx" if current else None
    decision = decide(project / "artifacts/export/model.onnx", champion_onnx, project / "data/prepared/test.npz",
                      meta["classes"], params.retrain)
    evaluate = read_json(project / "metrics/evaluate.json")
    lineage = {"dataset_hash": meta["dataset_hash"], "params_hash": params.section_hash(),
               "git_commit": git_commit(), "overrides": overrides, "decision": decision.as_dict(),
               "metrics": {k: evaluate[k] for k in ("accuracy", "f1_macro", "f1_weighted")}}
    version = register(registry, project, lineage, parent=current and current["version"])
    if decision.promote:
        set_champion(registry, version, decision.reason)
        logger.info("PROMOTED %s: %s", version, decision.reason)
    else:
        logger.warning("NOT PROMOTED %s, champion stays %s: %s", version, current["version"], decision.reason)
    return {"version": version, "promoted": decision.promote, "reason": decision.reason,
            "champion": champion(registry)["version"], "challenger_f1": decision.challenger_f1,
            "champion_f1": decision.champion_f1}


def _report_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """Failure hook: say plainly that nothing was promoted."""
    create_markdown_artifact(key="lab2prod-retrain-decision",
                             markdown=f"## Retraining failed\n\n{state.message}\n\nThe champion is unchanged.",
                             description="Retraining decision")


@flow(name="scheduled-retrain", on_failure=[_report_failure], on_crashed=[_report_failure])
def scheduled_retrain(overrides: dict[str, Any] | None = None, project_dir: str | None = None) -> dict[str, Any]:
    """Retrain on new data; promote the challenger only if it beats the champion.

    Args:
        overrides: settings for the challenger's run, dotted keys (e.g. {"train.epochs": 40}).
        project_dir: the project checkout (default: the one holding this file).
    """
    logger = get_run_logger()
    project = Path(project_dir or PROJECT_DIR).resolve()
    params = load_params(project / "params.yaml")
    registry = project / params.retrain.registry_dir
    current = champion(registry)

    # Sources live outside DVC's view (folders, buckets): ingest is always re-run; if the content is
    # the same, its outputs are byte-identical and DVC skips everything downstream anyway.
    reproduce_stage(project, "ingest", remote_source="://" in params.ingest.source, force=True)
    dataset_hash = read_json(project / "data/prepared/meta.json")["dataset_hash"]
    seen = {manifest(registry, v)["lineage"].get("dataset_hash") for v in versions(registry)}
    if current and dataset_hash in seen and not overrides:
        message = (f"No new data: dataset {dataset_hash[:12]} was already trained on (champion "
                   f"{current['version']}). Nothing trained, champion unchanged.")
        logger.info(message)
        create_markdown_artifact(key="lab2prod-retrain-decision", markdown=f"## No new data\n\n{message}",
                                 description="Retraining decision")
        return {"decision": "no new data", "champion": current["version"]}

    training_pipeline(overrides=overrides, project_dir=str(project))
    result = gate_and_register(project, registry, dict(overrides or {}))
    verdict = "PROMOTED" if result["promoted"] else "NOT PROMOTED"
    old_f1 = "–" if result["champion_f1"] is None else f"{100 * result['champion_f1']:.2f} %"
    create_markdown_artifact(
        key="lab2prod-retrain-decision",
        markdown="\n".join([
            f"## {verdict}: {result['version']}", "", result["reason"], "",
            "| | macro F1 on the new test split |", "|---|---|",
            f"| challenger {result['version']} | {100 * result['challenger_f1']:.2f} % |",
            f"| champion before this run | {old_f1} |", "",
            f"Champion now: **{result['champion']}**. Roll back with `python -m tasks.registry rollback`.",
        ]),
        description="Retraining decision")
    return {"decision": "promoted" if result["promoted"] else "rejected", **result}


if __name__ == "__main__":
    try:
        sys.stdout.write(json.dumps(scheduled_retrain(), indent=2) + "\n")
    except ConfigError as exc:
        sys.exit(f"invalid settings: {exc}")
