"""Compressing a text model: ONNX Runtime INT8 of its FP32 ONNX file (graph optimised first: shape inference and
ORT's fusions), scored on the test split and judged like the image variants (models/compress/compression.py
`judge`); an encoder's `student`: the same encoder with half its layers, distilled from it (models/text/distill.py).

INT8 is dynamic by default (`text.int8_mode`): INT8 weights, activations quantized per batch. Static INT8 of a
transformer encoder calibrates every activation to 8 bits, and LayerNorm, GELU, Softmax and the residual Adds
carry outliers that 8 bits cannot hold: static here quantizes the matrix products only (QDQ for MatMul and
Gemm, calibrated on training texts), so no LayerNorm, GELU or Softmax reads an 8-bit tensor.
benchmarks/text_int8.py measures the three."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, f1_score
from torch import nn

from lab2prod.core.layout import Workspace
from lab2prod.core.records import CompressReport, VariantResult
from lab2prod.core.settings import Params
from lab2prod.data.text import read_texts
from lab2prod.data.tokens import TextEncoder
from models.compress.compression import ENCODER_OPS, judge, quantize_int8
from models.compress.variants import failed_variant
from models.text.export import TEXT_INPUT, onnx_text_logits, to_text_onnx
from models.text.model_file import TextModelInfo, load_text_model, save_text_model
from models.text.scoring import text_logits

log = logging.getLogger("models.text.compress")


def _linear_macs(net: nn.Module) -> int:
    """Multiply-accumulates of the linear layers for one token (an encoder) or one text (the MLP's head)."""
    return sum(m.in_features * m.out_features for m in net.modules() if isinstance(m, nn.Linear))


def _scored(net: nn.Module, y_true: np.ndarray, y_pred: np.ndarray, path: Path, file: str | None) -> VariantResult:
    """A text network's record: its test scores, MACs and parameters, the size of its model file `path`."""
    return VariantResult(
        accuracy=float(accuracy_score(y_true, y_pred)),
        f1_macro=float(f1_score(y_true, y_pred, average="macro")),
        macs=_linear_macs(net),
        params=sum(p.numel() for p in net.parameters()),
        file=file,
        bytes=path.stat().st_size,
    )


def calibration_batches(encoder: TextEncoder, texts: list[str], batch: int = 32) -> list[dict[str, np.ndarray]]:
    """Training texts as static INT8's calibration batches of token ids (padded per batch, as served)."""
    return [{TEXT_INPUT: encoder(texts[i : i + batch])} for i in range(0, len(texts), batch)]


def compress_text(params: Params, ws: Workspace, out_dir: Path) -> CompressReport:
    """metrics/compress.json's record for a text model; the accepted files (`int8.onnx`, `student.pt`) in
    `out_dir`."""
    cfg, model, prepared = params.compress, ws.model, ws.prepared
    net, info = load_text_model(model)
    texts, y_true = read_texts(prepared, "test")
    encoder = TextEncoder(info.tokenizer, info.max_length)
    y_fp32 = text_logits(net, encoder, texts).argmax(1)
    fp32 = _scored(net, y_true, y_fp32, model, file=None)
    variants: dict[str, VariantResult] = {}
    if cfg.int8.enabled:
        mode = params.text.int8_mode
        calibration = None
        if mode == "static":
            train_texts = read_texts(prepared, "train")[0][: cfg.int8.calibration_images]
            calibration = calibration_batches(encoder, train_texts)
            log.info("compress: text INT8 static, MatMul/Gemm only, calibrated on %d training texts", len(train_texts))
        target = out_dir / "int8.onnx"
        with tempfile.TemporaryDirectory() as scratch:
            fp32_onnx = Path(scratch) / "fp32.onnx"
            to_text_onnx(net, fp32_onnx, params.export.opset, params.export.exporter)
            quantize_int8(fp32_onnx, target, calibration, cfg.int8.model_copy(update={"mode": mode}), ENCODER_OPS)
            fp32_bytes = fp32_onnx.stat().st_size
            y_onnx = onnx_text_logits(fp32_onnx, encoder, texts).argmax(1)
        y_int8 = onnx_text_logits(target, encoder, texts).argmax(1)
        int8 = VariantResult(
            accuracy=float(accuracy_score(y_true, y_int8)),
            f1_macro=float(f1_score(y_true, y_int8, average="macro")),
            macs=fp32.macs,
            params=fp32.params,
            file=target.name,
            bytes=target.stat().st_size,
            fp32_onnx_bytes=fp32_bytes,
            top1_agreement_with_fp32=float(np.mean(y_int8 == y_onnx)),
        )
        agreement = params.text.int8_min_top1_agreement  # text's own bar, in the place of the images' one
        variants["int8"] = judge(
            int8, fp32, cfg.model_copy(update={"int8": cfg.int8.model_copy(update={"min_top1_agreement": agreement})})
        )
        if not variants["int8"].accepted:
            target.unlink()
            variants["int8"] = variants["int8"].model_copy(update={"file": None})
    if cfg.distill.enabled and info.spec.architecture == "encoder":
        variants["student"] = _student(params, ws, net, info, encoder, texts, y_true, fp32, out_dir)
    thresholds = {"max_accuracy_drop_points": cfg.max_accuracy_drop, "max_f1_drop_points": cfg.max_f1_drop}
    return CompressReport(fp32=fp32, variants=variants, thresholds=thresholds)


def _student(
    params: Params,
    ws: Workspace,
    net: nn.Module,
    info: TextModelInfo,
    encoder: TextEncoder,
    texts: list[str],
    y_true: np.ndarray,
    fp32: VariantResult,
    out_dir: Path,
) -> VariantResult:
    """The shallower encoder distilled from `net` (models/text/distill.py), scored and judged; a failure is a
    rejection with its reason, never a failed stage."""
    try:
        from models.text.distill import distill_text  # Lightning: imported only when a student is trained

        student, student_info = distill_text(params, ws, net, info)
    except Exception as exc:  # any library failure inside the distillation: reported, the other variants go on
        log.warning("compress: text student failed: %s", exc)
        return failed_variant(f"{type(exc).__name__}: {exc}")
    target = out_dir / "student.pt"
    save_text_model(target, student, student_info)
    result = _scored(student, y_true, text_logits(student, encoder, texts).argmax(1), target, file=target.name)
    judged = judge(result, fp32, params.compress)
    if not judged.accepted:
        target.unlink()
        judged = judged.model_copy(update={"file": None})
    return judged
