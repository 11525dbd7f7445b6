"""Scoring an image model on the test split beside a classical baseline on raw pixels (evaluate's image half)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from lab2prod.core.settings import EvaluateConfig
from lab2prod.data.dataset import SplitIndex
from models.nets.inputs import iter_split, torch_top1
from models.nets.model_file import load_model_file

BATCH = 512  # test images decoded and scored at a time


def fit_baseline(cfg: EvaluateConfig, x_train: np.ndarray, y_train: np.ndarray):
    """A classical classifier on raw pixels: what the network must beat to earn its keep."""
    flat = x_train.reshape(len(x_train), -1).astype(np.float64) / 255.0
    if cfg.baseline == "svc":  # on raw [0, 1] pixels: scaling each pixel separately makes it weaker
        model = SVC(C=cfg.baseline_c, kernel="rbf", gamma="scale")
    else:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=cfg.baseline_c, max_iter=2000))
    return model.fit(flat, y_train)


def score_images(cfg: EvaluateConfig, model: Path, prepared: Path) -> tuple:
    """Truth, the model's and the baseline's predictions on the test split (streamed), the model's info, the
    baseline's name."""
    net, info = load_model_file(model)
    baseline = None
    if cfg.baseline != "none":  # fitted on at most baseline_max_images training images (random, seeded)
        train = SplitIndex.read(prepared, "train")
        pick = np.sort(np.random.default_rng(0).permutation(len(train))[: cfg.baseline_max_images])
        baseline = fit_baseline(cfg, train.images(pick), train.labels[pick])
        train.close()
    truth, preds, base = [], [], []
    for x, y in iter_split(prepared, "test", BATCH):  # streamed: memory flat however large the split
        truth.append(y.numpy())
        preds.append(torch_top1(net, x))
        if baseline is not None:
            base.append(baseline.predict(x.numpy().reshape(len(y), -1).astype(np.float64) / 255.0))
    y_base = np.concatenate(base) if baseline is not None else None
    return np.concatenate(truth), np.concatenate(preds), y_base, info, cfg.baseline
