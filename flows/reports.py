"""What a pipeline run shows in the Prefect UI: metrics table, diff against the previous run, outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact

METRIC_FILES = ("metrics/evaluate.json", "metrics/export.json", "metrics/train/metrics.json")
HEADLINE = ("accuracy", "precision_macro", "recall_macro", "f1_macro", "f1_weighted", "baseline.accuracy")
OUTPUTS = {
    "ONNX model": "artifacts/export/model.onnx",
    "weights-only PyTorch model": "artifacts/train/model.pt",
    "confusion matrix": "plots/confusion_matrix.png",
    "augmentation preview": "plots/augment_preview.png",
    "evaluation metrics": "metrics/evaluate.json",
    "quarantined files": "data/prepared/quarantine/report.json",
}


def flatten(obj: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of nested metrics as {"a.b.c": value}."""
    if isinstance(obj, dict):
        out: dict[str, float] = {}
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return {prefix.rstrip("."): float(obj)}
    return {}


def metrics_snapshot(project: Path) -> dict[str, float]:
    """Every numeric metric the pipeline has written, keyed `file:path.to.value`."""
    snapshot: dict[str, float] = {}
    for name in METRIC_FILES:
        path = project / name
        if path.exists():
            snapshot.update({f"{name}:{k}": v for k, v in flatten(json.loads(path.read_text())).items()})
    return snapshot


def metrics_table(evaluate: dict[str, Any]) -> str:
    verdict = evaluate.get("verdict")
    rows = [f"**Verdict**: {verdict['line']}", ""] if verdict else []
    rows += ["| metric | value |", "|---|---|"]
    flat = flatten(evaluate)
    rows += [f"| {k} | {flat[k]:.4f} |" for k in HEADLINE if k in flat]
    rows += ["", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for cls, m in evaluate.get("per_class", {}).items():
        rows.append(f"| {cls} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |")
    return "\n".join(rows)


def diff_table(before: dict[str, float], after: dict[str, float]) -> str:
    """Changed metrics only; per-class entries left out to keep it readable."""
    keys = sorted(k for k in set(before) | set(after) if ".per_class." not in f".{k}" and before.get(k) != after.get(k))
    if not keys:
        return "No metric changed since the previous run."
    rows = ["| metric | previous | this run | change |", "|---|---|---|---|"]
    for k in keys:
        old, new = before.get(k), after.get(k)
        change = f"{new - old:+.4g}" if old is not None and new is not None else "new" if old is None else "gone"
        rows.append(
            f"| {k} | {'' if old is None else f'{old:.4g}'} | {'' if new is None else f'{new:.4g}'} | {change} |"
        )
    return "\n".join(rows)


def publish_run_report(
    project: Path,
    before: dict[str, float],
    stages: list[dict[str, Any]],
    overrides: dict[str, Any],
    experiment: str | None,
) -> None:
    """Three markdown artifacts on the flow run: metrics, metrics diff, stages and outputs."""
    evaluate_file = project / "metrics/evaluate.json"
    if evaluate_file.exists():
        create_markdown_artifact(
            key="lab2prod-metrics",
            markdown=metrics_table(json.loads(evaluate_file.read_text())),
            description="Test-split metrics of this run's model",
        )
    create_markdown_artifact(
        key="lab2prod-metrics-diff",
        markdown=diff_table(before, metrics_snapshot(project)),
        description="Metrics versus the workspace before this run",
    )
    lines = ["| stage | ran | seconds |", "|---|---|---|"]
    lines += [f"| {s['stage']} | {'yes' if s['ran'] else 'skipped (unchanged)'} | {s['seconds']} |" for s in stages]
    lines += ["", f"Settings overridden: `{json.dumps(overrides)}`" if overrides else "", ""]
    if experiment:
        lines += [f"DVC experiment: {experiment}", ""]
    lines += ["| output | where |", "|---|---|"]
    lines += [f"| {label} | `{project / rel}` |" for label, rel in OUTPUTS.items() if (project / rel).exists()]
    create_markdown_artifact(key="lab2prod-run", markdown="\n".join(lines), description="Stages and output files")
