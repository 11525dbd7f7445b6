"""Making a trained model smaller and faster: structured and unstructured pruning, INT8 quantization,
and the gate every compressed variant must pass against the FP32 model."""

from __future__ import annotations

import collections
import contextlib
import copy
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lab2prod.core.records import VariantResult
from lab2prod.core.settings import CompressConfig, Int8Config
from lab2prod.serve.runtime import session
from models.nets.inputs import to_model_input
from models.nets.networks import count_macs_and_params

log = logging.getLogger(__name__)


def judge(variant: VariantResult, fp32: VariantResult, cfg: CompressConfig) -> VariantResult:
    """The variant with its verdict against the FP32 model's scores: its drops, accepted or not, and why."""
    reasons = []
    acc_drop = 100 * (fp32.accuracy - variant.accuracy)
    f1_drop = 100 * (fp32.f1_macro - variant.f1_macro)
    if acc_drop > cfg.max_accuracy_drop:
        reasons.append(f"accuracy drops {acc_drop:.2f} points > compress.max_accuracy_drop = {cfg.max_accuracy_drop}")
    if f1_drop > cfg.max_f1_drop:
        reasons.append(f"macro F1 drops {f1_drop:.2f} points > compress.max_f1_drop = {cfg.max_f1_drop}")
    if variant.macs_target is not None and variant.macs_vs_fp32 > variant.macs_target:
        reasons.append(
            f"pruning reached {variant.macs_vs_fp32:.2f} of the FP32 MACs, not "
            f"compress.prune.target_macs = {variant.macs_target} (lower prune.round_to?)"
        )
    agreement = variant.top1_agreement_with_fp32
    if agreement is not None and agreement < cfg.int8.min_top1_agreement:
        reference = f"the {variant.quantized_from} network" if variant.quantized_from else "FP32"
        reasons.append(
            f"top-1 agreement with {reference} {agreement:.4f} < compress.int8.min_top1_agreement = "
            f"{cfg.int8.min_top1_agreement}"
        )
    verdict = {
        "accuracy_drop_points": round(acc_drop, 4),
        "f1_drop_points": round(f1_drop, 4),
        "accepted": not reasons,
        "reason": "; ".join(reasons) or "within thresholds",
    }
    return variant.model_copy(update=verdict)


def structured_prune(net: nn.Module, image_shape: list[int], target_macs: float, round_to: int = 1) -> nn.Module:
    """Remove whole channels (L2 magnitude, per layer) step by step until MACs <= target * original."""
    import torch_pruning as tp

    net = copy.deepcopy(net).eval()
    height, width, channels = image_shape
    example = torch.zeros(1, channels, height, width)
    base_macs, _ = count_macs_and_params(net, image_shape)
    classifier = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    steps = 40
    pruner = tp.pruner.MetaPruner(
        net,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.95,
        iterative_steps=steps,
        ignored_layers=[classifier],
        round_to=round_to if round_to > 1 else None,
    )  # odd widths run slower
    for _ in range(steps):
        pruner.step()
        if count_macs_and_params(net, image_shape)[0] <= target_macs * base_macs:
            break
    return net


def unstructured_prune(
    net: nn.Module, sparsity: float, finetune_fn: Callable[[nn.Module], nn.Module] | None = None
) -> tuple[nn.Module, float]:
    """Zero the smallest-magnitude `sparsity` share of all conv/linear weights, globally.

    `finetune_fn(net) -> net`, if given, trains with the zero mask held fixed (torch's pruning
    re-parametrisation) before the zeros are made permanent.
    """
    from torch.nn.utils import prune

    net = copy.deepcopy(net)
    layers = [(m, "weight") for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=sparsity)
    if finetune_fn is not None:
        net = finetune_fn(net)
    for module, name in layers:
        prune.remove(module, name)
    total = sum(m.weight.numel() for m, _ in layers)
    zeros = sum(int((m.weight == 0).sum()) for m, _ in layers)
    return net.eval(), zeros / total


class CalibrationReader:
    """Feeds ONNX Runtime's calibrator its batches: {input name: array}, one dict a batch."""

    def __init__(self, batches: list[dict[str, np.ndarray]]) -> None:
        self.batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def image_batches(images: torch.Tensor, input_name: str, batch: int = 64) -> list[dict[str, np.ndarray]]:
    """Real training images as calibration batches of the model's input."""
    return [{input_name: to_model_input(images[i : i + batch]).numpy()} for i in range(0, len(images), batch)]


# Static INT8 of a transformer encoder quantizes the matrix products only: ONNX Runtime's default would also
# quantize the tensors LayerNorm, GELU and Softmax read, whose outliers 8 bits cannot hold (the accuracy loss
# documented for BERT-like models); here those compute in FP32, between QDQ MatMuls.
ENCODER_OPS = ["MatMul", "Gemm"]


def quantize_int8(
    fp32_onnx: Path,
    out: Path,
    calibration: torch.Tensor | list[dict[str, np.ndarray]] | None,
    cfg: Int8Config,
    op_types: list[str] | None = None,
) -> None:
    """INT8 with ONNX Runtime: static QDQ (per-channel weights, activations calibrated on `calibration`:
    training images, or batches of another input such as token ids) or dynamic (no calibration). `op_types`:
    the only node types static quantization touches (None: every type ONNX Runtime can quantize)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quant_pre_process, quantize_dynamic, quantize_static

    prepared = out.with_name("int8_preprocessed.onnx")
    with _quantizer_notes(out.name):
        quant_pre_process(str(fp32_onnx), str(prepared), skip_symbolic_shape=True)
        if cfg.mode == "dynamic":
            quantize_dynamic(str(prepared), str(out), weight_type=QuantType.QInt8, per_channel=cfg.per_channel)
        else:
            assert calibration is not None, "static INT8 needs calibration data"
            if isinstance(calibration, torch.Tensor):
                calibration = image_batches(calibration, session(prepared).get_inputs()[0].name)
            quantize_static(
                str(prepared),
                str(out),
                CalibrationReader(calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=cfg.per_channel,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=op_types,
            )
    prepared.unlink()


@contextlib.contextmanager
def _quantizer_notes(name: str) -> Iterator[None]:
    """ONNX Runtime's quantizer logs through the root logger (`logging.info` / `logging.warning`), one line per
    tensor it leaves in FP32: an encoder's activation-by-activation MatMuls, its 1-D LayerNorm weights that have no
    channel axis, tensors without calibration ranges. Expected, and dozens per model: kept at DEBUG, counted in
    one INFO line. Only records logged on the root logger itself are caught (lab2prod's own propagate past it)."""
    notes: collections.Counter[str] = collections.Counter()

    def keep_at_debug(record: logging.LogRecord) -> bool:
        notes[record.levelname] += 1
        log.debug("onnxruntime.quantization: %s", record.getMessage())
        return False

    root = logging.getLogger()
    root.addFilter(keep_at_debug)
    try:
        yield
    finally:
        root.removeFilter(keep_at_debug)
    if notes:
        counts = ", ".join(f"{n} {level.lower()}" for level, n in sorted(notes.items()))
        log.info("int8: %s: ONNX Runtime's quantizer left some tensors in FP32 (%s notes, at DEBUG)", name, counts)
