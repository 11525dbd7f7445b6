"""Train -> evaluate -> export on tiny settings: what each stage writes, and that they agree."""

from __future__ import annotations

import json
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from sklearn.metrics import classification_report

from lab2prod.core.errors import ParityError
from lab2prod.core.settings import validate_params
from models.nets.inputs import load_split, to_model_input
from models.nets.model_file import load_model_file
from models.nets.networks import build_network
from models.training.recipe import checkpoint_to_resume
from tasks.export import export
from tasks.train import train
from tests.conftest import TINY


@pytest.fixture
def run(tiny_run: dict[str, Path]) -> dict[str, Path]:
    return tiny_run


def onnx_predictions(onnx_file: Path, prepared: Path) -> tuple[np.ndarray, np.ndarray]:
    x, y = load_split(prepared, "test")
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"pixels": to_model_input(x).numpy()})[0]
    return y.numpy(), logits.argmax(1)


def test_model_file_is_weights_only_with_lineage(run: dict[str, Path]) -> None:
    payload = torch.load(run["model"], weights_only=True)  # raises if anything but tensors/plain data
    assert payload["format"] == "lab2prod-model/1"
    net, info = load_model_file(run["model"])
    assert info.classes == [str(i) for i in range(10)] and info.image_shape == [8, 8, 1]
    lineage = payload["info"]["lineage"]
    assert set(lineage) == {"dataset_hash", "train_inputs_hash", "params_hash", "git_commit"} | {
        "weights_source",
        "weights_sha256",
    }
    assert lineage["weights_source"] == "none" and lineage["weights_sha256"] is None  # random initial weights
    assert payload["spec"]["architecture"] == "small_cnn" and info.spec.n_classes == 10
    meta = json.loads((run["prepared"] / "meta.json").read_text())
    assert info.lineage.dataset_hash == meta["dataset_hash"]


def test_training_learns(run: dict[str, Path]) -> None:
    metrics = json.loads(run["metrics"].read_text())
    assert metrics["accuracy"] > 0.5  # 10 classes: chance is 0.1; four tiny epochs already do far better
    dvclive_metrics = json.loads((run["live"] / "metrics.json").read_text())
    assert "val" in dvclive_metrics and "train" in dvclive_metrics
    assert (run["live"] / "plots/metrics/val/acc.tsv").read_text().count("\n") == 1 + TINY["train"][
        "epochs"
    ]  # header + one row per epoch


def test_evaluate_metrics_match_scikit_learn_on_onnx_predictions(run: dict[str, Path]) -> None:
    """The bar: metrics/evaluate.json equals scikit-learn's report on the exported ONNX model."""
    metrics = json.loads(run["metrics"].read_text())
    y_true, y_pred = onnx_predictions(run["onnx"], run["prepared"])
    report = classification_report(y_true, y_pred, output_dict=True, zero_division=0)
    assert metrics["accuracy"] == pytest.approx(report["accuracy"], abs=1e-12)
    for avg in ("macro", "weighted"):
        for k in ("precision", "recall", "f1-score"):
            assert metrics[f"{k.replace('-score', '')}_{avg}"] == pytest.approx(report[f"{avg} avg"][k], abs=1e-12)
    for i in range(10):
        assert metrics["per_class"][str(i)]["f1"] == pytest.approx(report[str(i)]["f1-score"], abs=1e-12)
        assert metrics["per_class"][str(i)]["support"] == report[str(i)]["support"]
    assert metrics["n_test"] == len(y_true)
    assert 0.5 < metrics["baseline"]["accuracy"] <= 1.0 and metrics["baseline"]["model"] == "logistic"


def test_confusion_outputs(run: dict[str, Path]) -> None:
    rows = run["csv"].read_text().splitlines()
    assert rows[0] == "actual,predicted" and len(rows) - 1 == json.loads(run["metrics"].read_text())["n_test"]
    assert run["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_onnx_file_is_checked_dynamic_and_carries_metadata(run: dict[str, Path]) -> None:
    model = onnx.load(str(run["onnx"]))
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["classes"]) == [str(i) for i in range(10)]
    assert json.loads(meta["image_shape_hwc"]) == [8, 8, 1]
    _, info = load_model_file(run["model"])
    assert meta["dataset_hash"] == info.lineage.dataset_hash and meta["git_commit"]
    session = ort.InferenceSession(str(run["onnx"]), providers=["CPUExecutionProvider"])
    for batch in (1, 3, 64):
        assert session.run(None, {"pixels": np.random.rand(batch, 1, 8, 8).astype(np.float32)})[0].shape == (batch, 10)
    exported = json.loads(run["export_metrics"].read_text())["files"]["fp32"]
    assert exported["test_top1_agreement"] == 1.0 and max(exported["max_abs_logit_diff"].values()) < 1e-4


