"""Drift: what the served model sees now vs what it saw on its own test split.

The reference (`reference.json`, written by export beside the ONNX files, so every registry version carries
its own) holds per-image values of the features the prediction log records: top-1 confidence, pixel mean and
pixel std (of the decoded model input, in [0, 1]), and the predicted-class mix. `compare` scores recent
logged predictions against it with the population stability index (PSI, quantile bins of the reference)
and the two-sample Kolmogorov-Smirnov test (scipy); a feature drifts when its PSI passes the threshold
(0.1 = some change, 0.2 = significant, the usual reading), and only when enough predictions were seen.

A text model's reference (`"modality": "text"`) holds, per test text, the top-1 confidence, the token count
(after the cut at the model's max_length) and the share of [UNK] tokens (out-of-vocabulary rate), and the
predicted-class mix; its prediction log lines record the same (lab2prod/serve/prediction_log.py), and the
same PSI and KS statistics score them.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lab2prod.core.files import atomic_file

if TYPE_CHECKING:
    from lab2prod.data.tokens import TextEncoder

FEATURES = ("confidence", "mean", "std")  # an image model's
TEXT_FEATURES = ("confidence", "tokens", "unknown_rate")  # a text model's
REFERENCE_FILE = "reference.json"
MAX_REFERENCE = 5000  # per-image values kept in a reference (a random sample above that)
EPS = 1e-4


def image_features(images: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict[str, list]:
    """Per-image feature values for uint8 NHWC images and their class probabilities (as the log records them)."""
    pixels = images.reshape(len(images), -1).astype(np.float32) / 255.0
    return {
        "confidence": probs.max(axis=1).round(6).tolist(),
        "mean": pixels.mean(axis=1).round(6).tolist(),
        "std": pixels.std(axis=1).round(6).tolist(),
        "top1": [classes[int(k)] for k in probs.argmax(axis=1)],
    }


def reference_rows(n: int, seed: int = 0) -> np.ndarray:
    """Which of a test split's n images a reference keeps: all, or a seeded sample of MAX_REFERENCE."""
    if n <= MAX_REFERENCE:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, MAX_REFERENCE, replace=False))


def reference(images: np.ndarray, probs: np.ndarray, classes: list[str], seed: int = 0) -> dict[str, Any]:
    """A model's reference: its features on its test split (at most MAX_REFERENCE images, sampled)."""
    if len(images) > MAX_REFERENCE:
        keep = reference_rows(len(images), seed)
        images, probs = images[keep], probs[keep]
    feats = image_features(images, probs, classes)
    return {
        "n": len(images),
        "classes": classes,
        **{f: feats[f] for f in FEATURES},
        "class_mix": {c: n / len(images) for c, n in sorted(Counter(feats["top1"]).items())},
    }


def text_reference(
    texts: list[str], probs: np.ndarray, encoder: TextEncoder, classes: list[str], seed: int = 0
) -> dict[str, Any]:
    """A text model's reference: its features on its test split's texts (at most MAX_REFERENCE, sampled) and
    its class probabilities for them; tokenized by `encoder` exactly as serving tokenizes."""
    keep = reference_rows(len(texts), seed)
    texts, probs = [texts[i] for i in keep], probs[keep]
    stats = encoder.token_stats(encoder.ids(texts))
    top1 = [classes[int(k)] for k in probs.argmax(axis=1)]
    return {
        "modality": "text",
        "n": len(texts),
        "classes": classes,
        "confidence": probs.max(axis=1).round(6).tolist(),
        **{f: [s[f] for s in stats] for f in ("tokens", "unknown_rate")},
        "class_mix": {c: n / len(texts) for c, n in sorted(Counter(top1).items())},
    }


def features_of(ref: dict[str, Any]) -> tuple[str, ...]:
    """The per-sample features a reference holds: a text model's or an image model's."""
    return TEXT_FEATURES if ref.get("modality") == "text" else FEATURES


def psi(ref: np.ndarray, live: np.ndarray, bins: int = 10) -> float:
    """Population stability index of `live` against `ref`, on the reference's quantile bins."""
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:  # a constant reference: one bin at its value and everything else
        r = np.array([1.0, 0.0])
        lv = np.array([np.mean(live == edges[0]), np.mean(live != edges[0])])
    else:
        inner = edges[1:-1]
        r = np.bincount(np.searchsorted(inner, ref, side="right"), minlength=len(edges) - 1) / len(ref)
        lv = np.bincount(np.searchsorted(inner, live, side="right"), minlength=len(edges) - 1) / len(live)
    r, lv = np.clip(r, EPS, None), np.clip(lv, EPS, None)
    return float(np.sum((lv - r) * np.log(lv / r)))


