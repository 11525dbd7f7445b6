"""Stage 5, compress: smaller and faster variants of the trained model, each scored and gated.

Variants (each switchable in params.yaml `compress`):
    pruned   structured pruning (torch-pruning): whole channels removed until the MACs are at most
             `prune.target_macs` of the FP32 model's, then fine-tuned with Lightning
    sparse   unstructured global magnitude pruning: `sparse.sparsity` of the weights set to zero;
             same dense shapes, so no smaller and no faster with dense kernels: reported for honesty
    int8     ONNX Runtime post-training quantization (static QDQ per-channel, calibrated on training
             images; or dynamic) of the FP32 ONNX model
    student  knowledge distillation into a narrower network (teacher = the trained model)

Each is scored on the test split (accuracy, macro F1, parameters, MACs, file size) and accepted only
if it loses at most `max_accuracy_drop` / `max_f1_drop` points against FP32 (INT8 also needs
`int8.min_top1_agreement` with FP32). Rejected variants are reported with the reason and their
files are not kept, so export cannot ship them.

Writes:
    artifacts/compress/{pruned,sparse,student}.pt   weights-only model files (accepted variants)
    artifacts/compress/int8.onnx                     the quantized model (if accepted)
    metrics/compress.json                            every variant's figures, verdict and reason
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from lab2prod.compression import judge, quantize_int8, structured_prune, unstructured_prune
from lab2prod.console import ParamsFile, run_stage
from lab2prod.dataset import SplitBatches, SplitIndex
from lab2prod.files import atomic_dir, read_json
from lab2prod.layout import PARAMS, WORKSPACE, Workspace
from lab2prod.metrics import classification_metrics, torch_top1
from lab2prod.onnx_model import onnx_top1, to_onnx
from lab2prod.records import CompressReport, VariantResult
from lab2prod.settings import DistillConfig, Params, load_params
from lab2prod.training_data import datamodule
from models.classifier import DistillationModule, ImageClassifier
from models.data import ShardDataModule
from models.model_file import load_model_file, save_model_file
from models.networks import ModelSpec, count_macs_and_params
from models.trainer import make_trainer

log = logging.getLogger("tasks.compress")  # not __name__: that is __main__ under python -m


def scores(y_true, y_pred, classes: list[str]) -> dict[str, float]:
    m = classification_metrics(y_true, y_pred, classes)
    return {"accuracy": m["accuracy"], "f1_macro": m["f1_macro"]}


def finetune(module: ImageClassifier, data: ShardDataModule, epochs: int, seed: int) -> nn.Module:
    """A few Lightning epochs of `module` on the (augmented) training split; returns its trained network.

    Seeded per call, so a variant's result does not depend on which other variants ran before it.
    """
    L.seed_everything(seed, workers=True, verbose=False)
    module.net.train()  # Lightning keeps modules in the mode it finds them; a pruned copy is in eval
    make_trainer(epochs, num_sanity_val_steps=0, enable_progress_bar=False).fit(module, datamodule=data)
    return module.net.cpu().eval()


def student_spec(teacher: ModelSpec, d: DistillConfig, meta: dict[str, Any]) -> ModelSpec:
    """The student network: `distill.student_architecture` ("auto": the teacher's built-in network at
    `student_width`, or `small_cnn` for a timm teacher), at the ingested size with the data's statistics."""
    name = d.student_architecture
    if name == "auto":
        name = teacher.architecture if not teacher.is_timm else "small_cnn"
    if name == teacher.architecture and not teacher.is_timm:
        return teacher.model_copy(update={"width": d.student_width})
    return teacher.model_copy(
        update={
            "architecture": name,
            "width": d.student_width,
            "mean": meta["normalization"]["mean"],
            "std": meta["normalization"]["std"],
            "input_size": None,
        }
    )


def failed_variant(reason: str) -> VariantResult:
    """A variant that could not be built: rejected, with what went wrong."""
    return VariantResult(
        accuracy=0.0, f1_macro=0.0, macs=0, params=0, file=None, bytes=0, accepted=False, reason=f"failed: {reason}"
    )


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