def test_export_refuses_a_model_that_does_not_match(run: dict[str, Path], tmp_path: Path) -> None:
    impossible = validate_params({**TINY, "export": {**TINY["export"], "atol": 1e-30, "rtol": 0.0}})
    target = tmp_path / "export"
    with pytest.raises(ParityError, match="export.atol"):
        ws = replace(
            run["ws"], exported=target, export_metrics=tmp_path / "export.json", benchmark=tmp_path / "benchmark.json"
        )
        export(impossible, ws)
    assert not list(tmp_path.iterdir())  # no file, no temp dir left behind


def test_predictions_do_not_depend_on_batch_composition(run: dict[str, Path]) -> None:
    net, _ = load_model_file(run["model"])
    x, _ = load_split(run["prepared"], "test")
    with torch.no_grad():
        whole = net(to_model_input(x[:32]))
        one_by_one = torch.cat([net(to_model_input(x[i : i + 1])) for i in range(32)])
    torch.testing.assert_close(whole, one_by_one, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("architecture", ["small_cnn", "resnet"])
def test_networks_handle_sizes_and_channels(architecture: str) -> None:
    for channels, size in ((1, 8), (3, 32)):
        net = build_network(architecture, channels, 5, 8, 0.1, [0.5] * channels, [0.25] * channels).eval()
        assert net(torch.rand(2, channels, size, size)).shape == (2, 5)


# --- resume after a kill ---------------------------------------------------------------------


def fake_checkpoint(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("data.pkl", b"x")


def test_resume_only_an_unfinished_run_with_the_same_fingerprint(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoints"
    assert checkpoint_to_resume(ckpt, "fp-1") is None  # nothing yet: a fresh run is registered
    fake_checkpoint(ckpt / "last.ckpt")
    assert checkpoint_to_resume(ckpt, "fp-1") == ckpt / "last.ckpt"
    assert checkpoint_to_resume(ckpt, "fp-2") is None  # other data or settings: start over
    assert not (ckpt / "last.ckpt").exists()


def test_a_finished_or_damaged_run_is_not_resumed(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoints"
    checkpoint_to_resume(ckpt, "fp")
    (ckpt / "last.ckpt").write_bytes(b"PK\x03\x04 cut short by kill -9")
    assert checkpoint_to_resume(ckpt, "fp") is None
    fake_checkpoint(ckpt / "last.ckpt")
    (ckpt / "run.json").write_text(json.dumps({"fingerprint": "fp", "complete": True}))
    assert checkpoint_to_resume(ckpt, "fp") is None


class Crash(Callback):
    """Stands in for kill -9 at the start of epoch 2, after epoch 1's checkpoint was written."""

    def on_train_epoch_start(self, trainer, module) -> None:
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated crash")


def test_train_resumes_from_last_checkpoint(tmp_path: Path, run: dict[str, Path]) -> None:
    """A run that died in epoch 2 of 3 continues from its checkpoint instead of starting over."""
    params = validate_params({**TINY, "train": {**TINY["train"], "epochs": 3}})
    out = tmp_path / "train"
    ws = replace(run["ws"], train_dir=out, train_metrics=tmp_path / "live")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(params, ws, trainer_overrides={"callbacks": [Crash()]})
    assert not (out / "model.pt").exists() and (out / "checkpoints/last.ckpt").exists()
    second = train(params, ws)
    assert second["epochs"] == 3
    val_rows = (tmp_path / "live/plots/metrics/val/acc.tsv").read_text().splitlines()[1:]
    epochs = [row.split("\t")[0] for row in val_rows]
    assert epochs == ["0", "1", "2"]  # epoch 0 from the first run, 1 and 2 resumed: not 0 + 0, 1, 2
    assert json.loads((out / "checkpoints/run.json").read_text())["complete"] is True
