"""Stage 3, train: Lightning training on the augmented split, early-stopped on the val split.

Writes:
    artifacts/train/model.pt          weights-only model file (load with models.networks.load_model_file)
    artifacts/train/checkpoints/      Lightning checkpoints (best, last) + run.json; kept across runs so
                                      a killed run resumes from last.ckpt when data and settings match
    metrics/train/                    DVCLive metrics.json and per-epoch curves for `dvc plots`
"""

from __future__ import annotations

import logging
import shutil
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Annotated, Any

import lightning as L
import torch
import typer
from dvclive.lightning import DVCLiveLogger
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint

from models.classifier import ArrayDataModule, ImageClassifier
from models.networks import save_model_file
from tasks.artifacts import files_digest, git_commit, read_json, write_json
from tasks.config import Params, TrainConfig, load_params
from tasks.logs import stage_entry

log = logging.getLogger("tasks.train")  # not __name__: that is __main__ under python -m
# Lightning's start-up chatter (accelerator probe, product tips) and two known-harmless warnings:
# our checkpoint dir is reused on purpose (resume), and the pytree one is Lightning's own deprecation.
logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")

PREPARED = Path("data/prepared")
AUGMENTED = Path("data/augmented")
OUT_DIR = Path("artifacts/train")
METRICS_DIR = Path("metrics/train")


class EpochLog(Callback):
    """One log line per epoch, so runs without a progress bar (CI, Prefect) still show progress."""

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        m = {k: float(v) for k, v in trainer.callback_metrics.items()}
        log.info("epoch %d/%d  train/loss %.4f  val/loss %.4f  val/acc %.4f", trainer.current_epoch + 1,
                 trainer.max_epochs, m.get("train/loss", float("nan")), m.get("val/loss", float("nan")),
                 m.get("val/acc", float("nan")))


def resolve_precision(cfg: TrainConfig) -> str:
    """`auto`: bf16 mixed precision on a GPU that has it, full fp32 on the CPU."""
    if cfg.precision != "auto":
        return cfg.precision
    on_gpu = cfg.accelerator in ("gpu", "cuda") or (cfg.accelerator == "auto" and torch.cuda.is_available())
    if on_gpu and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


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


def train(params: Params, prepared: Path = PREPARED, augmented: Path = AUGMENTED, out_dir: Path = OUT_DIR,
          metrics_dir: Path = METRICS_DIR, trainer_overrides: dict[str, Any] | None = None) -> dict:
    """Train, resume if an unfinished matching run exists, write the model file. Returns a summary.

    `trainer_overrides` are extra lightning.Trainer arguments (e.g. a DDP strategy); callbacks given
    there are added to ours.
    """
    cfg = params.train
    meta = read_json(prepared / "meta.json")
    height, width, channels = meta["image_shape"]
    spec = {"architecture": cfg.architecture, "in_channels": channels, "n_classes": len(meta["classes"]),
            "width": cfg.width, "dropout": cfg.dropout,
            "mean": meta["normalization"]["mean"], "std": meta["normalization"]["std"]}
    inputs_hash = files_digest(augmented / "train.npz", prepared / "val.npz")
    fingerprint = f"{inputs_hash}-{params.section_hash('train')}"
    ckpt_dir = out_dir / "checkpoints"
    resume_from = checkpoint_to_resume(ckpt_dir, fingerprint)
    if resume_from:
        log.info("train: resuming the unfinished run from %s", resume_from)

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model = ImageClassifier(spec, lr=cfg.lr, weight_decay=cfg.weight_decay, label_smoothing=cfg.label_smoothing)
    data = ArrayDataModule(augmented / "train.npz", prepared / "val.npz", cfg.batch_size, cfg.seed)
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/loss", mode="min", save_last=True)
    overrides = dict(trainer_overrides or {})
    callbacks = [best, EarlyStopping(monitor="val/loss", mode="min", patience=cfg.patience), EpochLog()]
    trainer = L.Trainer(**{
        "max_epochs": cfg.epochs,
        "accelerator": cfg.accelerator,
        "devices": cfg.devices,
        "precision": resolve_precision(cfg),
        "callbacks": callbacks + list(overrides.pop("callbacks", [])),
        "logger": DVCLiveLogger(dir=str(metrics_dir), save_dvc_exp=False, dvcyaml=None, resume=bool(resume_from)),
        "enable_progress_bar": sys.stderr.isatty(),
        "enable_model_summary": False,
        "log_every_n_steps": 1,
        "default_root_dir": str(out_dir),
        **overrides,
    })
    trainer.fit(model, datamodule=data, ckpt_path=str(resume_from) if resume_from else None)

    if trainer.global_rank != 0:  # under DDP only rank 0 writes the model file
        return {}
    state = torch.load(best.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict(state)
    info = {
        "classes": meta["classes"],
        "image_shape": [height, width, channels],
        "input": "float32 NCHW, pixel / 255 (normalisation is inside the network)",
        "best_val_loss": float(best.best_model_score),
        "epochs_trained": trainer.current_epoch,
        "lineage": {"dataset_hash": meta["dataset_hash"], "train_inputs_hash": inputs_hash,
                    "params_hash": params.section_hash("train"), "git_commit": git_commit()},
    }
    save_model_file(out_dir / "model.pt", model.net, spec, info)
    write_json(ckpt_dir / "run.json", {"fingerprint": fingerprint, "complete": True})
    summary = {"epochs": trainer.current_epoch, "best_val_loss": round(info["best_val_loss"], 5),
               "precision": trainer.precision, "device": str(trainer.strategy.root_device)}
    log.info("train: %s; model in %s", summary, out_dir / "model.pt")
    return summary


@stage_entry
def main(params: Annotated[Path, typer.Option(help="Settings file to read.")] = Path("params.yaml")) -> None:
    """Train the classifier on data/augmented/ and write artifacts/train/model.pt."""
    train(load_params(params))


if __name__ == "__main__":
    typer.run(main)
