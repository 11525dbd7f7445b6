"""Stage 4, evaluate: the trained model on the held-out test split, beside a scikit-learn baseline (images: an
SVC or logistic regression on raw pixels; texts: TF-IDF + logistic regression, models/text/scoring.py).

Writes:
    metrics/evaluate.json              accuracy, P/R/F1 macro and weighted, per class, baseline, lineage
    metrics/evaluate/predictions.csv   actual,predicted per test image (DVC confusion-matrix plot)
    plots/confusion_matrix.png         the same confusion matrix as a picture
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, accuracy_score, confusion_matrix, f1_score  # noqa: E402

from lab2prod.core.console import ParamsFile, run_stage  # noqa: E402
from lab2prod.core.files import atomic_file, read_json, write_json  # noqa: E402
from lab2prod.core.layout import PARAMS, WORKSPACE, Workspace  # noqa: E402
from lab2prod.core.scoring import classification_metrics, verdict  # noqa: E402
from lab2prod.core.settings import EvaluateConfig, load_params  # noqa: E402
from models.nets.scoring import score_images  # noqa: E402
from models.text.scoring import score_texts  # noqa: E402

log = logging.getLogger("tasks.evaluate")  # not __name__: that is __main__ under python -m


def save_confusion(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str], csv_path: Path, png_path: Path) -> None:
    with atomic_file(csv_path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["actual", "predicted"])
        writer.writerows((classes[a], classes[p]) for a, p in zip(y_true, y_pred, strict=True))
    cm = confusion_matrix(y_true, y_pred, labels=range(len(classes)))
    size = max(4.0, 0.45 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(cm, display_labels=classes).plot(
        ax=ax, cmap="Blues", colorbar=False, xticks_rotation=45 if len(classes) > 10 else 0
    )
    ax.set_title(f"test split: {int(np.trace(cm))}/{int(cm.sum())} correct")
    fig.tight_layout()
    with atomic_file(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def evaluate(cfg: EvaluateConfig, ws: Workspace = WORKSPACE) -> dict:
    """Score the model (and the baseline) on the test split; write metrics and plots. Returns the metrics."""
    text = read_json(ws.prepared / "meta.json").get("modality") == "text"
    y_true, y_pred, y_base, info, baseline_name = (score_texts if text else score_images)(cfg, ws.model, ws.prepared)
    classes = info.classes
    metrics = classification_metrics(y_true, y_pred, classes)
    metrics["n_test"] = int(len(y_true))

    if y_base is not None:
        metrics["baseline"] = {
            "model": baseline_name,
            "accuracy": accuracy_score(y_true, y_base),
            "f1_macro": f1_score(y_true, y_base, average="macro"),
        }
    metrics["verdict"] = verdict(metrics["accuracy"], y_true, metrics.get("baseline"), cfg.margin_points)
    metrics["lineage"] = info.lineage.model_dump()
    save_confusion(y_true, y_pred, classes, ws.predictions, ws.confusion_png)
    write_json(ws.evaluate_metrics, metrics)

    log.info("evaluate: macro F1 %.4f on %d test %s", metrics["f1_macro"], len(y_true), "texts" if text else "images")
    (log.info if metrics["verdict"]["passed"] else log.warning)("evaluate: %s", metrics["verdict"]["line"])
    return metrics


def main(params: ParamsFile = PARAMS) -> None:
    """Score artifacts/train/model.pt on the test split into metrics/evaluate.json and plots/."""
    evaluate(load_params(params).evaluate)


if __name__ == "__main__":
    run_stage(main)
