"""Stage 6, export: every deployable model as ONNX, checked against PyTorch, benchmarked, described.

Each ONNX file gets a dynamic batch axis, passes `onnx.checker` (full check) and must compute what
its source computes before anything lands: FP32-derived files (FP32, pruned, sparse, student) match
their PyTorch model's logits within `export.atol` at each of `export.parity_batch_sizes`; the INT8
file must agree with the FP32 file's top-1 on at least `compress.int8.min_top1_agreement` of the
test split (quantization moves logits, so allclose is the wrong test). Only variants the compress
stage accepted are exported. Then PyTorch eager and every ONNX file are benchmarked side by side.

Writes (the directory is replaced atomically):
    artifacts/export/model.onnx            FP32; input "pixels": float32 (batch, C, H, W) = pixel / 255
    artifacts/export/model_<variant>.onnx  accepted compressed variants (pruned, sparse, student, int8)
    artifacts/export/model_card.md         intended use, data, metrics, variants, speed, lineage, limits
    metrics/export.json                    parity / agreement per file
    metrics/benchmark.json                 latency p50/p95, throughput, size, accuracy per variant, CPU
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
import typer

from models.classifier import load_split, to_model_input
from models.networks import load_model_file
from tasks.artifacts import atomic_dir, read_json, write_json
from tasks.config import Params, load_params
from tasks.logs import stage_entry
from tasks.model_card import write_model_card
from tasks.serving_benchmark import cpu_features, measure, onnx_runner, torch_runner

log = logging.getLogger("tasks.export")  # not __name__: that is __main__ under python -m
# The exporter's optimiser passes log every rewrite at INFO; keep the stage's own lines readable.
for _noisy in ("onnx_ir", "onnxscript"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)
# It also warns that torchvision's detection ops cannot be registered; we use none of them.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)

PREPARED = Path("data/prepared")
MODEL = Path("artifacts/train/model.pt")
COMPRESSED = Path("artifacts/compress")
COMPRESS_METRICS = Path("metrics/compress.json")
EVALUATE_METRICS = Path("metrics/evaluate.json")
OUT_DIR = Path("artifacts/export")
METRICS = Path("metrics/export.json")
BENCHMARK = Path("metrics/benchmark.json")
INPUT, OUTPUT = "pixels", "logits"


class ParityError(RuntimeError):
    """An ONNX model does not compute what its source model computes."""


def to_onnx(net: torch.nn.Module, image_shape: list[int], path: Path, opset: int) -> None:
    """Export with a dynamic batch axis (torch.export-based exporter)."""
    height, width, channels = image_shape
    example = torch.rand(2, channels, height, width)
    program = torch.onnx.export(
        net.eval(), (example,), dynamo=True, opset_version=opset, input_names=[INPUT], output_names=[OUTPUT],
        dynamic_shapes={"input": {0: torch.export.Dim("batch", min=1, max=65_536)}},
        verbose=False, optimize=True,
    )
    program.save(str(path))


def add_metadata(path: Path, info: dict, variant: str) -> None:
    """Classes, input layout, normalisation note, variant and lineage as ONNX metadata_props."""
    model = onnx.load(str(path))
    props = {
        "classes": json.dumps(info["classes"]),
        "image_shape_hwc": json.dumps(info["image_shape"]),
        "input": info["input"],
        "variant": variant,
        **{k: str(v) for k, v in info["lineage"].items()},
        "producer": "lab2prod",
    }
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def onnx_logits(session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    return session.run([OUTPUT], {session.get_inputs()[0].name: x})[0]


def onnx_predictions(path: Path, images: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """Top-1 class indices of an ONNX model for uint8 NHWC images, in batches."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([onnx_logits(session, to_model_input(images[i:i + batch_size]).numpy()).argmax(1)
                           for i in range(0, len(images), batch_size)])


def check_parity(net: torch.nn.Module, session: ort.InferenceSession, images: torch.Tensor,
                 batch_sizes: list[int], atol: float, label: str = "model") -> dict[str, float]:
    """Max |logit difference| ONNX Runtime vs PyTorch per batch size; ParityError over `atol`."""
    diffs = {}
    for bs in batch_sizes:
        x = to_model_input(images[:bs])
        with torch.no_grad():
            expected = net(x).numpy()
        got = onnx_logits(session, x.numpy())
        if got.shape != expected.shape:
            raise ParityError(f"{label}, batch {bs}: ONNX output shape {got.shape} != PyTorch {expected.shape}")
        diffs[str(bs)] = float(np.abs(got - expected).max())
        if diffs[str(bs)] > atol:
            raise ParityError(f"{label}, batch {bs}: max |ONNX - PyTorch| = {diffs[str(bs)]:.2e} > export.atol = {atol:g}")
    return diffs


