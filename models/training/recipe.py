"""The training recipe around Lightning: the initial network (built, pretrained or warm-started from the
champion), the classifier with its fine-tuning schedule, the DDP strategy of a linear probe, and resuming a
killed run."""

from __future__ import annotations

import logging
import pickle
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch
from dvclive.fabric import DVCLiveLogger as FabricDVCLiveLogger
from dvclive.lightning import DVCLiveLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from lab2prod.core.errors import ConfigError
from lab2prod.core.files import atomic_file, read_json, write_json
from lab2prod.core.settings import Params, TrainConfig
from models.nets.model_file import load_model_file
from models.nets.networks import ModelSpec, backbone_config, transfer_weights
from models.nets.weights import WeightsSource, resolve_weights
from models.training.classifier import ImageClassifier

log = logging.getLogger("models.training.recipe")


def checkpoint_to_resume(ckpt_dir: Path, fingerprint: str) -> Path | None:
    """last.ckpt of an unfinished run with the same data and settings, else None (dir is reset).

    A checkpoint cut short by a kill is not a valid zip archive and is discarded, not loaded.
    """
    state_file, last = ckpt_dir / "run.json", ckpt_dir / "last.ckpt"
    if state_file.exists() and last.exists():
        state = read_json(state_file)
        if state.get("fingerprint") == fingerprint and not state.get("complete"):
            try:
                with zipfile.ZipFile(last) as archive:
                    if archive.testzip() is None:
                        return last
            except zipfile.BadZipFile:
                log.warning("train: %s is damaged (killed while writing?); starting over", last)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    ckpt_dir.mkdir(parents=True)
    write_json(state_file, {"fingerprint": fingerprint, "complete": False})
    return None


# The Lightning calls after which DVCLive writes its files (dvclive/lightning.py: _should_sync).
SYNC_CALLERS = frozenset({"update_train_step_metrics", "update_train_epoch_metrics", "log_eval_end_metrics"})


