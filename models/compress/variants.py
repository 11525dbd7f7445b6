"""The compressed variants of a trained model, each built on its own and described by the same figures:
structured pruning, unstructured sparsity, knowledge distillation into a student, INT8 with ONNX Runtime.

`VariantBuilder` holds what every builder shares (the teacher, its test-split predictions, the training
data); `build_all` builds each enabled variant, gates it (`judge`) and turns a failure into a rejection
with its reason, so one variant that cannot be built never fails the stage.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from lab2prod.core.files import read_json
from lab2prod.core.layout import Workspace
from lab2prod.core.records import VariantResult
from lab2prod.core.scoring import classification_metrics
from lab2prod.core.settings import DistillConfig, Params
from lab2prod.data.dataset import SplitBatches, SplitIndex
from lab2prod.serve.runtime import onnx_top1
from models.compress.compression import judge, quantize_int8, structured_prune, unstructured_prune
from models.export.onnx_export import to_onnx
from models.nets.inputs import torch_top1
from models.nets.model_file import ModelInfo, load_model_file, save_model_file
from models.nets.networks import ModelSpec, count_macs_and_params
from models.training.budget import share_of, training_budget
from models.training.training_data import datamodule, n_training_images

# Lightning (with torchmetrics, ~10 s to import on a 2-core machine) is imported by the builders that fine-tune,
# not by the stage: compress with no variant that trains (or only INT8) starts in seconds.
if TYPE_CHECKING:
    from models.training.classifier import ImageClassifier
    from models.training.data import ShardDataModule

log = logging.getLogger("models.compress.variants")


def scores(y_true, y_pred, classes: list[str]) -> dict[str, float]:
    m = classification_metrics(y_true, y_pred, classes)
    return {"accuracy": m["accuracy"], "f1_macro": m["f1_macro"]}


def finetune(module: ImageClassifier, data: ShardDataModule, epochs: int, seed: int) -> nn.Module:
    """A few Lightning epochs of `module` on the (augmented) training split; returns its trained network.

    Seeded per call, so a variant's result does not depend on which other variants ran before it.
    """
    import lightning as L

    from models.training.trainer import make_trainer

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


class VariantBuilder:
    """Builds the variants of `teacher` into `out` (a directory that becomes artifacts/compress/), scratch
    files into `scratch`; `fp32` describes the teacher itself, the baseline every variant is judged against."""

    def __init__(
        self, params: Params, ws: Workspace, teacher: nn.Module, info: ModelInfo, out: Path, scratch: Path
    ) -> None:
        self.params, self.ws, self.teacher, self.info, self.out, self.scratch = params, ws, teacher, info, out, scratch
        self.cfg = params.compress
        self.x_test = SplitBatches(ws.prepared, "test")  # streamed from the shards at every scoring pass
        trained = max(1, info.epochs_trained or 10)  # files written before the count was kept: 10
        self.epochs = {  # each "auto" a share of the training run, so compress costs a fraction of it
            "pruned": share_of(self.cfg.prune.finetune_epochs, self.cfg.finetune_share, trained),
            "sparse": share_of(self.cfg.sparse.finetune_epochs, self.cfg.finetune_share, trained),
            "student": share_of(self.cfg.distill.epochs, self.cfg.distill_share, trained),
        }
        reference = scratch / "fp32.pt"
        save_model_file(reference, teacher, info)
        self.fp32 = self.describe(teacher, reference).model_copy(update={"file": str(ws.model)})
        self.fp32_preds = torch_top1(teacher, self.x_test)
        self.built: dict[str, VariantResult] = {}
        self.calibration: torch.Tensor | None = None

    @cached_property
    def data(self) -> ShardDataModule:
        """The training split as the fine-tuning builders read it, in the training run's batches."""
        batch = training_budget(self.params.train, n_training_images(self.ws)).batch_size
        return datamodule(self.params, self.ws, self.cfg.seed, batch)

    def describe(self, net: nn.Module, path: Path, **evidence: Any) -> VariantResult:
        macs, n_params = count_macs_and_params(net, self.info.image_shape)
        return VariantResult(
            **scores(self.x_test.labels, torch_top1(net, self.x_test), self.info.classes),
            macs=macs,
            params=n_params,
            file=str(self.ws.compressed / path.name),
            bytes=path.stat().st_size,
            **evidence,
        )

    def _classifier(self, net: nn.Module, lr: float) -> ImageClassifier:
        from models.training.classifier import ImageClassifier

        return ImageClassifier(net, len(self.info.classes), lr=lr, weight_decay=self.params.train.weight_decay)

    def pruned(self) -> VariantResult:
        p = self.cfg.prune
        log.info("compress: structured pruning to <= %.0f%% of the MACs", 100 * p.target_macs)
        net = structured_prune(self.teacher, self.info.image_shape, p.target_macs, p.round_to)
        if self.epochs["pruned"]:
            log.info("compress: fine-tuning the pruned network for %d epochs", self.epochs["pruned"])
            net = finetune(self._classifier(net, p.lr), self.data, self.epochs["pruned"], self.cfg.seed)
        save_model_file(self.out / "pruned.pt", net, self.info.model_copy(update={"variant": "pruned"}))
        result = self.describe(net, self.out / "pruned.pt")
        return result.model_copy(update={"macs_vs_fp32": result.macs / self.fp32.macs, "macs_target": p.target_macs})

    def sparse(self) -> VariantResult:
        s = self.cfg.sparse

        def finetune_sparse(net: nn.Module) -> nn.Module:
            return finetune(self._classifier(net, s.lr), self.data, self.epochs["sparse"], self.cfg.seed)

        net, sparsity = unstructured_prune(self.teacher, s.sparsity, finetune_sparse if self.epochs["sparse"] else None)
        save_model_file(self.out / "sparse.pt", net, self.info.model_copy(update={"variant": "sparse"}))
        return self.describe(net, self.out / "sparse.pt", sparsity=sparsity)

    def student(self) -> VariantResult:
        import lightning as L

        from models.training.classifier import DistillationModule

        d = self.cfg.distill
        spec = student_spec(self.info.spec, d, read_json(self.ws.prepared / "meta.json"))
        log.info("compress: distilling into a %s student for %d epochs", spec.architecture, self.epochs["student"])
        L.seed_everything(self.cfg.seed, workers=True, verbose=False)  # the student's initial weights
        module = DistillationModule(
            spec.build(),
            self.teacher,
            len(self.info.classes),
            lr=d.lr,
            weight_decay=self.params.train.weight_decay,
            temperature=d.temperature,
            alpha=d.alpha,
        )
        net = finetune(module, self.data, self.epochs["student"], self.cfg.seed)
        save_model_file(self.out / "student.pt", net, self.info.model_copy(update={"variant": "student", "spec": spec}))
        return self.describe(net, self.out / "student.pt")

    def int8(self) -> VariantResult:
        log.info("compress: INT8 %s quantization with ONNX Runtime", self.cfg.int8.mode)
        return self.quantized(self.teacher, "int8", self.fp32, self.fp32_preds)

    def stacked(self, parent: str) -> VariantResult:
        """`parent`'s network (pruned or student, accepted) quantized to INT8: the smallest and often the fastest
        file; its agreement is with the parent's top-1, its scores are judged against FP32 like every variant's."""
        log.info("compress: INT8 %s quantization of the %s network", self.cfg.int8.mode, parent)
        net, _ = load_model_file(self.out / f"{parent}.pt")
        result = self.quantized(net, f"{parent}_int8", self.built[parent], torch_top1(net, self.x_test))
        return result.model_copy(update={"quantized_from": parent})

    def quantized(self, net: nn.Module, name: str, source: VariantResult, source_preds: np.ndarray) -> VariantResult:
        """`net` exported to ONNX and quantized into `<name>.onnx`, scored by ONNX Runtime on the test split."""
        q = self.cfg.int8
        fp32_onnx = self.scratch / f"{name}_fp32.onnx"
        to_onnx(net, self.info.image_shape, fp32_onnx, self.params.export.opset, self.params.export.exporter)
        if self.calibration is None:  # the same training images calibrate every INT8 file
            train = SplitIndex.read(self.ws.prepared, "train")
            pick = np.random.default_rng(self.cfg.seed).permutation(len(train))[: q.calibration_images]
            self.calibration = torch.from_numpy(train.images(np.sort(pick)))
            train.close()
        target = self.out / f"{name}.onnx"
        quantize_int8(fp32_onnx, target, self.calibration, q)
        preds = onnx_top1(target, self.x_test)
        return VariantResult(
            **scores(self.x_test.labels, preds, self.info.classes),
            macs=source.macs,
            params=source.params,
            file=str(self.ws.compressed / target.name),
            bytes=target.stat().st_size,
            fp32_onnx_bytes=fp32_onnx.stat().st_size,
            top1_agreement_with_fp32=float((preds == source_preds).mean()),
        )

    def build_all(self) -> dict[str, VariantResult]:
        """Every enabled variant, built, gated; a rejected one's file removed (export cannot ship it). With
        `int8.stack`, each accepted pruned / student network is then quantized too (`stacked`)."""
        c = self.cfg
        enabled = {"pruned": c.prune.enabled, "sparse": c.sparse.enabled, "student": c.distill.enabled}
        enabled["int8"] = c.int8.enabled
        for name in (n for n in ("pruned", "sparse", "student", "int8") if enabled[n]):
            self.build(name, getattr(self, name))
        if c.int8.enabled and c.int8.stack:
            for parent in (p for p in ("pruned", "student") if p in self.built and self.built[p].accepted):
                self.build(f"{parent}_int8", lambda parent=parent: self.stacked(parent))
        return self.built

    def build(self, name: str, make: Callable[[], VariantResult]) -> None:
        try:
            self.built[name] = judge(make(), self.fp32, self.cfg)
        except Exception as exc:  # one variant that cannot be built is rejected, never the whole stage
            log.warning("compress: %s failed: %s: %s", name, type(exc).__name__, exc, exc_info=True)
            self.built[name] = failed_variant(f"{type(exc).__name__}: {exc}")
        variant = self.built[name]
        if not variant.accepted and variant.file:
            (self.out / Path(variant.file).name).unlink(missing_ok=True)
            self.built[name] = variant.model_copy(update={"file": None})