def psi_categories(ref: dict[str, float], live: dict[str, float]) -> float:
    keys = sorted(set(ref) | set(live))
    r = np.clip(np.array([ref.get(k, 0.0) for k in keys]), EPS, None)
    lv = np.clip(np.array([live.get(k, 0.0) for k in keys]), EPS, None)
    return float(np.sum((lv - r) * np.log(lv / r)))


def compare(ref: dict[str, Any], rows: list[dict[str, Any]], psi_threshold: float, min_predictions: int) -> dict:
    """Drift of logged predictions `rows` against a reference: per feature PSI, KS statistic and p-value."""
    from scipy.stats import ks_2samp

    features = features_of(ref)
    rows = [row for row in rows if all(f in row for f in features)]  # lines from before a feature was logged: out
    report: dict[str, Any] = {
        "n_reference": ref["n"],
        "n_live": len(rows),
        "psi_threshold": psi_threshold,
        "min_predictions": min_predictions,
        "features": {},
    }
    if not all(isinstance(ref.get(f), list) for f in features):
        why = f"{REFERENCE_FILE} lacks per-sample {', '.join(features)} (written before lab2prod monitored them)"
        report.update(drift=False, enough=False, drifted=[], why=why + ": register a new version to monitor it")
        return report
    if len(rows) < min_predictions:
        report.update(drift=False, enough=False, drifted=[], why=f"{len(rows)} predictions < min_predictions")
        return report
    for f in features:
        r, lv = np.asarray(ref[f], dtype=float), np.asarray([row[f] for row in rows], dtype=float)
        ks = ks_2samp(r, lv)
        report["features"][f] = {
            "psi": round(psi(r, lv), 4),
            "ks": round(float(ks.statistic), 4),
            "ks_pvalue": float(ks.pvalue),
            "reference_median": round(float(np.median(r)), 4),
            "live_median": round(float(np.median(lv)), 4),
        }
    live_mix = {c: n / len(rows) for c, n in sorted(Counter(row["top1"] for row in rows).items())}
    report["features"]["class_mix"] = {"psi": round(psi_categories(ref["class_mix"], live_mix), 4), "live": live_mix}
    drifted = [f for f, v in report["features"].items() if v["psi"] > psi_threshold]
    report.update(
        drift=bool(drifted),
        enough=True,
        drifted=drifted,
        why=f"PSI over {psi_threshold} for {', '.join(drifted)}" if drifted else "no feature's PSI over the threshold",
    )
    return report


def plot(ref: dict[str, Any], rows: list[dict[str, Any]], report: dict[str, Any], path: Path) -> None:
    """Reference vs live histograms of each feature and the class mix, PSI in each title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    features = features_of(ref)
    if not all(isinstance(ref.get(f), list) for f in features):
        return  # a reference from before these features: compare said so, nothing to draw
    fig, axes = plt.subplots(1, len(features) + 1, figsize=(4.2 * (len(features) + 1), 3.4))
    for ax, f in zip(axes, features, strict=False):
        r = np.asarray(ref[f], dtype=float)
        lv = np.asarray([row[f] for row in rows if f in row], dtype=float)
        lo, hi = float(min(r.min(), lv.min(initial=r.min()))), float(max(r.max(), lv.max(initial=r.max())))
        bins = np.linspace(lo, hi if hi > lo else lo + 1e-3, 30)
        ax.hist(r, bins, density=True, alpha=0.5, label=f"reference (n={len(r)})")
        if len(lv):
            ax.hist(lv, bins, density=True, alpha=0.5, label=f"live (n={len(lv)})")
        stat = report["features"].get(f, {})
        ax.set_title(f"{f}" + (f"  PSI {stat['psi']:.3f}" if stat else ""))
        ax.legend(fontsize=7)
    ax = axes[-1]
    classes = ref["classes"]
    live = Counter(row["top1"] for row in rows)
    x = np.arange(len(classes))
    ax.bar(x - 0.2, [ref["class_mix"].get(c, 0) for c in classes], 0.4, label="reference")
    ax.bar(x + 0.2, [live.get(c, 0) / max(len(rows), 1) for c in classes], 0.4, label="live")
    ax.set_xticks(x, classes, fontsize=7, rotation=90 if len(classes) > 12 else 0)
    mix = report["features"].get("class_mix")
    ax.set_title("predicted classes" + (f"  PSI {mix['psi']:.3f}" if mix else ""))
    ax.legend(fontsize=7)
    verdict = "DRIFT: " + ", ".join(report.get("drifted", [])) if report.get("drift") else "no drift"
    kind = "texts" if ref.get("modality") == "text" else "images"
    fig.suptitle(f"{verdict}  ({report['n_live']} predictions vs {report['n_reference']} test {kind})")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
