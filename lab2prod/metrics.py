"""Scoring predictions: one set of metrics for evaluate, compress and the retraining gate."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, classification_report

from lab2prod.dataset import SplitBatches, in_batches, to_model_input


@torch.no_grad()
def torch_top1(net: torch.nn.Module, images: torch.Tensor | SplitBatches, batch_size: int = 512) -> np.ndarray:
    """Top-1 class indices of a PyTorch network for uint8 NHWC images (a tensor, or a split streamed), in batches."""
    net.eval()
    with torch.no_grad():
        out = [net(to_model_input(x)).argmax(1) for x in in_batches(images, batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


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
