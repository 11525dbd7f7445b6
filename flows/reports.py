"""What a pipeline run shows in the Prefect UI: metrics table, diff against the previous run, outputs."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact

from lab2prod.core.layout import WORKSPACE
from lab2prod.registry.store import deployable_name

METRIC_FILES = ("metrics/evaluate.json", "metrics/export.json", "metrics/train/metrics.json")
HEADLINE = ("accuracy", "precision_macro", "recall_macro", "f1_macro", "f1_weighted", "baseline.accuracy")
# What a run leaves for people to open, relative to the project (the worker's absolute paths mean nothing in a
# browser on another machine); the deployable ONNX file is added by name, it depends on the run.
OUTPUTS = {
    "model card": WORKSPACE.exported / "model_card.md",
    "report (offline HTML)": WORKSPACE.exported / "report.html",
    "results picture": WORKSPACE.exported / "results.png",
    "weights-only PyTorch model": WORKSPACE.train_dir / "model.pt",
    "confusion matrix": WORKSPACE.confusion_png,
    "augmentation preview": WORKSPACE.augment_preview,
    "evaluation metrics": WORKSPACE.evaluate_metrics,
    "quarantined files": WORKSPACE.prepared / "quarantine/report.json",
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


def outputs_table(project: Path) -> list[str]:
    """The run's files worth opening, relative to the project, the ONNX file it would serve first."""
    deployable = WORKSPACE.exported / deployable_name(project / WORKSPACE.benchmark)
    rows = {"deployable ONNX model (what the registry would serve)": deployable, **OUTPUTS}
    lines = ["| output | where |", "|---|---|"]
    return lines + [f"| {label} | `{rel.as_posix()}` |" for label, rel in rows.items() if (project / rel).exists()]


def results_markdown(project: Path) -> str | None:
    """export's results.png (curves, confusion, test images with their predictions, the variants) inlined as a
    data URI, so the Prefect UI shows the picture itself; None where export has not written one."""
    rel = WORKSPACE.exported / "results.png"
    if not (project / rel).exists():
        return None
    data = base64.b64encode((project / rel).read_bytes()).decode()
    return f"![results of this run](data:image/png;base64,{data})\n\n`{rel.as_posix()}`"


def publish_run_report(
    project: Path,
    before: dict[str, float],
    stages: list[dict[str, Any]],
    overrides: dict[str, Any],
    experiment: str | None,
) -> None:
    """Markdown artifacts on the flow run: metrics, metrics diff, the results picture, stages and outputs."""
    evaluate_file = project / WORKSPACE.evaluate_metrics
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
    if (picture := results_markdown(project)) is not None:
        create_markdown_artifact(key="lab2prod-results", markdown=picture, description="How this run's model did")
    lines = ["| stage | ran | seconds |", "|---|---|---|"]
    lines += [f"| {s['stage']} | {'yes' if s['ran'] else 'skipped (unchanged)'} | {s['seconds']} |" for s in stages]
    lines += ["", f"Settings overridden: `{json.dumps(overrides)}`" if overrides else "", ""]
    if experiment:
        lines += [f"DVC experiment: {experiment}", ""]
    lines += outputs_table(project)
    create_markdown_artifact(key="lab2prod-run", markdown="\n".join(lines), description="Stages and output files")
