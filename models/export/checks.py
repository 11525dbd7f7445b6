"""Export's checks: a PyTorch model to ONNX with its metadata, parity against PyTorch and top-1 agreement on the
whole test split; the INT8 file against FP32; the drift reference of the served file."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from lab2prod.core.errors import ParityError
from lab2prod.core.layout import Workspace
from lab2prod.core.settings import Params
from lab2prod.data.dataset import SplitBatches, array_batches, pixels_input
from lab2prod.monitor import drift
from lab2prod.serve.runtime import logits, onnx_top1, session
from models.export.onnx_export import add_metadata, check_parity, to_onnx
from models.nets.inputs import torch_top1
from models.nets.model_file import load_model_file


def export_checked(
    net: torch.nn.Module, info: dict, path: Path, variant: str, params: Params, x_test: SplitBatches
) -> dict[str, Any]:
    """Export one PyTorch model, check it fully and match it to PyTorch; returns its parity record."""
    cfg = params.export
    to_onnx(net, info.image_shape, path, cfg.opset, cfg.exporter)
    add_metadata(path, info, variant, params.ingest.resize)
    onnx.checker.check_model(str(path), full_check=True)
    sess = session(path)
    diffs = check_parity(
        net, sess, x_test.first(max(cfg.parity_batch_sizes)), cfg.parity_batch_sizes, cfg.atol, variant, cfg.rtol
    )
    agreement = float((torch_top1(net, x_test) == onnx_top1(sess, x_test)).mean())
    return {
        "file": path.name,
        "max_abs_logit_diff": diffs,
        "atol": cfg.atol,
        "rtol": cfg.rtol,
        "test_top1_agreement": agreement,
        "onnx_bytes": path.stat().st_size,
    }


def export_variant(
    name: str, ws: Workspace, target: Path, fp32_onnx: Path, params: Params, x_test: SplitBatches
) -> dict[str, Any]:
    """One accepted compressed variant as ONNX, checked: an INT8 file against the ONNX file of the network it
    quantizes (FP32's, or the pruned / student file exported just before it), the others against PyTorch."""
    if name.endswith("int8"):
        parent = name.removesuffix("_int8") if name != "int8" else None
        reference = fp32_onnx.with_name(f"model_{parent}.onnx") if parent else fp32_onnx
        if not reference.exists():
            raise ParityError(f"{name}: the {parent} file it quantizes was not exported")
        info = load_model_file(ws.compressed / f"{parent}.pt" if parent else ws.model)[1]
        return export_int8(ws.compressed / f"{name}.onnx", target, reference, info, params, x_test, name)
    net, info = load_model_file(ws.compressed / f"{name}.pt")
    return export_checked(net, info, target, name, params, x_test)


def export_int8(
    source: Path,
    path: Path,
    reference: Path,
    info: dict,
    params: Params,
    x_test: SplitBatches,
    variant: str = "int8",
) -> dict[str, Any]:
    """Check the compress stage's INT8 file and require top-1 agreement with the ONNX file it quantizes."""
    shutil.copyfile(source, path)
    add_metadata(path, info, variant, params.ingest.resize)
    onnx.checker.check_model(str(path), full_check=True)
    agreement = float((onnx_top1(reference, x_test) == onnx_top1(path, x_test)).mean())
    needed = params.compress.int8.min_top1_agreement
    if agreement < needed:
        raise ParityError(
            f"{variant}: top-1 agreement with {'FP32' if variant == 'int8' else reference.name} {agreement:.4f} < "
            f"compress.int8.min_top1_agreement = {needed}"
        )
    key = "test_top1_agreement_with_fp32" if variant == "int8" else "test_top1_agreement_with_source"
    return {"file": path.name, key: agreement, "onnx_bytes": path.stat().st_size}


def drift_reference(onnx_file: Path, x_test: SplitBatches, classes: list[str]) -> dict[str, Any]:
    """What the served model (the deployable default) sees and answers on its test split: the baseline the
    drift monitor compares served traffic with (lab2prod/monitor/drift.py). Travels into every registry version.
    Only the images the reference keeps (drift.reference_rows: at most MAX_REFERENCE) are decoded."""
    sess = session(onnx_file)
    images = x_test.images(drift.reference_rows(len(x_test)))
    z = np.concatenate([logits(sess, pixels_input(x)) for x in array_batches(images)])
    probs = np.exp(z - z.max(axis=1, keepdims=True))
    return drift.reference(images, probs / probs.sum(axis=1, keepdims=True), classes)
