"""ONNX Runtime without PyTorch: one way to open a session and read logits (predict and the server import
only this, so they start fast and small). Every file lab2prod exports takes input "pixels" (float32
NCHW, pixel / 255) and answers "logits"."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

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
