"""metrics/summary.json: a run's headline figures, the one file dvc.yaml declares as metrics.

`dvc metrics show` and `dvc exp show` print every leaf of every declared metrics file: with the train, evaluate,
compress, export and benchmark records declared that was ~300 columns (per-class precision, every variant's
latency percentiles, parity records), unreadable at any terminal width. Those files stay where they are, as
plain outputs, for the stages, the registry, the model card and `lab2prod runs` to read; DVC's tables show
this instead, a few short columns that tell runs apart. The export stage writes it last, from what the
other stages wrote (nothing here is measured again). Keys (docs/tuning.md has the same table): val_acc,
test_acc (the trained model's), deployable (evaluate's verdict), served (the file `lab2prod serve` uses by
default), p50_ms and mmacs (that file's batch-1 median latency and millions of MACs per input).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lab2prod.core.files import read_json, write_json
from lab2prod.core.layout import Workspace


def _get(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def _rounded(value: Any, digits: int) -> Any:
    return round(float(value), digits) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def run_summary(ws: Workspace) -> dict[str, Any]:
    """The headline figures of the run in `ws`, from the files its stages wrote (a missing one gives None)."""

    def load(path: Path) -> dict[str, Any]:
        return read_json(path) if path.exists() else {}

    train, evaluate, bench = load(ws.train_metrics / "metrics.json"), load(ws.evaluate_metrics), load(ws.benchmark)
    served = bench.get("deployable_default")
    variant = (bench.get("variants") or {}).get(served or bench.get("fastest") or "", {})
    macs = variant.get("macs")
    return {
        "val_acc": _get(train, "val.acc"),
        "test_acc": evaluate.get("accuracy"),
        "deployable": bool(_get(evaluate, "verdict.passed")) if "verdict" in evaluate else served is not None,
        "served": served.removeprefix("onnx_") if served else None,
        "p50_ms": _rounded(variant.get("batch1_p50_ms"), 3),
        "mmacs": _rounded(macs / 1e6, 2) if isinstance(macs, (int, float)) else None,
    }


def write_summary(ws: Workspace) -> dict[str, Any]:
    """Write `ws.summary` from the files the stages wrote and return it."""
    summary = run_summary(ws)
    write_json(ws.summary, summary)
    return summary
