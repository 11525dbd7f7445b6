"""Typed, validated settings: params.yaml loaded once into one pydantic model per stage.

An unknown key, a wrong type or an out-of-range value fails before any work starts, naming the
file, the key and the value. The meaning of each setting is documented beside it in params.yaml.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from lab2prod.core.compress_settings import (  # noqa: F401  (imported from here too)
    CompressConfig,
    DistillConfig,
    Int8Config,
    PruneConfig,
    SparseConfig,
)
from lab2prod.core.errors import ConfigError
from lab2prod.core.overrides import apply_overrides, set_dotted  # noqa: F401
from lab2prod.core.sections import (  # noqa: F401
    ARCHITECTURE_CHECKS,
    BUILTIN_ARCHITECTURES,
    Section,
    check_architecture,
)
from lab2prod.core.text_settings import TextConfig
from lab2prod.core.tune_settings import TuneConfig, check_space

PARAMS_FILE = Path("params.yaml")

Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]


class IngestConfig(Section):
    source: str = "digits"
    extra_sources: list[str] = ["data/feedback"]
    image_size: Annotated[int, Field(ge=8, le=512)] = 16
    channels: Literal[1, 3] = 1
    val_fraction: Fraction = 0.15
    test_fraction: Fraction = 0.25
    seed: int = 42
    max_image_pixels: Annotated[int, Field(ge=1024)] = 40_000_000
    min_images_per_class: Annotated[int, Field(ge=3)] = 5
    resize: Literal["stretch", "crop"] = "stretch"
    encoding: Literal["png", "jpeg", "webp"] = "png"
    quality: Annotated[int, Field(ge=1, le=100)] = 95
    shard_mb: Annotated[float, Field(gt=0.0, le=4096)] = 256
    workers: Literal["auto"] | Annotated[int, Field(ge=1, le=256)] = "auto"
    cache: bool = True
    modality: Literal["auto", "image", "text"] = "auto"  # auto: text for a table or a folder of .txt files
    text_column: str = "text"  # a table's columns (CSV, TSV, JSONL, Parquet)
    label_column: str = "label"
    max_chars: Annotated[int, Field(ge=1, le=10_000_000)] = 20_000  # a longer text is quarantined

    @model_validator(mode="after")
    def _splits_leave_training_data(self) -> IngestConfig:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction:.2f} "
                "leaves under 10% of the images for training; lower one of them"
            )
        return self


class AugmentConfig(Section):
    offline_copies: Annotated[int, Field(ge=0, le=100)] = 0
    crop_scale_min: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    rotation_deg: Annotated[float, Field(ge=0.0, le=180.0)] = 12.0
    shift: Annotated[float, Field(ge=0.0, le=0.5)] = 0.1
    scale_min: Annotated[float, Field(ge=0.5, le=1.0)] = 0.9
    scale_max: Annotated[float, Field(ge=1.0, le=1.5)] = 1.1
    brightness: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1
    contrast: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1
    horizontal_flip: bool = False
    seed: int = 7
    preview_images: Annotated[int, Field(ge=1, le=64)] = 16


class TrainConfig(Section):
    architecture: str = "small_cnn"  # "small_cnn", "resnet", or any timm model name
    pretrained: str = "none"  # "none", "timm" (the hub), "champion" (warm start), or a weights file path / URL
    input_size: Literal["auto"] | Annotated[int, Field(ge=8, le=1024)] = "auto"
    freeze_epochs: Annotated[int, Field(ge=0, le=10_000)] = 0  # linear probe: epochs with the backbone frozen
    backbone_lr_scale: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0  # backbone lr = lr x this (head: lr)
    freeze_bn: bool = False  # keep the backbone's batch-norm statistics fixed while fine-tuning
    layer_decay: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0  # backbone layer k from the top: lr x this**k
    channels_last: bool = True  # NHWC weights and inputs while training (measured faster: benchmarks/recipe.py)
    compile: bool = False  # torch.compile the network (in place) for training
    width: Annotated[int, Field(ge=4, le=512)] = 24
    dropout: Annotated[float, Field(ge=0.0, le=0.9)] = 0.2
    # "auto": sized by the data (models/training/budget.py): batches of ~1/32 of the training split (16..128),
    # epochs enough for min_steps optimizer steps (at least min_epochs, at most max_epochs); an int fixes it
    epochs: Literal["auto"] | Annotated[int, Field(ge=1, le=10_000)] = "auto"
    batch_size: Literal["auto"] | Annotated[int, Field(ge=1, le=65_536)] = "auto"
    min_steps: Annotated[int, Field(ge=1, le=10_000_000)] = 1000  # epochs "auto": at least this many steps
    min_epochs: Annotated[int, Field(ge=1, le=10_000)] = 5  # epochs "auto": at least this many epochs
    max_epochs: Annotated[int, Field(ge=1, le=10_000)] = 300  # epochs "auto": at most this many epochs
    lr: Annotated[float, Field(gt=0.0, le=10.0)] = 3e-3
    weight_decay: Annotated[float, Field(ge=0.0, le=1.0)] = 5e-4
    label_smoothing: Annotated[float, Field(ge=0.0, le=0.5)] = 0.05
    patience: Literal["auto"] | Annotated[int, Field(ge=1)] = "auto"  # "auto": a third of the epochs, at least 5
    # Lightning's precision names, checked here rather than deep inside Lightning after the data is loaded
    precision: Literal[
        "auto", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", "32", "16", "bf16", "64"
    ] = "auto"
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: Literal["auto"] | Annotated[int, Field(ge=1)] = "auto"
    seed: int = 0
    loader: Literal["auto", "memory", "stream"] = "auto"
    memory_limit_mb: Annotated[int, Field(ge=0)] = 2048
    workers: Literal["auto"] | Annotated[int, Field(ge=0, le=256)] = "auto"

    _known_architecture = field_validator("architecture")(check_architecture)

    @model_validator(mode="after")
    def _weights_fit_the_architecture(self) -> TrainConfig:
        if self.architecture in BUILTIN_ARCHITECTURES and self.pretrained not in ("none", "champion"):
            raise ValueError(
                f"pretrained = {self.pretrained!r} needs a timm backbone; the built-in {self.architecture!r} "
                "starts from 'none' (random) or 'champion' (the registry champion's weights)"
            )
        if self.layer_decay < 1.0 and self.architecture in BUILTIN_ARCHITECTURES:
            raise ValueError(
                f"layer_decay = {self.layer_decay:g} needs a timm backbone (its layers are grouped by timm); "
                f"the built-in {self.architecture!r} has none: set layer_decay to 1"
            )
        if self.min_epochs > self.max_epochs:
            raise ValueError(f"min_epochs = {self.min_epochs} is above max_epochs = {self.max_epochs}")
        if isinstance(self.epochs, int) and self.freeze_epochs >= self.epochs:
            raise ValueError(f"freeze_epochs = {self.freeze_epochs} leaves none of the {self.epochs} epochs to tune")
        return self


class EvaluateConfig(Section):
    baseline: Literal["svc", "logistic", "none"] = "svc"
    baseline_c: Annotated[float, Field(gt=0.0)] = 10.0
    baseline_max_images: Annotated[int, Field(ge=10)] = 5000
    # the model must beat both the baseline's and chance's (the largest class's share) test accuracy by more than
    # this many points, else the run is marked not deployable and the gate never promotes it; negative lowers the bar
    margin_points: Annotated[float, Field(ge=-100.0, le=100.0)] = 0.0


class ExportConfig(Section):
    opset: Annotated[int, Field(ge=17, le=21)] = 18
    exporter: Literal["auto", "torchscript", "dynamo"] = "auto"
    atol: Annotated[float, Field(gt=0.0, le=1.0)] = 1e-4
    rtol: Annotated[float, Field(ge=0.0, le=1.0)] = 1e-3  # plus this share of the logit's magnitude
    parity_batch_sizes: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1)] = [1, 7]
    benchmark_calls: Annotated[int, Field(ge=10, le=1_000_000)] = 2000
    benchmark_batch: Annotated[int, Field(ge=2, le=4096)] = 64
    benchmark_batch_calls: Annotated[int, Field(ge=5, le=100_000)] = 300
    benchmark_seconds: Annotated[float, Field(gt=0.0)] = 10.0


class RetrainConfig(Section):
    registry_dir: str = "registry"
    min_f1_gain: Annotated[float, Field(ge=-100.0, le=100.0)] = 0.0
    max_class_recall_drop: Annotated[float, Field(ge=0.0, le=100.0)] = 5.0
    min_test_images: Annotated[int, Field(ge=1)] = 30
    bootstrap_samples: Annotated[int, Field(ge=100, le=100_000)] = 1000
    require_significance: bool = False


class ServeConfig(Section):
    model: str = "champion"
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65_535)] = 8000
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    top_k: Annotated[int, Field(ge=1, le=100)] = 3
    max_batch: Annotated[int, Field(ge=1, le=4096)] = 32
    max_wait_ms: Annotated[float, Field(ge=0.0, le=1000.0)] = 5.0
    max_queue: Annotated[int, Field(ge=1, le=1_000_000)] = 2048
    max_body_mb: Annotated[float, Field(gt=0.0, le=4096)] = 16.0
    max_images: Annotated[int, Field(ge=1, le=10_000)] = 64
    max_image_pixels: Annotated[int, Field(ge=1024)] = 40_000_000
    request_timeout_s: Annotated[float, Field(gt=0.0, le=3600)] = 10.0
    header_timeout_s: Annotated[float, Field(gt=0.0, le=3600)] = 10.0
    body_timeout_s: Annotated[float, Field(gt=0.0, le=3600)] = 30.0
    keep_alive_s: Annotated[float, Field(gt=0.0, le=3600)] = 5.0
    max_connections: Annotated[int, Field(ge=1, le=100_000)] = 256
    max_decodes: Annotated[int, Field(ge=1, le=256)] = 2
    decode_mpx: Annotated[float, Field(gt=0.0, le=100_000)] = 80.0
    reload_interval_s: Annotated[float, Field(gt=0.0, le=3600)] = 2.0
    log_dir: str = "logs/predictions"
    log_sample: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    log_images: bool = False
    log_file_mb: Annotated[float, Field(gt=0.0, le=4096)] = 16.0
    log_max_mb: Annotated[float, Field(gt=0.0, le=1_000_000)] = 256.0
    feedback_dir: str = "data/feedback"

    @model_validator(mode="after")
    def _log_budget_holds_a_file(self) -> ServeConfig:
        if self.log_max_mb < self.log_file_mb:
            raise ValueError(
                f"log_max_mb = {self.log_max_mb:g} is smaller than one log file (log_file_mb = {self.log_file_mb:g})"
            )
        return self


class MonitorConfig(Section):
    window_hours: Annotated[float, Field(gt=0.0, le=24 * 365)] = 24.0
    min_predictions: Annotated[int, Field(ge=10)] = 200
    psi_threshold: Annotated[float, Field(gt=0.0, le=10.0)] = 0.2
    min_feedback: Annotated[int, Field(ge=1)] = 50
    cooldown_hours: Annotated[float, Field(ge=0.0, le=24 * 365)] = 6.0
    retrain_deployment: str = "scheduled-retrain/scheduled-retrain"
    report_dir: str = "reports/drift"


class Params(Section):
    ingest: IngestConfig = IngestConfig()
    augment: AugmentConfig = AugmentConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    compress: CompressConfig = CompressConfig()
    export: ExportConfig = ExportConfig()
    text: TextConfig = TextConfig()
    retrain: RetrainConfig = RetrainConfig()
    serve: ServeConfig = ServeConfig()
    monitor: MonitorConfig = MonitorConfig()
    tune: TuneConfig = TuneConfig()  # lab2prod tune only: no stage lists it (lab2prod/core/tune_settings.py)

    @model_validator(mode="after")
    def _tune_space_names_settings(self) -> Params:
        check_space(self.tune.space, type(self))
        return self

    def section_hash(self, *sections: str) -> str:
        """Short content hash of the named sections (all of them if none): lineage of an artifact."""
        names = sections or tuple(type(self).model_fields)
        blob = json.dumps({n: getattr(self, n).model_dump(mode="json") for n in names}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _describe(error: dict[str, Any], source: str) -> str:
    key = ".".join(str(part) for part in error["loc"])
    if not key:  # a rule across sections (the tune space): the message names the key
        return f"{source}: {error['msg'].removeprefix('Value error, ')}."
    if error["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}'. Remove it or fix its spelling (see the comments in params.yaml)."
    value, message = error.get("input"), error["msg"].removeprefix("Value error, ")
    if isinstance(value, dict):  # a rule across a section's keys: the message names them
        return f"{source}: {key}: {message}."
    return f"{source}: {key} = {value!r}: {message}."


def validate_params(raw: Any, source: str = str(PARAMS_FILE)) -> Params:
    """Validate a parsed params mapping; raise ConfigError listing every problem found."""
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of stage sections, got {type(raw).__name__}.")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = "\n  ".join(_describe(e, source) for e in exc.errors())
        raise ConfigError(f"invalid settings:\n  {problems}") from None


def read_raw(path: Path | str = PARAMS_FILE) -> Any:
    """A params.yaml file as plain data, unvalidated: a ConfigError if it is missing or not YAML."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: settings file not found; run from the project root.") from None
    try:
        return yaml.safe_load(text)  # validate_params says what is wrong with anything but a mapping
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def load_params(path: Path | str = PARAMS_FILE, overrides: dict[str, Any] | None = None) -> Params:
    """The one way settings are loaded: read a params.yaml file, apply dotted `overrides`
    ({"train.epochs": 5}), validate. Errors name the file, the overrides, the key and the value."""
    raw = read_raw(path)
    if not overrides:
        return validate_params(raw, str(path))
    where = f"{path} with {', '.join(f'{k}={v!r}' for k, v in overrides.items())}"
    return validate_params(apply_overrides(raw or {}, overrides), where)
