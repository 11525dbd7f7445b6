"""ONNX Runtime without PyTorch: one way to open a session and read logits (predict and the server import
only this, so they start fast and small). Every file lab2prod exports takes input "pixels" (float32
NCHW, pixel / 255) and answers "logits"."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from lab2prod.data.dataset import SplitBatches, array_batches, pixels_input

INPUT, OUTPUT = "pixels", "logits"


def session(model: Path | str | bytes) -> ort.InferenceSession:
    """An ONNX Runtime CPU session with its default settings (as served) for a file path or the file's bytes."""
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), providers=["CPUExecutionProvider"])


def logits(sess: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    """The model's logits for float32 NCHW input in [0, 1]."""
    return sess.run([OUTPUT], {sess.get_inputs()[0].name: x})[0]


def variant_file(runner: str) -> str:
    """The ONNX file export writes for a benchmark runner: onnx_fp32 -> model.onnx, onnx_int8 -> model_int8.onnx."""
    return "model.onnx" if runner == "onnx_fp32" else f"model_{runner.removeprefix('onnx_')}.onnx"


def onnx_top1(
    model: Path | str | ort.InferenceSession, images: np.ndarray | SplitBatches, batch_size: int = 512
) -> np.ndarray:
    """Top-1 class indices of an ONNX model for uint8 NHWC images (an array, or a split streamed), in batches."""
    sess = model if isinstance(model, ort.InferenceSession) else session(model)
    out = [logits(sess, pixels_input(x)).argmax(1) for x in array_batches(images, batch_size)]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
