"""ONNX files: export from PyTorch, lab2prod's metadata, one way to open a session, predictions, parity.

Every file lab2prod writes takes input "pixels": float32 (batch, C, H, W) = pixel / 255 and answers
"logits"; its metadata carries the class names, input shape, variant and lineage.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from lab2prod.core.errors import ParityError
from lab2prod.serve.runtime import INPUT, OUTPUT, logits
from models.nets.inputs import to_model_input
from models.nets.model_file import Lineage, ModelInfo

# The exporter's optimiser passes log every rewrite at INFO; keep the stages' own lines readable.
for _noisy in ("onnx_ir", "onnxscript"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)
# It also warns that torchvision's detection ops cannot be registered; we use none of them.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


def to_onnx(net: torch.nn.Module, image_shape: list[int], path: Path, opset: int, exporter: str = "auto") -> None:
    """Export with a dynamic batch axis. `exporter` (export.exporter): "torchscript" traces the network (PyTorch's
    classic exporter: about a second for a CNN), "dynamo" goes through torch.export (the newer one: ~9 s for the same
    CNN on a 2-core CPU, most of it start-up); "auto" is the TorchScript one for image networks. Either file is then
    checked the same way (models/export/checks.py)."""
    height, width, channels = image_shape
    exporter = "torchscript" if exporter == "auto" else exporter
    export_graph(net, torch.rand(2, channels, height, width), path, opset, INPUT, {0: "batch"}, exporter)


# dynamic_shapes bounds of torch.export, by axis name
DIM_MAX = {"batch": 65_536, "length": 8192}


def export_graph(
    net: torch.nn.Module,
    example: torch.Tensor,
    path: Path,
    opset: int,
    input_name: str,
    axes: dict[int, str],
    exporter: str,
) -> None:
    """`net` to ONNX with one input `input_name` whose `axes` are dynamic, by the TorchScript exporter (tracing
    `example`) or torch.export ("dynamo"); output OUTPUT, dynamic along the batch."""
    if exporter == "torchscript":
        with warnings.catch_warnings():  # PyTorch >= 2.9 warns on every call that this exporter is the legacy one
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
            warnings.filterwarnings("ignore", message="The feature will be removed")
            # shape branches (the image input layer's resize; the file fixes H and W) become constants, as meant
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            # transformers indexes position and token-type tables by positions, never negative (and export checks
            # the file against PyTorch at two lengths)
            warnings.filterwarnings("ignore", message="Exporting aten::index operator of advanced indexing")
            torch.onnx.export(
                net.eval(),
                (example,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[input_name],
                output_names=[OUTPUT],
                dynamic_axes={input_name: axes, OUTPUT: {0: "batch"}},
            )
        return
    dims = {axis: torch.export.Dim(name, min=1, max=DIM_MAX[name]) for axis, name in axes.items()}
    program = torch.onnx.export(
        net.eval(),
        (example,),
        dynamo=True,
        opset_version=opset,
        input_names=[input_name],
        output_names=[OUTPUT],
        dynamic_shapes=(dims,),
        verbose=False,
        optimize=True,
    )
    program.save(str(path))


def add_metadata(path: Path, info: ModelInfo, variant: str, resize: str = "stretch") -> None:
    """Classes, input layout, how images are resized (ingest.resize), normalisation note, variant and lineage
    as ONNX metadata_props: what predict and serve need to decode an image exactly as ingest did."""
    props = {
        "classes": json.dumps(info.classes),
        "image_shape_hwc": json.dumps(info.image_shape),
        "input": info.input,
        "resize": resize,
        "variant": variant,
    }
    write_metadata(path, props, info.lineage)


def write_metadata(path: Path, props: dict[str, str], lineage: Lineage) -> None:
    """Replace an ONNX file's metadata_props with `props`, the lineage's fields and producer=lab2prod."""
    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in {**props, **{k: str(v) for k, v in lineage.model_dump().items()}, "producer": "lab2prod"}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def check_parity(
    net: torch.nn.Module,
    sess: ort.InferenceSession,
    images: torch.Tensor,
    batch_sizes: list[int],
    atol: float,
    label: str = "model",
    rtol: float = 0.0,
) -> dict[str, float]:
    """Max |logit difference| ONNX Runtime vs PyTorch per batch size; ParityError where a logit differs by more
    than atol + rtol x |its PyTorch value| (numpy.allclose's rule: a tolerance that scales with the logits, so
    the same file passes on CPUs whose kernels round differently), or where the top-1 class differs."""
    diffs = {}
    for bs in batch_sizes:
        x = to_model_input(images[:bs])
        with torch.no_grad():
            expected = net(x).numpy()
        got = logits(sess, x.numpy())
        if got.shape != expected.shape:
            raise ParityError(f"{label}, batch {bs}: ONNX output shape {got.shape} != PyTorch {expected.shape}")
        diff = np.abs(got - expected)
        diffs[str(bs)] = float(diff.max())
        excess = float((diff - rtol * np.abs(expected)).max())
        if excess > atol:
            raise ParityError(
                f"{label}, batch {bs}: max |ONNX - PyTorch| = {diffs[str(bs)]:.2e} > export.atol = {atol:g} "
                f"+ export.rtol = {rtol:g} x |logit|"
            )
        flipped = int((got.argmax(1) != expected.argmax(1)).sum())
        if flipped:
            raise ParityError(f"{label}, batch {bs}: ONNX's top-1 class differs from PyTorch's on {flipped} image(s)")
    return diffs
