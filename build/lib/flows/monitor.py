"""The drift monitor: compare what the served champion sees with its test split, count new feedback, and
start the `scheduled-retrain` deployment when either says so (lab2prod/monitor/check.py has the rules).

    lab2prod monitor                                     # one check here; prints the report
    prefect deployment run 'drift-monitor/drift-monitor'  # through the deployment (hourly by prefect.yaml)

Each run leaves `reports/drift/drift.json` and `drift.png` and a Prefect markdown artifact
(`lab2prod-drift`). The retraining run it starts is an ordinary run of the scheduled-retrain deployment:
it ingests the new data (feedback included) and promotes only a challenger that beats the champion.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.pipeline import PROJECT_DIR
from lab2prod.core.errors import ConfigError
from lab2prod.core.settings import load_params
from lab2prod.monitor import check as monitoring


@flow(name="drift-monitor", log_prints=False)
def drift_monitor(project_dir: str | None = None, trigger: bool = True) -> dict[str, Any]:
    """Check for drift and new feedback; start the retraining deployment if needed and `trigger` is true.

    Args:
        project_dir: the project checkout (default: the one holding this file).
        trigger: start the retraining deployment when the check asks for it (false: report only).
    """
    logger = get_run_logger()
    project = Path(project_dir or PROJECT_DIR).resolve()
    params = load_params(project / "params.yaml")
    report = monitoring.check(params, project)
    verdict = report["drift"]
    logger.info(
        "champion %s: %s (%s); %d new labelled correction(s)",
        report.get("champion"),
        "DRIFT" if verdict.get("drift") else "no drift",
        verdict.get("why"),
        report["feedback"]["new"],
    )
    if report["retrain"]["needed"] and trigger:
        from prefect.deployments import run_deployment

        run = run_deployment(
            params.monitor.retrain_deployment,
            timeout=0,  # start it and return: the retraining run is its own flow run
            tags=["lab2prod", "triggered-by-monitor"],
            as_subflow=False,
        )
        report["retrain"]["flow_run"] = str(run.id)
        monitoring.record_trigger(params, project, str(run.id))
        logger.info(
            "started %s (flow run %s): %s",
            params.monitor.retrain_deployment,
            run.id,
            "; ".join(report["retrain"]["reasons"]),
        )
    elif report["retrain"]["needed"]:
        logger.info("retraining needed (%s); not started (trigger=false)", "; ".join(report["retrain"]["reasons"]))
    create_markdown_artifact(key="lab2prod-drift", markdown=monitoring.markdown(report), description="Drift check")
    return report


if __name__ == "__main__":
    try:
        sys.stdout.write(json.dumps(drift_monitor(), indent=2, default=str) + "\n")
    except ConfigError as exc:
        sys.exit(str(exc))
