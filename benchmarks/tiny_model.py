"""A real ONNX classifier small enough to write anywhere in milliseconds: what the server tests and the soak
serve when no pipeline run is at hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def tiny_onnx(path: Path, seed: int = 0) -> Path:
    """A real ONNX classifier of 16x16 grey images into classes a, b, c (logits = flattened pixels @ W)."""
    import onnx
    from onnx import TensorProto, helper

    w = np.random.default_rng(seed).normal(size=(256, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["pixels"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["n", 1, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.flatten())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    for key, value in {"classes": ["a", "b", "c"], "image_shape_hwc": [16, 16, 1]}.items():
        model.metadata_props.add(key=key, value=json.dumps(value))
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path
