"""Stage 3, train: Lightning training on the prepared shards, augmented per batch, early-stopped on val
(images; texts: models/text/training.py gives the network, its tokenizer and the batches).

Writes:
    artifacts/train/model.pt          weights-only model file (load with models.nets.model_file.load_model_file)
    artifacts/train/checkpoints/      Lightning checkpoints (best, last) + run.json; kept across runs so
                                      a killed run resumes from last.ckpt when data and settings match
    metrics/train/                    DVCLive metrics.json and per-epoch curves for `dvc plots`
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from lab2prod.core.console import ParamsFile, run_stage
from lab2prod.core.files import read_json, write_json
from lab2prod.core.layout import PARAMS, WORKSPACE, Workspace
from lab2prod.core.lineage import git_commit
from lab2prod.core.settings import Params, load_params
from models.nets.model_file import Lineage, ModelInfo, save_model_file
from models.text.model_file import save_text_model
from models.text.training import TextRun
from models.training.budget import training_budget
from models.training.pruning import trial_pruning
from models.training.recipe import (
    CurveLogger,
    build_classifier,
    checkpoint_to_resume,
    initial_network,
    linear_probe_strategy,
    processes,
    trim_curves,
)
from models.training.trainer import EpochLog, make_trainer
from models.training.training_data import datamodule, inputs_digest, n_training_images

log = logging.getLogger("tasks.train")  # not __name__: that is __main__ under python -m


def train(params: Params, ws: Workspace = WORKSPACE, trainer_overrides: dict[str, Any] | None = None) -> dict:
    """Train (resuming an unfinished matching run), write the model file; returns a summary. `trainer_overrides`:
    more lightning.Trainer arguments (e.g. a DDP strategy); callbacks given there are added to ours."""
    cfg = params.train
    meta = read_json(ws.prepared / "meta.json")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    text = TextRun(params, ws, meta) if meta.get("modality") == "text" else None
    if text:  # a text model: the MLP (its tokenizer learned on the train split) or a pretrained encoder
        spec, net, weights, cfg = text.spec, text.network(), text.weights(), text.train_settings()
    else:
        with tempfile.TemporaryDirectory(prefix="lab2prod-weights-") as scratch:
            spec, net, weights = initial_network(params, meta, Path(scratch))
    n_train, unit = (text.n_train, "texts") if text else (n_training_images(ws), "images")
    budget = training_budget(cfg, n_train, processes(cfg), unit)
    log.info("train: %s", budget.why)
    inputs_hash = inputs_digest(ws)
    params_hash = params.section_hash(*(("train", "text") if text else ("train",)))
    fingerprint = f"{inputs_hash}-{params_hash}-{weights.sha256}"
    ckpt_dir = ws.train_dir / "checkpoints"
    resume_from = checkpoint_to_resume(ckpt_dir, fingerprint)
    if resume_from:
        log.info("train: resuming the unfinished run from %s", resume_from)
        trim_curves(ws.train_metrics, resume_from)

    model = build_classifier(cfg, net, spec.n_classes, budget.lr)
    data = text.datamodule(budget.batch_size, cfg.seed) if text else datamodule(params, ws, cfg.seed, budget.batch_size)
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/loss", mode="min", save_last=True)
    overrides = {**linear_probe_strategy(cfg), **(trainer_overrides or {})}
    stop = EarlyStopping(monitor="val/loss", mode="min", patience=budget.patience)
    logger = CurveLogger(dir=str(ws.train_metrics), save_dvc_exp=False, dvcyaml=None, resume=bool(resume_from))
    budget.log_to(logger.experiment)  # metrics/train/metrics.json: budget/epochs, budget/steps, ...
    trainer = make_trainer(
        budget.epochs,
        cfg.accelerator,
        cfg.devices,
        cfg.precision,
        callbacks=[best, stop, EpochLog(log, "train"), *trial_pruning(), *overrides.pop("callbacks", [])],
        logger=logger,
        enable_checkpointing=True,
        log_every_n_steps=1,
        default_root_dir=str(ws.train_dir),
        **overrides,
    )
    if cfg.compile:
        log.info("train: torch.compile: the first steps of each input shape compile, later ones run compiled")
    trainer.fit(model, datamodule=data, ckpt_path=str(resume_from) if resume_from else None)

    if trainer.global_rank != 0:  # under DDP only rank 0 writes the model file
        return {}
    state = torch.load(best.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict(state)
    lineage = Lineage.of(meta["dataset_hash"], inputs_hash, params_hash, weights.label, weights.sha256, git_commit())
    best_loss, epochs = float(best.best_model_score), trainer.current_epoch
    if text:
        save_text_model(ws.model, model.net, text.info(lineage, best_loss, epochs))
    else:
        fields = {"spec": spec, "classes": meta["classes"], "image_shape": meta["image_shape"], "lineage": lineage}
        save_model_file(ws.model, model.net, ModelInfo(**fields, best_val_loss=best_loss, epochs_trained=epochs))
    write_json(ckpt_dir / "run.json", {"fingerprint": fingerprint, "complete": True})
    summary = {"epochs": trainer.current_epoch, "planned_epochs": budget.epochs, "batch_size": budget.batch_size}
    summary |= {"best_val_loss": round(best_loss, 5), "precision": trainer.precision}
    summary["device"] = str(trainer.strategy.root_device)
    log.info("train: %s; model in %s", summary, ws.model)
    return summary


def main(params: ParamsFile = PARAMS) -> None:
    """Train on data/prepared/ (augmented per data/augmented/policy.json); write artifacts/train/model.pt."""
    train(load_params(params))


if __name__ == "__main__":
    run_stage(main)
