"""The one Lightning Trainer set-up: training, fine-tuning, distillation and the benchmarks all use it."""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

# Lightning's start-up chatter (accelerator probe, product tips) and known-harmless warnings: a
# checkpoint dir reused on purpose (resume), Lightning's own pytree deprecation, and distillation's
# teacher kept in eval mode on purpose.
logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")


class EpochLog(Callback):
    """One log line per epoch, so runs without a progress bar (CI, Prefect) still show progress."""

    def __init__(self, log: logging.Logger, label: str) -> None:
        self.out, self.label = log, label

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        m = {k: float(v) for k, v in trainer.callback_metrics.items()}
        self.out.info(
            "%s: epoch %d/%d  train/loss %.4f  val/loss %.4f  val/acc %.4f",
            self.label,
            trainer.current_epoch + 1,
            trainer.max_epochs,
            m.get("train/loss", float("nan")),
            m.get("val/loss", float("nan")),
            m.get("val/acc", float("nan")),
        )


def resolve_precision(precision: str, accelerator: str) -> str:
    """`auto`: bf16 mixed precision on a GPU that has it, full fp32 on the CPU."""
    if precision != "auto":
        return precision
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if on_gpu and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def make_trainer(
    max_epochs: int,
    accelerator: str = "auto",
    devices: int | str = 1,
    precision: str = "auto",
    callbacks: list[Callback] | None = None,
    **overrides: Any,
) -> L.Trainer:
    """A Trainer with lab2prod's defaults: no logger, no checkpoints, no model summary, a progress bar
    only on a terminal. `overrides` are any other lightning.Trainer arguments."""
    settings: dict[str, Any] = {
        "max_epochs": max_epochs,
        "accelerator": accelerator,
        "devices": devices,
        "precision": resolve_precision(precision, accelerator),
        "callbacks": list(callbacks or []),
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": sys.stderr.isatty(),
        "enable_model_summary": False,
        # models/training/data.py cuts each epoch across DDP ranks itself (disjoint, equal batch counts)
        "use_distributed_sampler": False,
        **overrides,
    }
    return L.Trainer(**settings)
