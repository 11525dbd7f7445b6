"""Drift: the champion's own reference (written by export, carried by the registry) against logged
predictions: in-distribution traffic passes, inverted or rotated digits raise the flag, feedback counts."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lab2prod.core.files import read_json
from lab2prod.core.settings import validate_params
from lab2prod.monitor import check as monitoring
from lab2prod.monitor import drift
from lab2prod.registry.store import champion_model, register, set_champion
from lab2prod.serve.predict import Classifier
from lab2prod.serve.prediction_log import PredictionLog
from models.nets.inputs import load_split
from tests.conftest import TINY


def champion_registry(tiny_run: dict[str, Any], registry: Path) -> Classifier:
    """A registry whose champion is the tiny run; returns the served model."""
    project = tiny_run["ws"].prepared.parent.parent
    register(registry, project, {"note": "test"}, None)
    set_champion(registry, "v0001", "test")
    return Classifier.load(champion_model(registry))


def shifted(images: np.ndarray, how: str) -> np.ndarray:
    if how == "inverted":
        return 255 - images
    if how == "rotated":
        return np.rot90(images, k=1, axes=(1, 2)).copy()
    return images


def log_traffic(classifier: Classifier, images: np.ndarray, log_dir: Path, version: str = "v0001") -> None:
    """Log predictions for `images` as the server does."""
    plog = PredictionLog(log_dir, 1.0, 16, 64, False)
    probs = classifier.predict(images)
    plog.record(version, classifier.sha256, classifier.classes, probs, images, [f"f{i}" for i in range(len(images))])


def settings(registry: Path, work: Path, **monitor: Any) -> Any:
    return validate_params(
        {
            **TINY,
            "retrain": {"registry_dir": str(registry)},
            "serve": {"log_dir": str(work / "logs"), "feedback_dir": str(work / "inbox")},
            "monitor": {"min_predictions": 100, "report_dir": str(work / "reports"), **monitor},
        }
    )


def test_export_writes_the_reference_the_registry_carries(tiny_run: dict[str, Any], tmp_path: Path) -> None:
    ref = read_json(tiny_run["export"] / drift.REFERENCE_FILE)
    x_test, _ = load_split(tiny_run["prepared"], "test")
    assert ref["n"] == len(x_test) and ref["classes"] == [str(i) for i in range(10)]
    assert len(ref["confidence"]) == len(ref["mean"]) == len(ref["std"]) == len(x_test)
    assert abs(np.mean(ref["mean"]) - float(x_test.float().mean() / 255)) < 1e-4
    assert abs(sum(ref["class_mix"].values()) - 1) < 1e-9
    champion_registry(tiny_run, tmp_path / "registry")
    assert monitoring.champion_reference(str(tmp_path / "registry"), "v0001") == ref


def test_psi_is_zero_for_the_same_sample_and_grows_with_the_shift() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, 5000)
    assert drift.psi(ref, ref) < 1e-9
    values = [drift.psi(ref, rng.normal(shift, 1, 2000)) for shift in (0.0, 0.25, 1.0)]
    assert values[0] < 0.05 < values[1] < values[2] and values[2] > 0.5
    assert drift.psi(np.zeros(100), np.zeros(50)) < 1e-9 and drift.psi(np.zeros(100), np.ones(50)) > 1
    assert drift.psi_categories({"a": 0.5, "b": 0.5}, {"a": 0.5, "b": 0.5}) == 0


@pytest.mark.parametrize("how", ["in-distribution", "inverted", "rotated"])
def test_shifted_traffic_raises_the_drift_flag_and_in_distribution_does_not(
    tiny_run: dict[str, Any], tmp_path: Path, how: str
) -> None:
    classifier = champion_registry(tiny_run, tmp_path / "registry")
    x_val, _ = load_split(tiny_run["prepared"], "val")  # images no model trained on, not the reference's own
    log_traffic(classifier, shifted(x_val.numpy(), how), tmp_path / "logs")
    params = settings(tmp_path / "registry", tmp_path)
    report = monitoring.check(params, tmp_path)
    d = report["drift"]
    assert report["champion"] == "v0001" and d["n_live"] == len(x_val) and d["enough"]
    if how == "in-distribution":
        assert not d["drift"] and not report["retrain"]["needed"], d
        assert max(f["psi"] for f in d["features"].values()) < params.monitor.psi_threshold
    else:
        assert d["drift"] and report["retrain"]["needed"], d
        assert report["retrain"]["reasons"][0].startswith("drift")
    assert (tmp_path / "reports" / "drift.png").stat().st_size > 0
    assert read_json(tmp_path / "reports" / "drift.json")["drift"]["drift"] == d["drift"]


def test_too_few_predictions_or_another_models_give_no_verdict(tiny_run: dict[str, Any], tmp_path: Path) -> None:
    classifier = champion_registry(tiny_run, tmp_path / "registry")
    x_val, _ = load_split(tiny_run["prepared"], "val")
    inverted = 255 - x_val.numpy()
    log_traffic(classifier, inverted[:50], tmp_path / "logs")  # under min_predictions
    log_traffic(classifier, inverted, tmp_path / "logs", version="v0000")  # not the champion's
    report = monitoring.check(settings(tmp_path / "registry", tmp_path), tmp_path)
    assert report["drift"]["n_live"] == 50 and not report["drift"]["enough"] and not report["drift"]["drift"]
    assert not report["retrain"]["needed"]


def test_enough_feedback_asks_for_retraining_once_per_cooldown(tiny_run: dict[str, Any], tmp_path: Path) -> None:
    champion_registry(tiny_run, tmp_path / "registry")
    inbox = tmp_path / "inbox" / "3"
    inbox.mkdir(parents=True)
    for i in range(3):
        (inbox / f"{i}.png").write_bytes(b"png")
    params = settings(tmp_path / "registry", tmp_path, min_feedback=3, cooldown_hours=1)
    report = monitoring.check(params, tmp_path)
    assert report["feedback"]["new"] == 3 and report["retrain"]["needed"]
    assert "3 new labelled corrections" in report["retrain"]["reasons"][0]
    monitoring.record_trigger(params, tmp_path, "run-1")
    again = monitoring.check(params, tmp_path)  # the same files are not new any more
    assert again["feedback"]["new"] == 0 and not again["retrain"]["needed"]
    (inbox / "late.png").write_bytes(b"png")
    for i in range(3, 6):
        (inbox / f"{i}.png").write_bytes(b"png")
    cooling = monitoring.check(params, tmp_path)
    assert (
        cooling["feedback"]["new"] == 4
        and not cooling["retrain"]["needed"]
        and "cooldown" in cooling["retrain"]["cooldown"]
    )
    later = monitoring.check(params, tmp_path, now=dt.datetime.now(dt.UTC) + dt.timedelta(hours=2))
    assert later["retrain"]["needed"]
