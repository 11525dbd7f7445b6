"""Stage 5, compress: smaller and faster variants of the trained model, each scored and gated.

Variants (each switchable in params.yaml `compress`):
    pruned   structured pruning (torch-pruning): whole channels removed until the MACs are at most
             `prune.target_macs` of the FP32 model's, then fine-tuned with Lightning
    sparse   unstructured global magnitude pruning: `sparse.sparsity` of the weights set to zero;
             same dense shapes, so no smaller and no faster with dense kernels: reported for honesty
    int8     ONNX Runtime post-training quantization (static QDQ per-channel, calibrated on training
             images; or dynamic) of the FP32 ONNX model
    student  knowledge distillation into a narrower network (teacher = the trained model)
    pruned_int8, student_int8   (`int8.stack`) the accepted pruned / student network quantized the same way:
             kept when it agrees with that network's top-1 and passes the bars against FP32; export's
             benchmark then serves whichever accepted file is fastest on the machine

Each is scored on the test split (accuracy, macro F1, parameters, MACs, file size) and accepted only
if it loses at most `max_accuracy_drop` / `max_f1_drop` points against FP32 (INT8 also needs
`int8.min_top1_agreement` with FP32). Rejected variants are reported with the reason and their
files are not kept, so export cannot ship them.

Writes:
    artifacts/compress/{pruned,sparse,student}.pt   weights-only model files (accepted variants)
    artifacts/compress/{int8,pruned_int8,student_int8}.onnx   the quantized models (if accepted)
    metrics/compress.json                            every variant's figures, verdict and reason
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from lab2prod.core.console import ParamsFile, run_stage
from lab2prod.core.files import atomic_dir, read_json
from lab2prod.core.layout import PARAMS, WORKSPACE, Workspace
from lab2prod.core.records import CompressReport
from lab2prod.core.settings import Params, load_params
from models.compress.variants import VariantBuilder
from models.nets.model_file import load_model_file
from models.text.compress import compress_text

log = logging.getLogger("tasks.compress")  # not __name__: that is __main__ under python -m


def compress(params: Params, ws: Workspace = WORKSPACE) -> dict[str, Any]:
    """Build, score and gate every enabled variant. Returns the metrics written to metrics/compress.json."""
    cfg = params.compress
    text = read_json(ws.prepared / "meta.json").get("modality") == "text"
    with atomic_dir(ws.compressed) as tmp, tempfile.TemporaryDirectory() as scratch:
        if text:  # models/text/compress.py: dynamic INT8 of the ONNX file
            report = compress_text(params, ws, tmp)
        else:
            teacher, info = load_model_file(ws.model)
            builder = VariantBuilder(params, ws, teacher, info, tmp, Path(scratch))
            built = builder.build_all()  # scores the FP32 model too (builder.fp32)
            thresholds = {"max_accuracy_drop_points": cfg.max_accuracy_drop, "max_f1_drop_points": cfg.max_f1_drop}
            report = CompressReport(fp32=builder.fp32, variants=built, thresholds=thresholds)
        report.write(ws.compress_metrics)
    variants = report.variants
    for name, v in variants.items():
        verdict = "ACCEPTED" if v.accepted else f"REJECTED: {v.reason}"
        if v.accuracy_drop_points is None:  # failed to build: nothing to score
            log.info("compress: %-12s %s", name, verdict)
        else:
            log.info(
                "compress: %-12s accuracy %.4f (drop %.2f pt), MACs %d, %d bytes; %s",
                *(name, v.accuracy, v.accuracy_drop_points, v.macs, v.bytes, verdict),
            )
    return report.model_dump(mode="json", exclude_unset=True)


def main(params: ParamsFile = PARAMS) -> None:
    """Prune, sparsify, quantize and distil artifacts/train/model.pt; gate each variant on test accuracy."""
    compress(load_params(params))


if __name__ == "__main__":
    run_stage(main)
