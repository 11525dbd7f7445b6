"""Prediction from an exported ONNX file: what ingest would decode, what ONNX Runtime answers, every bad file named."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lab2prod.data.images import decode_image
from lab2prod.serve.predict import Classifier, classify, image_files
from lab2prod.serve.runtime import onnx_top1

BROKEN = {
    "truncated.png": "truncated",
    "notes.jpg": "not_an_image",
    "empty.png": "empty_file",
    "bomb.png": "decompression_bomb",
}


def test_every_file_gets_its_class_or_its_reason(tiny_run: dict[str, Path], image_folder: Path) -> None:
    classifier = Classifier.load(str(tiny_run["onnx"]))
    assert classifier.classes == [str(i) for i in range(10)] and classifier.image_shape == (8, 8, 1)
    files = image_files([str(image_folder)])
    assert len(files) == 3 * 12 + len(BROKEN)
    rows = classify(classifier, files, top=3, batch_size=5)  # batches that do not divide the count
    by_name = {Path(r["file"]).name: r for r in rows}
    for name, reason in BROKEN.items():
        assert by_name[name]["error"].startswith(reason + ":") and by_name[name]["predictions"] == []
    good = [r for r in rows if not r["error"]]
    assert len(good) == 36
    for r in good:
        probs = [p for _, p in r["predictions"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    # the same top-1 as the ONNX file gives images decoded the way ingest decodes them
    images = np.stack([decode_image(Path(r["file"]).read_bytes(), 8, 1, 40_000_000) for r in good])
    expected = onnx_top1(tiny_run["onnx"], torch.from_numpy(images))
    assert [r["predictions"][0][0] for r in good] == [classifier.classes[k] for k in expected]


def test_cli_writes_a_csv_and_explains_what_is_missing(
    tiny_run: dict[str, Path], image_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "predictions.csv"

    def run(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "lab2prod.cli.main", "predict", *args]
        return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)

    done = run(str(image_folder), "--model", str(tiny_run["onnx"]), "--csv", str(out), "--top", "2")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 40 and sum(1 for r in rows if r["error"]) == len(BROKEN)
    assert all(r["class1"] in [str(i) for i in range(10)] for r in rows if not r["error"])
    assert "4 file(s) could not be read" in done.stderr
    (tmp_path / "params.yaml").write_text("retrain:\n  registry_dir: no-registry-here\n")
    no_champion = run(str(image_folder))
    assert no_champion.returncode == 2 and "has no champion yet" in no_champion.stderr
    missing = run(str(tmp_path / "nowhere"), "--model", str(tiny_run["onnx"]))
    assert missing.returncode == 2 and "nowhere: no such file or folder" in missing.stderr


def test_an_onnx_file_without_lab2prod_metadata_is_refused(tmp_path: Path) -> None:
    from lab2prod.core.errors import DataError
    from models.export.onnx_export import to_onnx
    from models.nets.networks import build_network

    path = tmp_path / "bare.onnx"
    to_onnx(build_network("small_cnn", 1, 10, 8, 0.0, [0.5], [0.25]).eval(), [8, 8, 1], path, 18)
    with pytest.raises(DataError, match="no class names or input size"):
        Classifier.load(str(path))
