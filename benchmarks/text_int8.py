"""INT8 of a text model, three ways, side by side with FP32: ONNX Runtime dynamic quantization (what compress
builds by default), static QDQ of the matrix products only (LayerNorm, GELU and Softmax left in FP32:
`text.int8_mode: static`), and static QDQ of every node type ONNX Runtime can quantize (its default, for
reference). For each: test accuracy, top-1 agreement with FP32, file size, and median latency at batch 1 and
32 on 64-token inputs (one thread; export's interleaved benchmark, models/export/speed.py).

    python -m benchmarks.text_int8 --workspace /path/to/project     # a project whose train stage made a text model
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import numpy as np
import onnxruntime as ort
import typer

from lab2prod.core.layout import Workspace
from lab2prod.core.settings import Int8Config
from lab2prod.data.text import read_texts
from lab2prod.data.tokens import TextEncoder
from models.compress.compression import ENCODER_OPS, quantize_int8
from models.export.machine import describe_machine
from models.export.speed import measure
from models.text.compress import calibration_batches
from models.text.export import bench_inputs, onnx_text_logits, to_text_onnx
from models.text.model_file import load_text_model

app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])


def one_thread(path: Path):
    """A runner of `path` on one intra-op thread (models/export/speed.py's runners use ORT's defaults)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})


@app.command()
def main(
    workspace: Annotated[Path, typer.Option(help="project folder with data/prepared and artifacts/train")] = Path("."),
    calls: Annotated[int, typer.Option(min=5, help="timed calls per file and batch size")] = 50,
    calibration_texts: Annotated[int, typer.Option(min=8)] = 512,
) -> None:
    ws = Workspace.under(workspace)
    net, info = load_text_model(ws.model)
    encoder = TextEncoder(info.tokenizer, info.max_length)
    texts, labels = read_texts(ws.prepared, "test")
    train_texts, _ = read_texts(ws.prepared, "train")
    print(describe_machine())
    print(
        f"model: {info.spec.architecture}, {sum(p.numel() for p in net.parameters()):,} parameters; "
        f"test split {len(texts)} texts; calibration {min(calibration_texts, len(train_texts))} train texts"
    )
    inputs = bench_inputs(encoder, texts, len(texts))  # every test text as exactly 64 tokens
    with tempfile.TemporaryDirectory() as scratch:
        d = Path(scratch)
        fp32 = d / "fp32.onnx"
        to_text_onnx(net, fp32, 18)
        batches = calibration_batches(encoder, train_texts[:calibration_texts])
        files = {"fp32": fp32}
        for name, mode, ops in (
            ("dynamic", "dynamic", None),
            ("static, MatMul only", "static", ENCODER_OPS),
            ("static, every op", "static", None),
        ):
            files[name] = d / f"{len(files)}.onnx"
            quantize_int8(fp32, files[name], batches if mode == "static" else None, Int8Config(mode=mode), ops)
        y_fp32 = onnx_text_logits(fp32, encoder, texts).argmax(1)
        # export's own benchmark: blocks of calls interleaved across the files in shuffled order, batch 1 and 32
        speed = measure({n: one_thread(p) for n, p in files.items()}, inputs, calls, 32, max(10, calls // 5))
        print(f"\n{'file':22s} {'test acc':>9s} {'agree':>7s} {'MB':>6s} {'b1 ms':>8s} {'b32 ms':>8s} {'b1 x':>6s}")
        for name, path in files.items():
            y = onnx_text_logits(path, encoder, texts).argmax(1)
            b1, b32 = speed[name]["batch1_p50_ms"], 32_000 / speed[name]["batch32_images_per_s"]
            print(
                f"{name:22s} {np.mean(y == labels):9.4f} {np.mean(y == y_fp32):7.4f} "
                f"{path.stat().st_size / 1e6:6.1f} {b1:8.2f} {b32:8.1f} {speed['fp32']['batch1_p50_ms'] / b1:6.2f}"
            )


if __name__ == "__main__":
    app()