def compress(params: Params, ws: Workspace = WORKSPACE) -> dict[str, Any]:
    """Build, score and gate every enabled variant. Returns the metrics written to metrics/compress.json."""
    cfg = params.compress
    teacher, info = load_model_file(ws.model)
    x_test = SplitBatches(ws.prepared, "test")  # streamed from the shards at every scoring pass
    y_true = x_test.labels
    data = datamodule(params, ws, cfg.seed)
    wd = params.train.weight_decay
    classes, n_classes = info.classes, len(info.classes)

    def describe(net: nn.Module, path: Path, **evidence: Any) -> VariantResult:
        macs, n_params = count_macs_and_params(net, info.image_shape)
        return VariantResult(
            **scores(y_true, torch_top1(net, x_test), classes),
            macs=macs,
            params=n_params,
            file=str(ws.compressed / path.name),
            bytes=path.stat().st_size,
            **evidence,
        )

    variants: dict[str, VariantResult] = {}
    with atomic_dir(ws.compressed) as tmp, tempfile.TemporaryDirectory() as scratch:
        reference = Path(scratch) / "fp32.pt"
        save_model_file(reference, teacher, info)
        fp32 = describe(teacher, reference).model_copy(update={"file": str(ws.model)})
        fp32_preds = torch_top1(teacher, x_test)

        def pruned() -> VariantResult:
            log.info("compress: structured pruning to <= %.0f%% of the MACs", 100 * cfg.prune.target_macs)
            net = structured_prune(teacher, info.image_shape, cfg.prune.target_macs, cfg.prune.round_to)
            if cfg.prune.finetune_epochs:
                module = ImageClassifier(net, n_classes, lr=cfg.prune.lr, weight_decay=wd)
                net = finetune(module, data, cfg.prune.finetune_epochs, cfg.seed)
            save_model_file(tmp / "pruned.pt", net, info.model_copy(update={"variant": "pruned"}))
            result = describe(net, tmp / "pruned.pt")
            return result.model_copy(
                update={"macs_vs_fp32": result.macs / fp32.macs, "macs_target": cfg.prune.target_macs}
            )

        def sparse() -> VariantResult:
            def finetune_sparse(net: nn.Module) -> nn.Module:
                module = ImageClassifier(net, n_classes, lr=cfg.sparse.lr, weight_decay=wd)
                return finetune(module, data, cfg.sparse.finetune_epochs, cfg.seed)

            net, sparsity = unstructured_prune(
                teacher, cfg.sparse.sparsity, finetune_sparse if cfg.sparse.finetune_epochs else None
            )
            save_model_file(tmp / "sparse.pt", net, info.model_copy(update={"variant": "sparse"}))
            return describe(net, tmp / "sparse.pt", sparsity=sparsity)

        def student() -> VariantResult:
            d = cfg.distill
            spec = student_spec(info.spec, d, read_json(ws.prepared / "meta.json"))
            log.info("compress: distilling into a %s student for %d epochs", spec.architecture, d.epochs)
            L.seed_everything(cfg.seed, workers=True, verbose=False)  # the student's initial weights
            module = DistillationModule(
                spec.build(), teacher, n_classes, lr=d.lr, weight_decay=wd, temperature=d.temperature, alpha=d.alpha
            )
            net = finetune(module, data, d.epochs, cfg.seed)
            save_model_file(tmp / "student.pt", net, info.model_copy(update={"variant": "student", "spec": spec}))
            return describe(net, tmp / "student.pt")

        def int8() -> VariantResult:
            log.info("compress: INT8 %s quantization with ONNX Runtime", cfg.int8.mode)
            fp32_onnx = Path(scratch) / "fp32.onnx"
            to_onnx(teacher, info.image_shape, fp32_onnx, params.export.opset)
            train = SplitIndex.read(ws.prepared, "train")
            pick = np.random.default_rng(cfg.seed).permutation(len(train))[: cfg.int8.calibration_images]
            calibration = torch.from_numpy(train.images(np.sort(pick)))
            train.close()
            quantize_int8(fp32_onnx, tmp / "int8.onnx", calibration, cfg.int8)
            preds = onnx_top1(tmp / "int8.onnx", x_test)
            return VariantResult(
                **scores(y_true, preds, classes),
                macs=fp32.macs,
                params=fp32.params,
                file=str(ws.compressed / "int8.onnx"),
                bytes=(tmp / "int8.onnx").stat().st_size,
                fp32_onnx_bytes=fp32_onnx.stat().st_size,
                top1_agreement_with_fp32=float((preds == fp32_preds).mean()),
            )

        enabled = {"pruned": cfg.prune.enabled, "sparse": cfg.sparse.enabled}
        enabled |= {"student": cfg.distill.enabled, "int8": cfg.int8.enabled}
        builders = {"pruned": pruned, "sparse": sparse, "student": student, "int8": int8}
        for name, build in builders.items():
            if not enabled[name]:
                continue
            try:
                variants[name] = judge(build(), fp32, cfg)
            except Exception as exc:  # one variant that cannot be built is rejected, never the whole stage
                log.warning("compress: %s failed: %s: %s", name, type(exc).__name__, exc, exc_info=True)
                variants[name] = failed_variant(f"{type(exc).__name__}: {exc}")
            variant = variants[name]
            if not variant.accepted and variant.file:
                (tmp / Path(variant.file).name).unlink(missing_ok=True)
                variants[name] = variant.model_copy(update={"file": None})
        thresholds = {"max_accuracy_drop_points": cfg.max_accuracy_drop, "max_f1_drop_points": cfg.max_f1_drop}
        report = CompressReport(fp32=fp32, variants=variants, thresholds=thresholds)
        report.write(ws.compress_metrics)

    for name, v in variants.items():
        verdict = "ACCEPTED" if v.accepted else f"REJECTED: {v.reason}"
        if v.accuracy_drop_points is None:  # failed to build: nothing to score
            log.info("compress: %-7s %s", name, verdict)
            continue
        log.info(
            "compress: %-7s accuracy %.4f (drop %.2f pt), MACs %d, %d bytes; %s",
            name,
            v.accuracy,
            v.accuracy_drop_points,
            v.macs,
            v.bytes,
            verdict,
        )
    return report.model_dump(mode="json", exclude_unset=True)


def main(params: ParamsFile = PARAMS) -> None:
    """Prune, sparsify, quantize and distil artifacts/train/model.pt; gate each variant on test accuracy."""
    compress(load_params(params))


if __name__ == "__main__":
    run_stage(main)