def lightning_syncs() -> bool:
    """Whether Lightning's logger connector is the caller, found as DVCLive finds it but by walking the frames:
    DVCLive's own check calls inspect.stack(), which reads the source of every frame (0.4 s a call on a 2-core CPU,
    twice an epoch: a minute of a 150-epoch run spent there)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name in SYNC_CALLERS:
            return True
        frame = frame.f_back
    return False


class CurveLogger(DVCLiveLogger):
    """DVCLive's Lightning logger with the curves' step being the epoch: every curve is logged once an epoch, and a
    plot against optimizer steps reads differently for every batch size and data size. Lightning adds `epoch` to
    each call; it becomes the step rather than a curve of its own. (DVCLive's own `if step:` also read a step of 0
    as none, which put epoch 0 beside epoch 1: hence the step is set here, not passed.)"""

    @rank_zero_only
    def log_metrics(self, metrics: Any, step: int | None = None, sync: bool | None = False) -> None:
        metrics = dict(metrics)
        epoch = metrics.pop("epoch", None)
        step = int(epoch) if epoch is not None else step
        if step is not None:
            self.experiment.step = step - 1  # DVCLive adds the 1 back when it is given no step
        # DVCLive's Fabric logger: its Lightning one's only addition is the slow caller check, done here instead
        FabricDVCLiveLogger.log_metrics(self, metrics, None, bool(sync) or lightning_syncs())


def trim_curves(metrics_dir: Path, checkpoint: Path) -> None:
    """Drop curve rows of epochs after the one `checkpoint` closed (a kill between the two writes): the resumed run
    logs those epochs again, and each must appear once."""
    try:
        done = int(torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"])
    except (KeyError, RuntimeError, OSError, pickle.UnpicklingError) as exc:
        log.warning("train: could not read the epoch of %s (%s); curves kept as they are", checkpoint, exc)
        return
    for tsv in (metrics_dir / "plots").rglob("*.tsv"):
        header, *rows = tsv.read_text().splitlines(keepends=True)
        kept = [r for r in rows if int(r.split("\t", 1)[0]) <= done]
        if len(kept) < len(rows):
            with atomic_file(tsv) as tmp:
                tmp.write_text(header + "".join(kept))


def network_spec(cfg: TrainConfig, meta: dict[str, Any], weights: WeightsSource) -> ModelSpec:
    """The network to train, from the train settings, the prepared data's meta.json and the weights.

    A pretrained timm backbone brings its own normalisation statistics (averaged for grey images,
    whose first conv timm sums over RGB), input size and interpolation; the network resizes to that
    size inside (`train.input_size` overrides it), so its ONNX file still takes the ingested size.
    """
    height, _, channels = meta["image_shape"]
    mean, std = meta["normalization"]["mean"], meta["normalization"]["std"]
    input_size = None if cfg.input_size == "auto" else cfg.input_size
    interpolation = "bilinear"
    if weights.kind in ("timm", "file"):
        backbone = backbone_config(cfg.architecture)
        mean, std = [float(v) for v in backbone["mean"]], [float(v) for v in backbone["std"]]
        if channels != len(mean):
            mean, std = [sum(mean) / len(mean)] * channels, [sum(std) / len(std)] * channels
        if cfg.input_size == "auto":
            input_size = int(backbone["input_size"][-1])
            if input_size != height:
                log.info(
                    "train: %s was pretrained at %d px: the network resizes the %d px images to that inside, "
                    "at the compute of %d px images (set train.input_size for a smaller size)",
                    cfg.architecture,
                    input_size,
                    height,
                    input_size,
                )
        if backbone.get("interpolation") in ("bilinear", "bicubic"):
            interpolation = backbone["interpolation"]
    return ModelSpec(
        architecture=cfg.architecture,
        in_channels=channels,
        n_classes=len(meta["classes"]),
        width=cfg.width,
        dropout=cfg.dropout,
        mean=mean,
        std=std,
        input_size=None if input_size == height else input_size,
        interpolation=interpolation,
    )


def warm_start(cfg: TrainConfig, meta: dict[str, Any], weights: WeightsSource) -> tuple[ModelSpec, nn.Module]:
    """The champion's network re-sized to this data's classes, its weights copied (head rows by class name)."""
    assert weights.path is not None
    source, source_info = load_model_file(weights.path)
    old = source_info.spec
    mismatch = [
        f"{key} {getattr(old, key)!r} vs {value!r}"
        for key, value in (("architecture", cfg.architecture), ("in_channels", meta["image_shape"][2]))
        if getattr(old, key) != value
    ]
    if old.architecture == cfg.architecture and not old.is_timm and old.width != cfg.width:
        mismatch.append(f"width {old.width} vs {cfg.width}")
    if mismatch:
        raise ConfigError(
            f"train.pretrained = 'champion': the champion ({weights.label}) does not fit these settings "
            f"(champion vs now: {'; '.join(mismatch)}); set train to the champion's or start from 'none'"
        )
    spec = old.model_copy(update={"n_classes": len(meta["classes"]), "dropout": cfg.dropout})
    net = spec.build()
    report = transfer_weights(net, source, source_info.classes, meta["classes"])
    log.info(
        "train: warm start from %s: %d tensors copied, %d classes kept, new classes %s%s",
        weights.label,
        report["tensors_copied"],
        len(report["classes_kept"]),
        report["classes_new"] or "none",
        f", not copied: {report['tensors_skipped']}" if report["tensors_skipped"] else "",
    )
    return spec, net


def build_classifier(cfg: TrainConfig, net: nn.Module, n_classes: int, lr: float | None = None) -> ImageClassifier:
    """The network in the training recipe's LightningModule; `lr`: the budget's peak learning rate (else train.lr)."""
    return ImageClassifier(
        net,
        n_classes,
        lr=lr or cfg.lr,
        weight_decay=cfg.weight_decay,
        label_smoothing=cfg.label_smoothing,
        backbone_lr_scale=cfg.backbone_lr_scale,
        freeze_epochs=cfg.freeze_epochs,
        freeze_bn=cfg.freeze_bn,
        layer_decay=cfg.layer_decay,
        channels_last=cfg.channels_last,
        compile=cfg.compile,
    )


def linear_probe_strategy(cfg: TrainConfig) -> dict[str, Any]:
    """DDP's strategy told to expect parameters without gradients, when a linear probe freezes the backbone
    on more than one device (plain DDP stops at the first step that leaves a parameter without one)."""
    return {"strategy": "ddp_find_unused_parameters_true"} if cfg.freeze_epochs and processes(cfg) > 1 else {}


def processes(cfg: TrainConfig) -> int:
    """Training processes on this machine: the device count asked for, or every GPU under "auto"."""
    gpus = torch.cuda.device_count() if cfg.accelerator in ("auto", "gpu", "cuda") else 0
    return cfg.devices if isinstance(cfg.devices, int) else max(gpus, 1)


def initial_network(params: Params, meta: dict[str, Any], scratch: Path) -> tuple[ModelSpec, nn.Module, WeightsSource]:
    """The network to start from (draws random weights where there are no others: seed first)."""
    cfg = params.train
    weights = resolve_weights(cfg.pretrained, cfg.architecture, Path("."), params.retrain.registry_dir, scratch)
    if weights.kind == "champion":
        spec, net = warm_start(cfg, meta, weights)
    else:
        spec = network_spec(cfg, meta, weights)
        net = spec.build(weights.path if weights.kind in ("timm", "file") else None)
    return spec, net, weights
