"""Champion vs challenger: both ONNX models scored on the same test images, ones neither trained on;
promote only if better.

Splits are hash buckets of each image's content (lab2prod/data/splits.py), so the challenger's test split
holds no image the challenger trained or validated on. The champion may have been split by another
rule (another seed or other fractions): the test images its own rule put in its train or val split are
left out for both models, and the decision says how many and why. With fewer than
`retrain.min_test_images` left, nothing is promoted: a decision on noise is no decision.

The challenger must gain at least `retrain.min_f1_gain` points of macro F1 and no class may lose
more than `retrain.max_class_recall_drop` points of recall.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lab2prod.core.files import read_json
from lab2prod.core.scoring import classification_metrics
from lab2prod.core.settings import RetrainConfig
from lab2prod.data.dataset import SplitBatches, SplitIndex
from lab2prod.data.splits import bucket
from lab2prod.serve.runtime import onnx_top1


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    recall_drops: dict[str, float]
    # both models on the same test images: {"challenger"|"champion": {"accuracy", "f1_macro", "recall.<class>"}}
    scores: dict[str, dict[str, float]]
    # how many test images the decision rests on, how many were left out and why
    test_images: dict[str, Any] = field(default_factory=dict)

    @property
    def challenger_f1(self) -> float:
        return self.scores["challenger"]["f1_macro"]

    @property
    def champion_f1(self) -> float | None:
        return self.scores["champion"]["f1_macro"] if "champion" in self.scores else None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def score(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict[str, float]:
    """Accuracy, macro F1 and per-class recall of top-1 predictions."""
    m = classification_metrics(y_true, y_pred, classes)
    return {
        "accuracy": m["accuracy"],
        "f1_macro": m["f1_macro"],
        **{f"recall.{c}": per_class["recall"] for c, per_class in m["per_class"].items()},
    }


def macro_f1_resampled(y_true: np.ndarray, y_pred: np.ndarray, idx: np.ndarray, n_classes: int) -> np.ndarray:
    """Macro F1 over classes 0..n_classes-1 (a class with no image and no prediction scores 0, as scikit-learn's
    zero_division=0) of each resample: row r of `idx` (resamples, images) picks the images of resample r.
    Per-class counts by one bincount each, so a thousand resamples take milliseconds, not seconds."""
    t, p = y_true[idx], y_pred[idx]
    offset = np.arange(idx.shape[0])[:, None] * n_classes
    size = idx.shape[0] * n_classes

    def per_class(keys: np.ndarray) -> np.ndarray:
        return np.bincount(keys, minlength=size).reshape(idx.shape[0], n_classes)

    true_keys = offset + t
    hits = per_class(true_keys[t == p])
    total = per_class(true_keys.ravel()) + per_class((offset + p).ravel())  # 2 TP + FP + FN
    f1 = np.divide(2 * hits, total, out=np.zeros(total.shape), where=total > 0)
    return f1.mean(axis=1)


def f1_gain_interval(
    y_true: np.ndarray, new: np.ndarray, old: np.ndarray, n_classes: int, samples: int, seed: int = 0
) -> tuple[float, float]:
    """95 % paired-bootstrap interval of the macro-F1 gain (new - old), in percentage points: both
    models' predictions resampled together, image by image (in chunks of resamples: bounded memory)."""
    rng = np.random.default_rng(seed)
    chunk = max(1, min(samples, 2_000_000 // max(1, len(y_true))))
    gains = []
    for start in range(0, samples, chunk):
        idx = rng.integers(0, len(y_true), (min(chunk, samples - start), len(y_true)))
        gains.append(
            100 * (macro_f1_resampled(y_true, new, idx, n_classes) - macro_f1_resampled(y_true, old, idx, n_classes))
        )
    lo, hi = np.percentile(np.concatenate(gains), [2.5, 97.5])
    return round(float(lo), 4), round(float(hi), 4)


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


def verdict_problem(evaluate_metrics: Path) -> str | None:
    """Why evaluate found the challenger not worth deploying (it does not beat the baseline or chance), or None.

    Runs evaluated before the verdict existed carry none and pass."""
    if not evaluate_metrics.exists():
        return f"{evaluate_metrics} is missing: the model was not evaluated"
    verdict = read_json(evaluate_metrics).get("verdict")
    return None if verdict is None or verdict["passed"] else f"evaluate's verdict: {verdict['line']}"


def unseen_by(rule: dict[str, Any] | None, hashes: list[str]) -> tuple[np.ndarray, str]:
    """Which images a model split by `rule` (meta.json's split_rule) never trained or validated on."""
    if not rule:
        why = "the champion's split rule is unknown (registered before lab2prod recorded it): all test images used"
        return np.ones(len(hashes), bool), why
    mask = np.asarray([bucket(h, rule["seed"]) < rule["test"] for h in hashes], bool)
    why = (
        f"left out: test images the champion's split rule (seed {rule['seed']}, test {rule['test']}) puts in train/val"
    )
    return mask, why


def decide(
    challenger_onnx: Path,
    champion_onnx: Path | None,
    prepared: Path,
    classes: list[str],
    cfg: RetrainConfig,
    checks_failed: str | None = None,
    champion_rule: dict[str, Any] | None = None,
) -> Decision:
    """Score both models on the test images of `prepared` that neither trained on; the verdict in words.

    `checks_failed` (from `export_problem` or `verdict_problem`) rejects the challenger whatever its scores;
    `champion_rule` is the split rule of the champion's data (its registered meta.json).
    """
    index = SplitIndex.read(prepared, "test")
    index.close()
    keep, why = unseen_by(champion_rule if champion_onnx is not None else None, index.sha256)
    if champion_onnx is None:
        why = "no champion: every test image used"
    used = {"used": int(keep.sum()), "excluded": int((~keep).sum()), "why": why}
    x = SplitBatches(prepared, "test", keep=keep)  # streamed: each model reads the shards batch by batch
    y_true = x.labels
    new_pred = onnx_top1(challenger_onnx, x) if len(y_true) else y_true
    new = score(y_true, new_pred, classes) if len(y_true) else {}
    if checks_failed:
        return Decision(False, f"not deployable: {checks_failed}", {}, {"challenger": new}, used)
    if champion_onnx is None:
        return Decision(True, "no champion yet: the first model becomes champion", {}, {"challenger": new}, used)
    if len(y_true) < cfg.min_test_images:
        reason = (
            f"only {len(y_true)} test images neither model trained on (< retrain.min_test_images = "
            f"{cfg.min_test_images}; {used['excluded']} {why}): too few to decide, champion kept"
        )
        return Decision(False, reason, {}, {"challenger": new}, used)
    old_pred = onnx_top1(champion_onnx, x)
    old = score(y_true, old_pred, classes)
    scores = {"challenger": new, "champion": old}
    lo, hi = f1_gain_interval(y_true, new_pred, old_pred, len(classes), cfg.bootstrap_samples)
    used["f1_gain_ci95"] = [lo, hi]
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
    if cfg.require_significance and lo <= cfg.min_f1_gain:
        reasons.append(
            f"the gain is not significant: its 95 % interval [{lo:+.2f}, {hi:+.2f}] points reaches "
            f"retrain.min_f1_gain = {cfg.min_f1_gain} (retrain.require_significance)"
        )
    if reasons:
        return Decision(False, "; ".join(reasons), drops, scores, used)
    reason = (
        f"{f1s} ({gain:+.2f} points, 95 % interval [{lo:+.2f}, {hi:+.2f}]) on {len(y_true)} test images "
        "neither model trained on, no class recall drop over the limit"
    )
    return Decision(True, reason, drops, scores, used)
