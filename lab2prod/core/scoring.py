"""Scoring predictions: one set of metrics for evaluate, compress and the retraining gate (no torch)."""

from __future__ import annotations

from typing import Any

import numpy as np


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy, macro and weighted P/R/F1, and per-class P/R/F1/support (scikit-learn's definitions).

    Every class in `classes` is reported, also one absent from `y_true` (support 0, scores 0).
    """
    # imported here: scikit-learn takes a second or more to import, and the flows, the registry and its CLI
    # import this module at start-up whether or not they score anything
    from sklearn.metrics import accuracy_score, classification_report

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


def verdict(
    accuracy: float, y_true: np.ndarray, baseline: dict[str, Any] | None, margin_points: float
) -> dict[str, Any]:
    """Does the model earn its keep? It must beat chance (always answering the largest class) and the baseline
    by more than `margin_points` of test accuracy. Returns the references, the outcome and a one-line reason."""
    chance = float(np.bincount(y_true).max() / len(y_true)) if len(y_true) else 0.0
    references = {"chance (largest class)": chance}
    if baseline is not None:
        references[f"{baseline['model']} baseline"] = float(baseline["accuracy"])
    name, bar = max(references.items(), key=lambda kv: kv[1])
    gain = 100 * (accuracy - bar)
    passed = gain > margin_points
    line = (
        f"accuracy {100 * accuracy:.2f} % vs {name} {100 * bar:.2f} %: {gain:+.2f} points"
        + (f" (needs more than {margin_points:+.2f})" if margin_points else "")
        + ("" if passed else " -- NOT DEPLOYABLE: the model does not beat it; nothing is promoted")
    )
    return {
        "passed": passed,
        "against": name,
        "reference_accuracy": bar,
        "gain_points": round(gain, 4),
        "margin_points": margin_points,
        "chance_accuracy": chance,
        "line": line,
    }
