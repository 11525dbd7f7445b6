"""INT8 on top of pruning and distillation: each network of the last run as FP32 ONNX beside its INT8 files.

For the trained model (artifacts/train/model.pt) and each compressed network the last run kept
(artifacts/compress/{pruned,student}.pt), the network is exported to ONNX and quantized the way the compress
stage does (static QDQ, per-channel, 512 calibration images), once per ONNX Runtime calibration method. Each
file is scored on the test split (accuracy, top-1 agreement with its FP32 file: what `compress.int8.
min_top1_agreement` gates) and timed at batch 1 (median of `--calls` calls, one thread) beside its FP32 file,
the baseline it must beat to be served.

    dvc repro                         # or lab2prod run: a run to read
    python -m benchmarks.int8_stack   # --calls 2000 --methods MinMax,Percentile,Entropy
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import onnxruntime as ort
import torch
import typer

from lab2prod.core.layout import WORKSPACE
from lab2prod.data.dataset import SplitBatches, SplitIndex, pixels_input
from lab2prod.serve.runtime import onnx_top1
from models.compress.compression import CalibrationReader, image_batches
from models.export.onnx_export import to_onnx
from models.nets.model_file import load_model_file

app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])


def batch1_ms(path: Path, image: np.ndarray, calls: int) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: image}
    for _ in range(calls // 10):
        sess.run(None, feed)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def quantize(source: Path, out: Path, calibration: torch.Tensor, method: str) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    prepared = out.with_name(out.stem + "_pre.onnx")
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    name = ort.InferenceSession(str(prepared), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    quantize_static(
        str(prepared),
        str(out),
        CalibrationReader(image_batches(calibration, name)),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=getattr(CalibrationMethod, method),
    )


@app.command()
def main(
    calls: Annotated[int, typer.Option(min=10, help="timed batch-1 calls per file")] = 2000,
    methods: Annotated[str, typer.Option(help="ONNX Runtime calibration methods, comma-separated")] = "MinMax",
) -> None:
    ws = WORKSPACE
    x_test = SplitBatches(ws.prepared, "test")
    train = SplitIndex.read(ws.prepared, "train")
    pick = np.random.default_rng(0).permutation(len(train))[:512]
    calibration = torch.from_numpy(train.images(np.sort(pick)))
    train.close()
    image = pixels_input(x_test.first(1))
    networks = {"fp32": ws.model} | {n: ws.compressed / f"{n}.pt" for n in ("pruned", "student")}
    print(
        f"{'network':8} {'file':18} {'accuracy':>9} {'agreement':>10} {'batch-1 ms':>11} {'vs FP32 file':>13} {'KB':>6}"
    )
    with tempfile.TemporaryDirectory() as scratch:
        for name, path in networks.items():
            if not path.exists():
                print(f"{name:8} (no {path}: not kept by the last run)")
                continue
            net, info = load_model_file(path)
            fp32 = Path(scratch) / f"{name}.onnx"
            to_onnx(net, info.image_shape, fp32, 18)
            reference, base_ms = onnx_top1(fp32, x_test), batch1_ms(fp32, image, calls)
            rows = [("FP32", fp32, reference, base_ms)]
            for method in methods.split(","):
                out = Path(scratch) / f"{name}_{method}.onnx"
                quantize(fp32, out, calibration, method)
                rows.append((f"INT8 {method}", out, onnx_top1(out, x_test), batch1_ms(out, image, calls)))
            for label, file, top1, ms in rows:
                accuracy, agreement = (top1 == x_test.labels).mean(), (top1 == reference).mean()
                kb = file.stat().st_size / 1024
                print(
                    f"{name:8} {label:18} {accuracy:9.4f} {agreement:10.4f} {ms:11.4f} {base_ms / ms:12.2f}x {kb:6.0f}"
                )


if __name__ == "__main__":
    app()
