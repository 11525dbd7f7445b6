"""Stage 5, export: the trained model as ONNX, checked and matched against PyTorch before it lands.

The file gets a dynamic batch axis, passes `onnx.checker` (full check), and its ONNX Runtime logits
must match PyTorch's within `export.atol` at each of `export.parity_batch_sizes`; only then is it
renamed into place. Its metadata carries class names, input layout, normalisation and lineage.

Writes:
    artifacts/export/model.onnx   input "pixels": float32 (batch, C, H, W) = pixel / 255; output "logits"
    metrics/export.json           parity per batch size, top-1 agreement on the test split, file size
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import numpy as np
import onnx
import onnxruntime as ort
import torch
import typer

from models.classifier import load_split, to_model_input
from models.networks import load_model_file
from tasks.artifacts import atomic_file, write_json
from tasks.config import ExportConfig, load_params
from tasks.logs import stage_entry

log = logging.getLogger("tasks.export")  # not __name__: that is __main__ under python -m
# The exporter's optimiser passes log every rewrite at INFO; keep the stage's own lines readable.
for _noisy in ("onnx_ir", "onnxscript"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)
# It also warns that torchvision's detection ops cannot be registered; we use none of them.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)

PREPARED = Path("data/prepared")
MODEL = Path("artifacts/train/model.pt")
ONNX_FILE = Path("artifacts/export/model.onnx")
METRICS = Path("metrics/export.json")
INPUT, OUTPUT = "pixels", "logits"


class ParityError(RuntimeError):
    """The ONNX model does not compute what the PyTorch model computes."""


def to_onnx(net: torch.nn.Module, image_shape: list[int], path: Path, opset: int) -> None:
    """Export with a dynamic batch axis (torch.export-based exporter)."""
    height, width, channels = image_shape
    example = torch.rand(2, channels, height, width)
    program = torch.onnx.export(
        net, (example,), dynamo=True, opset_version=opset, input_names=[INPUT], output_names=[OUTPUT],
        dynamic_shapes={"input": {0: torch.export.Dim("batch", min=1, max=65_536)}},
        verbose=False, optimize=True,
    )
    program.save(str(path))


def add_metadata(path: Path, info: dict) -> None:
    """Classes, input layout, normalisation and lineage as ONNX metadata_props (strings)."""
    model = onnx.load(str(path))
    props = {
        "classes": json.dumps(info["classes"]),
        "image_shape_hwc": json.dumps(info["image_shape"]),
        "input": info["input"],
        **{k: str(v) for k, v in info["lineage"].items()},
        "producer": "lab2prod",
    }
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def onnx_logits(session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    return session.run([OUTPUT], {INPUT: x})[0]


def check_parity(net: torch.nn.Module, session: ort.InferenceSession, images: torch.Tensor,
                 batch_sizes: list[int], atol: float) -> dict[str, float]:
    """Max |logit difference| ONNX Runtime vs PyTorch per batch size; ParityError over `atol`."""
    diffs = {}
    for bs in batch_sizes:
        x = to_model_input(images[:bs])
        with torch.no_grad():
            expected = net(x).numpy()
        got = onnx_logits(session, x.numpy())
        if got.shape != expected.shape:
            raise ParityError(f"batch {bs}: ONNX output shape {got.shape} != PyTorch {expected.shape}")
        diffs[str(bs)] = float(np.abs(got - expected).max())
        if diffs[str(bs)] > atol:
            raise ParityError(f"batch {bs}: max |ONNX - PyTorch| = {diffs[str(bs)]:.2e} > export.atol = {atol:g}")
    return diffs


def export(cfg: ExportConfig, prepared: Path = PREPARED, model_file: Path = MODEL, onnx_file: Path = ONNX_FILE,
           metrics_file: Path = METRICS) -> dict:
    """Export, check and parity-test the model; the ONNX file lands only if every check passes."""
    net, info = load_model_file(model_file)
    x_test, _ = load_split(prepared / "test.npz")
    if len(x_test) < max(cfg.parity_batch_sizes):
        raise ParityError(f"test split has {len(x_test)} images; export.parity_batch_sizes needs {max(cfg.parity_batch_sizes)}")
    with atomic_file(onnx_file) as tmp:
        to_onnx(net, info["image_shape"], tmp, cfg.opset)
        add_metadata(tmp, info)
        onnx.checker.check_model(str(tmp), full_check=True)
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        diffs = check_parity(net, session, x_test, cfg.parity_batch_sizes, cfg.atol)
        with torch.no_grad():
            torch_top1 = net(to_model_input(x_test)).argmax(1).numpy()
        onnx_top1 = onnx_logits(session, to_model_input(x_test).numpy()).argmax(1)
        size = tmp.stat().st_size
    metrics = {"max_abs_logit_diff": diffs, "atol": cfg.atol,
               "test_top1_agreement": float((torch_top1 == onnx_top1).mean()),
               "onnx_bytes": size, "opset": cfg.opset}
    write_json(metrics_file, metrics)
    log.info("export: %s (%.1f KiB), parity %s, top-1 agreement %.4f", onnx_file, size / 1024, diffs,
             metrics["test_top1_agreement"])
    return metrics


@stage_entry
def main(params: Annotated[Path, typer.Option(help="Settings file to read.")] = Path("params.yaml")) -> None:
    """Export artifacts/train/model.pt to artifacts/export/model.onnx, checked against PyTorch."""
    try:
        export(load_params(params).export)
    except ParityError as exc:
        log.error("export: the ONNX model does not match PyTorch, nothing written: %s", exc)
        raise SystemExit(1) from None


if __name__ == "__main__":
    typer.run(main)
