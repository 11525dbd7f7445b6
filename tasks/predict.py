"""Classify images with an exported model: by default the file the registry's champion serves.

    python -m tasks.predict photo.png more/*.jpg a_folder/             # the champion, a table
    python -m tasks.predict images/ --csv predictions.csv --top 3       # a CSV, three guesses each
    python -m tasks.predict images/ --model artifacts/export/model.onnx  # any lab2prod ONNX file
    python -m tasks.predict images/ --registry s3://bucket/registry     # a remote registry's champion

The ONNX file carries what prediction needs (class names, input size and channels as metadata), and
images are decoded and resized exactly as `ingest` does. A file that is not a usable image gets a row
with its reason (empty_file, not_an_image, truncated, corrupt, decompression_bomb), never a silent skip.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import fsspec
import numpy as np
import onnxruntime as ort
import torch
import typer
from rich.console import Console
from rich.progress import track
from rich.table import Table

from models.classifier import to_model_input
from tasks.artifacts import atomic_file
from tasks.config import IngestConfig, load_params
from tasks.export import onnx_logits
from tasks.ingest import IMAGE_SUFFIXES, BadImage, decode_image
from tasks.logs import DataError, stage_entry
from tasks.registry import champion_model, location

log = logging.getLogger("tasks.predict")


@dataclass(frozen=True)
class Classifier:
    session: ort.InferenceSession
    classes: list[str]
    image_shape: tuple[int, int, int]  # H, W, C
    source: str

    @classmethod
    def load(cls, model: str) -> Classifier:
        """An ONNX file written by lab2prod's export (a path or any fsspec URL)."""
        try:
            with fsspec.open(model, "rb") as fh:
                session = ort.InferenceSession(fh.read(), providers=["CPUExecutionProvider"])
        except FileNotFoundError:
            raise DataError(f"model {model}: no such file; run the pipeline or name one with --model") from None
        meta = session.get_modelmeta().custom_metadata_map
        if "classes" not in meta or "image_shape_hwc" not in meta:
            raise DataError(f"model {model}: no class names or input size in its metadata; "
                            "use an ONNX file written by `python -m tasks.export`")
        return cls(session, json.loads(meta["classes"]), tuple(json.loads(meta["image_shape_hwc"])), model)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities for uint8 NHWC images."""
        logits = onnx_logits(self.session, to_model_input(torch.from_numpy(images)).numpy())
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)


def image_files(paths: list[str]) -> list[str]:
    """Files named, plus the image files under folders named (sorted); a missing path is an error."""
    found: list[str] = []
    for p in paths:
        fs, root = fsspec.core.url_to_fs(p)
        if fs.isdir(root):
            inside = sorted(f for f in fs.find(root) if Path(f).suffix.lower() in IMAGE_SUFFIXES)
            found += [fs.unstrip_protocol(f) if "://" in p else f for f in inside]
        elif fs.exists(root):
            found.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    return found


def classify(classifier: Classifier, files: list[str], top: int = 1, batch_size: int = 256,
             max_pixels: int = IngestConfig().max_image_pixels, progress: bool = False) -> list[dict]:
    """One row per file: its `top` classes with probabilities, or the reason it could not be read."""
    h, _, c = classifier.image_shape
    rows: list[dict] = []
    batch: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        probs = classifier.predict(np.stack([img for _, img in batch]))
        for (i, _), p in zip(batch, probs):
            best = np.argsort(-p)[:top]
            rows[i]["predictions"] = [(classifier.classes[k], float(p[k])) for k in best]
        batch.clear()

    for f in track(files, description="classifying", disable=not progress):
        rows.append({"file": f, "predictions": [], "error": ""})
        try:
            with fsspec.open(f, "rb") as fh:
                batch.append((len(rows) - 1, decode_image(fh.read(), h, c, max_pixels)))
        except BadImage as exc:
            rows[-1]["error"] = f"{exc.reason}: {exc.detail}"
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return rows


def write_csv(rows: list[dict], out: Path, top: int) -> None:
    with atomic_file(out) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", *[f"{k}{i}" for i in range(1, top + 1) for k in ("class", "probability")], "error"])
        for r in rows:
            cells = [x for cls, prob in r["predictions"] for x in (cls, f"{prob:.6f}")]
            writer.writerow([r["file"], *cells, *[""] * (2 * top - len(cells)), r["error"]])


Model = Annotated[str | None, typer.Option(help="ONNX file to use (default: the registry's champion).")]
Registry = Annotated[str | None, typer.Option(help="Registry whose champion to use (default: retrain.registry_dir).")]
CsvOut = Annotated[Path | None, typer.Option("--csv", help="Write the predictions to this CSV instead of a table.")]


@stage_entry
def main(paths: Annotated[list[str], typer.Argument(help="Image files and/or folders (local or fsspec URLs).")],
         model: Model = None, registry: Registry = None,
         top: Annotated[int, typer.Option(min=1, help="Classes per image in the CSV (the table shows the best).")] = 1,
         csv_out: CsvOut = None,
         params: Annotated[Path, typer.Option(help="Settings file (for the registry location).")] = Path("params.yaml"),
         ) -> None:
    """Classify images with the champion model (or --model), report each file's class and probability."""
    if model is None:
        where = registry or location(Path.cwd(), load_params(params).retrain.registry_dir)
        model = champion_model(where)
        if model is None:
            raise DataError(f"registry {where} has no champion yet: run `python -m flows.retrain`, "
                            "or name an ONNX file with --model")
    classifier = Classifier.load(model)
    files = image_files(paths)
    if not files:
        raise DataError(f"no image files in {', '.join(paths)} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    rows = classify(classifier, files, top=min(top, len(classifier.classes)), progress=True)
    bad = sum(1 for r in rows if r["error"])
    if csv_out:
        write_csv(rows, csv_out, min(top, len(classifier.classes)))
        log.info("predict: %d file(s) -> %s", len(rows), csv_out)
    else:
        table = Table("file", "class", "probability", "error")
        for r in rows:
            cls, prob = r["predictions"][0] if r["predictions"] else ("", None)
            table.add_row(r["file"], cls, "" if prob is None else f"{prob:.3f}", r["error"])
        Console().print(table)
    log.info("predict: %d image(s) classified with %s%s", len(rows) - bad, classifier.source,
             f"; {bad} file(s) could not be read (reasons in the output)" if bad else "")


if __name__ == "__main__":
    typer.run(main)