def export_checked(net: torch.nn.Module, info: dict, path: Path, variant: str, params: Params,
                   x_test: torch.Tensor) -> dict[str, Any]:
    """Export one PyTorch model, check it fully and match it to PyTorch; returns its parity record."""
    cfg = params.export
    to_onnx(net, info["image_shape"], path, cfg.opset)
    add_metadata(path, info, variant)
    onnx.checker.check_model(str(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diffs = check_parity(net, session, x_test, cfg.parity_batch_sizes, cfg.atol, label=variant)
    with torch.no_grad():
        torch_top1 = net(to_model_input(x_test)).argmax(1).numpy()
    onnx_top1 = onnx_logits(session, to_model_input(x_test).numpy()).argmax(1)
    return {"file": path.name, "max_abs_logit_diff": diffs, "atol": cfg.atol,
            "test_top1_agreement": float((torch_top1 == onnx_top1).mean()), "onnx_bytes": path.stat().st_size}


def export_int8(source: Path, path: Path, fp32_onnx: Path, info: dict, params: Params,
                x_test: torch.Tensor) -> dict[str, Any]:
    """Check the compress stage's INT8 file and require top-1 agreement with the FP32 ONNX file."""
    shutil.copyfile(source, path)
    add_metadata(path, info, "int8")
    onnx.checker.check_model(str(path), full_check=True)
    x = to_model_input(x_test).numpy()
    fp32 = onnx_logits(ort.InferenceSession(str(fp32_onnx), providers=["CPUExecutionProvider"]), x).argmax(1)
    int8 = onnx_logits(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), x).argmax(1)
    agreement = float((fp32 == int8).mean())
    needed = params.compress.int8.min_top1_agreement
    if agreement < needed:
        raise ParityError(f"int8: top-1 agreement with FP32 {agreement:.4f} < compress.int8.min_top1_agreement = {needed}")
    return {"file": path.name, "test_top1_agreement_with_fp32": agreement, "onnx_bytes": path.stat().st_size}


def export(params: Params, prepared: Path = PREPARED, model_file: Path = MODEL, compressed: Path = COMPRESSED,
           compress_metrics: Path = COMPRESS_METRICS, evaluate_metrics: Path = EVALUATE_METRICS,
           out_dir: Path = OUT_DIR, metrics_file: Path = METRICS, benchmark_file: Path = BENCHMARK) -> dict:
    """Export, check and benchmark every deployable model; files land only if every check passes."""
    cfg = params.export
    net, info = load_model_file(model_file)
    x_test, y_test = load_split(prepared / "test.npz")
    if len(x_test) < max(cfg.parity_batch_sizes):
        raise ParityError(f"test split has {len(x_test)} images; export.parity_batch_sizes needs {max(cfg.parity_batch_sizes)}")
    compress = read_json(compress_metrics) if compress_metrics.exists() else {"variants": {}}
    accepted = {name: v for name, v in compress["variants"].items() if v.get("accepted")}

    with atomic_dir(out_dir) as tmp:
        records = {"fp32": export_checked(net, info, tmp / "model.onnx", "fp32", params, x_test)}
        runners = {"pytorch_eager": torch_runner(net), "onnx_fp32": onnx_runner(tmp / "model.onnx")}
        for name in accepted:
            target = tmp / f"model_{name}.onnx"
            if name == "int8":
                records[name] = export_int8(compressed / "int8.onnx", target, tmp / "model.onnx", info, params, x_test)
            else:
                variant_net, variant_info = load_model_file(compressed / f"{name}.pt")
                records[name] = export_checked(variant_net, variant_info, target, name, params, x_test)
            runners[f"onnx_{name}"] = onnx_runner(target)
        log.info("export: %d ONNX file(s) checked; benchmarking %s", len(records), ", ".join(runners))

        speed = measure(runners, to_model_input(x_test).numpy(), cfg.benchmark_calls, cfg.benchmark_batch,
                        cfg.benchmark_batch_calls)
        benchmark = {"machine": cpu_features(), "variants": {}}
        evaluate = read_json(evaluate_metrics) if evaluate_metrics.exists() else {}
        fp32_scores = compress.get("fp32") or {"accuracy": evaluate.get("accuracy"), "f1_macro": evaluate.get("f1_macro")}
        for runner_name, figures in speed.items():
            variant = "fp32" if runner_name in ("pytorch_eager", "onnx_fp32") else runner_name.removeprefix("onnx_")
            scored = fp32_scores if variant == "fp32" else accepted[variant]
            size = model_file.stat().st_size if runner_name == "pytorch_eager" else records[variant]["onnx_bytes"]
            benchmark["variants"][runner_name] = {
                **figures, "bytes": size, "accuracy": scored.get("accuracy"), "f1_macro": scored.get("f1_macro"),
                "macs": scored.get("macs"), "params": scored.get("params")}
        onnx_names = [n for n in benchmark["variants"] if n.startswith("onnx_")]
        default = min(onnx_names, key=lambda n: benchmark["variants"][n]["batch1_p50_ms"])
        benchmark["deployable_default"] = default
        benchmark["rejected"] = {n: v["reason"] for n, v in compress["variants"].items() if not v.get("accepted")}
        write_model_card(tmp / "model_card.md", info, params, evaluate, benchmark, read_json(prepared / "meta.json"))

    write_json(metrics_file, {"opset": cfg.opset, "files": records})
    write_json(benchmark_file, benchmark)
    eager, fp32 = benchmark["variants"]["pytorch_eager"], benchmark["variants"]["onnx_fp32"]
    log.info("export: batch-1 p50 PyTorch eager %.3f ms, ONNX FP32 %.3f ms (%.1fx); deployable default: %s",
             eager["batch1_p50_ms"], fp32["batch1_p50_ms"], eager["batch1_p50_ms"] / fp32["batch1_p50_ms"], default)
    return {"files": records, "benchmark": benchmark}


@stage_entry
def main(params: Annotated[Path, typer.Option(help="Settings file to read.")] = Path("params.yaml")) -> None:
    """Export the trained model and accepted compressed variants to artifacts/export/, checked and benchmarked."""
    try:
        export(load_params(params))
    except ParityError as exc:
        log.error("export: an ONNX model does not match its source, nothing written: %s", exc)
        raise SystemExit(1) from None


if __name__ == "__main__":
    typer.run(main)
