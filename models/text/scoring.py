"""Scoring a text model on a split, and the baseline it must beat: TF-IDF of word 1-2 grams + logistic
regression (scikit-learn), fitted on the same training split (at most `evaluate.baseline_max_images` texts)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from torch import nn

from lab2prod.core.settings import EvaluateConfig
from lab2prod.data.text import read_texts
from lab2prod.data.tokens import TextEncoder
from models.text.model_file import load_text_model

BATCH = 256


def text_logits(net: nn.Module, encoder: TextEncoder, texts: list[str], batch_size: int = BATCH) -> np.ndarray:
    """The network's logits for `texts`, in batches padded to their longest text."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            out.append(net(torch.from_numpy(encoder(texts[start : start + batch_size]))).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def tfidf_baseline(cfg: EvaluateConfig, prepared: Path):
    """TF-IDF (word 1-2 grams, sublinear tf) + logistic regression on the training texts; None if switched off."""
    if cfg.baseline == "none":
        return None
    texts, labels = read_texts(prepared, "train")
    pick = np.sort(np.random.default_rng(0).permutation(len(texts))[: cfg.baseline_max_images])
    model = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
        LogisticRegression(C=cfg.baseline_c, max_iter=2000),
    )
    return model.fit([texts[i] for i in pick], labels[pick])


def score_texts(cfg: EvaluateConfig, model: Path, prepared: Path) -> tuple:
    """As models.nets.scoring.score_images, for a text model and the TF-IDF baseline."""
    net, info = load_text_model(model)
    texts, y_true = read_texts(prepared, "test")
    y_pred = text_logits(net, TextEncoder(info.tokenizer, info.max_length), texts).argmax(1)
    baseline = tfidf_baseline(cfg, prepared)
    y_base = baseline.predict(texts) if baseline is not None else None
    return y_true, y_pred, y_base, info, "tfidf_logistic" if baseline is not None else "none"
