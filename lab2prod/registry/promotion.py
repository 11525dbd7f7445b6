"""One retraining decision: the challenger the workspace just built against the registry's champion.

Both served files are scored on the workspace's test split (`lab2prod.registry.gate.decide`); the challenger is
always registered as an immutable version with its lineage and the decision, and becomes champion
only if it passed. With no champion yet, a challenger that passed export's checks becomes the first
champion; one that did not is registered and the registry stays without a champion.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from lab2prod.core.files import read_json
from lab2prod.core.layout import Workspace
from lab2prod.core.lineage import git_commit
from lab2prod.core.settings import load_params
from lab2prod.registry.gate import decide, export_problem, verdict_problem
from lab2prod.registry.store import (
    ChampionChanged,
    champion,
    deployable_name,
    local_copy,
    manifest,
    register,
    set_champion,
)


def decide_and_register(
    project: Path, registry: str, overrides: dict[str, Any], log: logging.Logger | logging.LoggerAdapter
) -> dict[str, Any]:
    """Score challenger and champion, register the challenger, promote it if it passed. Returns the outcome."""
    ws = Workspace.under(project)
    params = load_params(project / "params.yaml")
    meta = read_json(ws.prepared / "meta.json")
    current = champion(registry)
    served = deployable_name(ws.benchmark)
    with tempfile.TemporaryDirectory() as scratch:  # a remote registry's champion file is downloaded
        champion_onnx = local_copy(registry, current["version"], current["onnx"], Path(scratch)) if current else None
        champion_rule = None
        if current and "data_meta.json" in manifest(registry, current["version"])["files"]:
            data_meta = local_copy(registry, current["version"], "data_meta.json", Path(scratch) / "meta")
            champion_rule = read_json(data_meta).get("split_rule")
        decision = decide(
            ws.exported / served,
            champion_onnx,
            ws.prepared,
            meta["classes"],
            params.retrain,
            checks_failed=verdict_problem(ws.evaluate_metrics) or export_problem(ws.export_metrics, served),
            champion_rule=champion_rule,
        )
    evaluate = read_json(ws.evaluate_metrics)
    lineage = {
        "dataset_hash": meta["dataset_hash"],
        "params_hash": params.section_hash(),
        "git_commit": git_commit(),
        "overrides": overrides,
        "decision": decision.as_dict(),
        "metrics": {k: evaluate[k] for k in ("accuracy", "f1_macro", "f1_weighted")},
    }
    previous = current["version"] if current else None
    version = register(registry, project, lineage, parent=previous)
    promoted, reason = decision.promote, decision.reason
    if promoted:
        try:  # compare-and-swap: only if the champion is still the one the challenger was compared with
            set_champion(registry, version, reason, expect=previous)
            log.info("PROMOTED %s: %s", version, reason)
        except ChampionChanged as exc:
            promoted, reason = False, f"{reason}; but not promoted: {exc}"
            log.warning("NOT PROMOTED %s: %s", version, reason)
    else:
        log.warning(
            "NOT PROMOTED %s, champion stays %s: %s", version, previous or "none (no champion yet)", decision.reason
        )
    now = champion(registry)
    return {
        "version": version,
        "promoted": promoted,
        "reason": reason,
        "served": served,
        "champion": now["version"] if now else None,
        "previous_champion": previous,
        "scores": decision.scores,
    }
