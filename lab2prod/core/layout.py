"""Where the pipeline keeps things in a project checkout: one `Workspace` names every file a stage reads
or writes, relative to the project root by default.

dvc.yaml names the same paths as each stage's deps and outs. `Workspace.under(root)` puts a whole
run somewhere else (a benchmark's temp dir, a test's); `dataclasses.replace` moves single outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

PARAMS = Path("params.yaml")


@dataclass(frozen=True)
class Workspace:
    sources: Path = Path("data/sources.json")  # sources: a digest per source of ingest (what DVC cannot see)
    prepared: Path = Path("data/prepared")  # ingest: {train,val,test}/ shards, meta.json, quarantine/
    augmented: Path = Path("data/augmented")  # augment: policy.json (+ offline copies' shards)
    augment_preview: Path = Path("plots/augment_preview.png")
    train_dir: Path = Path("artifacts/train")  # train: model.pt, checkpoints/
    train_metrics: Path = Path("metrics/train")  # DVCLive metrics.json and curves
    evaluate_metrics: Path = Path("metrics/evaluate.json")
    predictions: Path = Path("metrics/evaluate/predictions.csv")
    confusion_png: Path = Path("plots/confusion_matrix.png")
    compressed: Path = Path("artifacts/compress")  # compress: accepted variants
    compress_metrics: Path = Path("metrics/compress.json")
    exported: Path = Path("artifacts/export")  # export: model.onnx, model_<variant>.onnx, model_card.md
    export_metrics: Path = Path("metrics/export.json")
    benchmark: Path = Path("metrics/benchmark.json")
    summary: Path = Path("metrics/summary.json")  # export, last: the headline figures DVC's tables show

    @property
    def model(self) -> Path:
        """The weights-only model file train writes."""
        return self.train_dir / "model.pt"

    @classmethod
    def under(cls, root: Path) -> Workspace:
        """The same layout below `root`."""
        default = cls()
        return cls(**{f.name: root / getattr(default, f.name) for f in fields(cls)})


WORKSPACE = Workspace()
