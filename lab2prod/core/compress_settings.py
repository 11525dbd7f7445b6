"""The compress section of the settings: structured pruning, unstructured sparsity, INT8 quantization and
distillation, each with its own sub-section, and the accuracy a variant may lose (lab2prod/core/settings.py
re-exports them)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from lab2prod.core.sections import Section, check_architecture


class PruneConfig(Section):
    enabled: bool = True
    target_macs: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    round_to: Annotated[int, Field(ge=1, le=64)] = 8
    finetune_epochs: Literal["auto"] | Annotated[int, Field(ge=0, le=1000)] = "auto"  # auto: compress.finetune_share
    lr: Annotated[float, Field(gt=0.0, le=10.0)] = 1e-3


class SparseConfig(Section):
    enabled: bool = False  # same dense shapes: ONNX Runtime runs it no faster and it is no smaller
    sparsity: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    finetune_epochs: Literal["auto"] | Annotated[int, Field(ge=0, le=1000)] = "auto"  # auto: compress.finetune_share
    lr: Annotated[float, Field(gt=0.0, le=10.0)] = 1e-3


class Int8Config(Section):
    enabled: bool = True
    mode: Literal["static", "dynamic"] = "static"
    calibration_images: Annotated[int, Field(ge=8, le=100_000)] = 512
    per_channel: bool = True
    min_top1_agreement: Annotated[float, Field(gt=0.0, le=1.0)] = 0.99
    stack: bool = True  # also quantize each accepted pruned / student network (pruned_int8, student_int8)


class DistillConfig(Section):
    enabled: bool = True
    student_architecture: str = "auto"  # "auto": the teacher's built-in network (small_cnn for a timm teacher)
    student_width: Annotated[int, Field(ge=4, le=512)] = 16
    epochs: Literal["auto"] | Annotated[int, Field(ge=1, le=10_000)] = "auto"  # auto: compress.distill_share
    lr: Annotated[float, Field(gt=0.0, le=10.0)] = 3e-3
    temperature: Annotated[float, Field(gt=0.0, le=20.0)] = 4.0
    alpha: Annotated[float, Field(ge=0.0, le=1.0)] = 0.7

    @field_validator("student_architecture")
    @classmethod
    def _known_student(cls, name: str) -> str:
        return name if name == "auto" else check_architecture(name)


class CompressConfig(Section):
    max_accuracy_drop: Annotated[float, Field(ge=0.0, le=100.0)] = 0.5
    max_f1_drop: Annotated[float, Field(ge=0.0, le=100.0)] = 0.5
    seed: int = 0
    # "auto" fine-tuning / distillation epochs, as a share of the epochs the trained model ran (at least 1):
    # compression costs a fraction of training, whatever the data's size
    finetune_share: Annotated[float, Field(gt=0.0, le=10.0)] = 0.2
    distill_share: Annotated[float, Field(gt=0.0, le=10.0)] = 0.5
    prune: PruneConfig = PruneConfig()
    sparse: SparseConfig = SparseConfig()
    int8: Int8Config = Int8Config()
    distill: DistillConfig = DistillConfig()
