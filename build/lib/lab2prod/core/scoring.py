"""Scoring predictions: one set of metrics for evaluate, compress and the retraining gate (no torch)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, classification_report


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy, macro and weighted P/R/F1, and per-class P/R/F1/support (scikit-learn's definitions).

    Every class in `classes` is reported, also one absent from `y_true` (support 0, scores 0).
    """
    report = classification_report(
        y_true, y_pred, labels=range(len(classes)), target_names=classes, output_dict=True, zero_division=0
    )
    metrics: dict[str, Any] = {"accuracy": float(accuracy_score(y_true, y_pred))}
    for avg in ("macro", "weighted"):
        for k in ("precision", "recall", "f1-score"):
            metrics[f"{k.replace('-score', '')}_{avg}"] = report[f"{avg} avg"][k]
    metrics["per_class"] = {
        c: {
            "precision": report[c]["precision"],
            "recall": report[c]["recall"],
            "f1": report[c]["f1-score"],
            "support": int(report[c]["support"]),
        }
        for c in classes
    }
    return metrics
