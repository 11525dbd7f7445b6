"""Stage 3, train: Lightning training on the prepared shards with the augmentation policy applied
per batch (models/data.py picks an in-memory or a streaming loader), early-stopped on the val split.

Writes:
    artifacts/train/model.pt          weights-only model file (load with models.model_file.load_model_file)
    artifacts/train/checkpoints/      Lightning checkpoints (best, last) + run.json; kept across runs so
                                      a killed run resumes from last.ckpt when data and settings match
    metrics/train/                    DVCLive metrics.json and per-epoch curves for `dvc plots`
"""

from __future__ import annotations

import logging
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from dvclive.lightning import DVCLiveLogger
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from lab2prod.console import ParamsFile, run_stage
from lab2prod.files import atomic_file, read_json, write_json
from lab2prod.layout import PARAMS, WORKSPACE, Workspace
from lab2prod.lineage import git_commit
from lab2prod.settings import Params, TrainConfig, load_params
from lab2prod.training_data import datamodule, inputs_digest
from models.classifier import ImageClassifier
from models.model_file import Lineage, ModelInfo, save_model_file
from models.networks import ModelSpec
from models.trainer import EpochLog, make_trainer

log = logging.getLogger("tasks.train")  # not __name__: that is __main__ under python -m


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


def trim_curves(metrics_dir: Path, checkpoint: Path) -> None:
    """Drop curve rows logged after `checkpoint` was written (a kill between the two writes): the
    resumed run logs those steps again, and each step must appear once."""
    try:
        done = int(torch.load(checkpoint, map_location="cpu", weights_only=True)["global_step"])
    except (KeyError, RuntimeError, OSError, pickle.UnpicklingError) as exc:
        log.warning("train: could not read the step of %s (%s); curves kept as they are", checkpoint, exc)
        return
    for tsv in (metrics_dir / "plots").rglob("*.tsv"):
        header, *rows = tsv.read_text().splitlines(keepends=True)
        kept = [r for r in rows if int(r.split("\t", 1)[0]) < done]
        if len(kept) < len(rows):
            with atomic_file(tsv) as tmp:
                tmp.write_text(header + "".join(kept))


def network_spec(cfg: TrainConfig, meta: dict[str, Any]) -> ModelSpec:
    """The network to train, from the train settings and the prepared data's meta.json."""
    return ModelSpec(
        architecture=cfg.architecture,
        in_channels=meta["image_shape"][2],
        n_classes=len(meta["classes"]),
        width=cfg.width,
        dropout=cfg.dropout,
        mean=meta["normalization"]["mean"],
        std=meta["normalization"]["std"],
    )


def build_classifier(cfg: TrainConfig, spec: ModelSpec) -> ImageClassifier:
    """A fresh network in the training recipe's LightningModule (draws the initial weights: seed first)."""
    return ImageClassifier(
        spec.build(),
        spec.n_classes,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        label_smoothing=cfg.label_smoothing,
    )


def train(params: Params, ws: Workspace = WORKSPACE, trainer_overrides: dict[str, Any] | None = None) -> dict:
    """Train, resume if an unfinished matching run exists, write the model file. Returns a summary.

    `trainer_overrides` are extra lightning.Trainer arguments (e.g. a DDP strategy); callbacks given
    there are added to ours.
    """
    cfg = params.train
    meta = read_json(ws.prepared / "meta.json")
    spec = network_spec(cfg, meta)
    inputs_hash = inputs_digest(ws)
    fingerprint = f"{inputs_hash}-{params.section_hash('train')}"
    ckpt_dir = ws.train_dir / "checkpoints"
    resume_from = checkpoint_to_resume(ckpt_dir, fingerprint)
    if resume_from:
        log.info("train: resuming the unfinished run from %s", resume_from)
        trim_curves(ws.train_metrics, resume_from)

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model = build_classifier(cfg, spec)
    data = datamodule(params, ws, cfg.seed)
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/loss", mode="min", save_last=True)
    overrides = dict(trainer_overrides or {})
    stop = EarlyStopping(monitor="val/loss", mode="min", patience=cfg.patience)
    trainer = make_trainer(
        cfg.epochs,
        cfg.accelerator,
        cfg.devices,
        cfg.precision,
        callbacks=[best, stop, EpochLog(log, "train"), *overrides.pop("callbacks", [])],
        logger=DVCLiveLogger(dir=str(ws.train_metrics), save_dvc_exp=False, dvcyaml=None, resume=bool(resume_from)),
        enable_checkpointing=True,
        log_every_n_steps=1,
        default_root_dir=str(ws.train_dir),
        **overrides,
    )
    trainer.fit(model, datamodule=data, ckpt_path=str(resume_from) if resume_from else None)

    if trainer.global_rank != 0:  # under DDP only rank 0 writes the model file
        return {}
    state = torch.load(best.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict(state)
    lineage = Lineage(
        dataset_hash=meta["dataset_hash"],
        train_inputs_hash=inputs_hash,
        params_hash=params.section_hash("train"),
        git_commit=git_commit(),
    )
    info = ModelInfo(
        spec=spec,
        classes=meta["classes"],
        image_shape=meta["image_shape"],
        lineage=lineage,
        best_val_loss=float(best.best_model_score),
        epochs_trained=trainer.current_epoch,
    )
    save_model_file(ws.model, model.net, info)
    write_json(ckpt_dir / "run.json", {"fingerprint": fingerprint, "complete": True})
    summary = {
        "epochs": trainer.current_epoch,
        "best_val_loss": round(info.best_val_loss, 5),
        "precision": trainer.precision,
        "device": str(trainer.strategy.root_device),
    }
    log.info("train: %s; model in %s", summary, ws.model)
    return summary


def main(params: ParamsFile = PARAMS) -> None:
    """Train on data/prepared/ (augmented per data/augmented/policy.json); write artifacts/train/model.pt."""
    train(load_params(params))


if __name__ == "__main__":
    run_stage(main)
