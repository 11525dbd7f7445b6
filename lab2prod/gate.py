"""Champion vs challenger: both ONNX models scored on the same test split; promote only if better.

The challenger must gain at least `retrain.min_f1_gain` points of macro F1 and no class may lose
more than `retrain.max_class_recall_drop` points of recall.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lab2prod.dataset import load_split
from lab2prod.files import read_json
from lab2prod.metrics import classification_metrics
from lab2prod.onnx_model import onnx_top1
from lab2prod.settings import RetrainConfig


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    recall_drops: dict[str, float]
    # both models on the same test split: {"challenger"|"champion": {"accuracy", "f1_macro", "recall.<class>"}}
    scores: dict[str, dict[str, float]]

    @property
    def challenger_f1(self) -> float:
        return self.scores["challenger"]["f1_macro"]

    @property
    def champion_f1(self) -> float | None:
        return self.scores["champion"]["f1_macro"] if "champion" in self.scores else None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def score(onnx_file: Path, x: torch.Tensor, y_true: np.ndarray, classes: list[str]) -> dict[str, float]:
    """Accuracy, macro F1 and per-class recall of an ONNX model's top-1 predictions."""
    m = classification_metrics(y_true, onnx_top1(onnx_file, x), classes)
    return {
        "accuracy": m["accuracy"],
        "f1_macro": m["f1_macro"],
        **{f"recall.{c}": per_class["recall"] for c, per_class in m["per_class"].items()},
    }


def export_problem(export_metrics: Path, onnx_name: str) -> str | None:
    """Why the challenger's served file is not known to have passed export's checks, or None.

    The export stage records a file in metrics/export.json only once it passed every check (ONNX
    checker, logits against PyTorch within export.atol, INT8 top-1 agreement); a failed check fails
    the stage and writes nothing.
    """
    if not export_metrics.exists():
        return f"{export_metrics} is missing: the export checks did not run"
    checked = {record["file"] for record in read_json(export_metrics).get("files", {}).values()}
    if onnx_name not in checked:
        return f"{onnx_name} is not among the files that passed export's checks ({', '.join(sorted(checked))})"
    return None


def decide(
    challenger_onnx: Path,
    champion_onnx: Path | None,
    prepared: Path,
    classes: list[str],
    cfg: RetrainConfig,
    checks_failed: str | None = None,
) -> Decision:
    """Score both models on the test split of the `prepared` data; the verdict and its reason in words.

    `checks_failed` (from `export_problem`) rejects the challenger whatever its scores.
    """
    x, y = load_split(prepared, "test")
    y_true = y.numpy()
    new = score(challenger_onnx, x, y_true, classes)
    if checks_failed:
        return Decision(False, f"compression/export checks: {checks_failed}", {}, {"challenger": new})
    if champion_onnx is None:
        return Decision(True, "no champion yet: the first model becomes champion", {}, {"challenger": new})
    old = score(champion_onnx, x, y_true, classes)
    scores = {"challenger": new, "champion": old}
    drops = {
        c: round(100 * (old[f"recall.{c}"] - new[f"recall.{c}"]), 4)
        for c in classes
        if old[f"recall.{c}"] > new[f"recall.{c}"]
    }
    gain = 100 * (new["f1_macro"] - old["f1_macro"])
    f1s = f"macro F1 {100 * new['f1_macro']:.2f} vs champion {100 * old['f1_macro']:.2f}"
    reasons = []
    if gain < cfg.min_f1_gain:
        reasons.append(f"{f1s}: gain {gain:+.2f} points < retrain.min_f1_gain = {cfg.min_f1_gain}")
    worst = max(drops.items(), key=lambda kv: kv[1], default=None)
    if worst and worst[1] > cfg.max_class_recall_drop:
        reasons.append(
            f"class '{worst[0]}' recall drops {worst[1]:.2f} points > retrain.max_class_recall_drop = "
            f"{cfg.max_class_recall_drop}"
        )
    if reasons:
        return Decision(False, "; ".join(reasons), drops, scores)
    return Decision(True, f"{f1s} ({gain:+.2f} points), no class recall drop over the limit", drops, scores)
