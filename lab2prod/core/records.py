"""Typed records of what stages hand each other through files, validated when read back from disk."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from lab2prod.core.errors import DataError
from lab2prod.core.files import read_json, write_json


class VariantResult(BaseModel):
    """One model the compress stage built (or the FP32 reference): its scores, cost and verdict."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    accuracy: float  # on the test split
    f1_macro: float
    macs: int  # multiply-accumulates of one image's forward pass
    params: int
    file: str | None  # None once rejected: its file is not kept
    bytes: int
    # variant-specific evidence
    macs_vs_fp32: float | None = None  # pruned
    macs_target: float | None = None  # pruned
    sparsity: float | None = None  # sparse: share of conv/linear weights that are zero
    fp32_onnx_bytes: int | None = None  # int8
    top1_agreement_with_fp32: float | None = None  # int8: with the FP32 model; pruned_int8, student_int8: with
    # the network they quantize (`quantized_from`), which is what quantization changed
    quantized_from: str | None = None  # pruned_int8, student_int8: that network's variant name
    # the verdict (not on the FP32 reference)
    accuracy_drop_points: float | None = None
    f1_drop_points: float | None = None
    accepted: bool | None = None
    reason: str | None = None


class CompressReport(BaseModel):
    """metrics/compress.json: the FP32 reference, every variant built, the thresholds they were held to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fp32: VariantResult
    variants: dict[str, VariantResult]
    thresholds: dict[str, float]

    @property
    def accepted(self) -> dict[str, VariantResult]:
        return {name: v for name, v in self.variants.items() if v.accepted}

    @property
    def rejected(self) -> dict[str, str]:
        """Each rejected variant with the reason."""
        return {name: v.reason or "" for name, v in self.variants.items() if not v.accepted}

    def write(self, path: Path) -> None:
        write_json(path, self.model_dump(mode="json", exclude_unset=True))

    @classmethod
    def read(cls, path: Path) -> CompressReport:
        try:
            return cls.model_validate(read_json(path))
        except ValidationError as exc:
            raise DataError(
                f"{path}: not a compress report this version can read ({exc}); rerun `lab2prod run`"
            ) from None
