"""The LightningModule (training recipe) and DataModule (in-memory uint8 arrays) for classification."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterator

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
import torchmetrics
from torch import nn

from models.networks import build_network

# Keep a dataset on the GPU whole when it needs under this share of the free GPU memory.
GPU_RESIDENT_SHARE = 0.25


class ImageClassifier(L.LightningModule):
    """AdamW + one-cycle schedule, label-smoothed cross-entropy, accuracy on train and val."""

    def __init__(self, spec: dict[str, Any], lr: float, weight_decay: float, label_smoothing: float) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["teacher"])  # a distillation subclass's teacher is a module
        self.net = build_network(**spec)
        self.loss = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        n = spec["n_classes"]
        self.train_acc = torchmetrics.Accuracy(task="multiclass", num_classes=n)
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.loss(logits, y)
        self.train_acc(logits, y)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.log("val/loss", self.loss(logits, y), on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        decay, no_decay = [], []
        for name, p in self.named_parameters():  # no weight decay on norms and biases
            if p.requires_grad:  # a frozen teacher (distillation) is not optimised
                (no_decay if p.ndim <= 1 else decay).append(p)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=hp.lr,
        )
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=hp.lr, total_steps=int(self.trainer.estimated_stepping_batches), pct_start=0.25
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class ArrayBatches:
    """Batches from in-memory tensors: one indexing op per batch, no per-item collation.

    Shuffled by a permutation seeded with (seed, epoch), so a run resumed at epoch k sees the same
    batches as an uninterrupted one; under DDP each rank takes a strided share of the permutation,
    so ranks see disjoint data.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool, seed: int,
                 epoch: Callable[[], int] = lambda: 0) -> None:
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle
        self.seed, self.epoch = seed, epoch

    def _indices(self) -> torch.Tensor:
        n = len(self.y)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch())
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        if dist.is_available() and dist.is_initialized():
            order = order[dist.get_rank()::dist.get_world_size()]
        return order.to(self.x.device)

    def __len__(self) -> int:
        n = len(self.y)
        if dist.is_available() and dist.is_initialized():
            n = math.ceil(n / dist.get_world_size())
        return math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._indices()
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            yield self.x[idx], self.y[idx]


def load_split(path: Path | str) -> tuple[torch.Tensor, torch.Tensor]:
    """A split file as (uint8 NHWC images, int64 labels) tensors."""
    with np.load(path) as split:
        return torch.from_numpy(split["x"]), torch.from_numpy(split["y"]).long()


def to_model_input(x: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [0, 1]: the input every network and exported model takes."""
    return x.permute(0, 3, 1, 2).float().div_(255.0).contiguous()


class ArrayDataModule(L.LightningDataModule):
    """Train/val splits held in memory as uint8; converted to float per batch, on the device."""

    def __init__(self, train_file: Path, val_file: Path, batch_size: int, seed: int) -> None:
        super().__init__()
        self.train_file, self.val_file = train_file, val_file
        self.batch_size, self.seed = batch_size, seed

    def setup(self, stage: str) -> None:
        self.train = load_split(self.train_file)
        self.val = load_split(self.val_file)
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        if device.type == "cuda":
            need = sum(t.numel() * t.element_size() for t in (*self.train, *self.val))
            free, _ = torch.cuda.mem_get_info(device)
            if need < GPU_RESIDENT_SHARE * free:
                self.train = tuple(t.to(device) for t in self.train)
                self.val = tuple(t.to(device) for t in self.val)

    def train_dataloader(self) -> ArrayBatches:
        return ArrayBatches(*self.train, self.batch_size, shuffle=True, seed=self.seed,
                            epoch=lambda: self.trainer.current_epoch if self.trainer else 0)

    def val_dataloader(self) -> ArrayBatches:
        return ArrayBatches(*self.val, self.batch_size, shuffle=False, seed=self.seed)

    def on_after_batch_transfer(self, batch: tuple[torch.Tensor, torch.Tensor], dataloader_idx: int):
        x, y = batch
        return to_model_input(x), y


class DistillationModule(ImageClassifier):
    """Trains a student on the teacher's softened outputs (temperature T) and the true labels.

    loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * cross-entropy(student, labels)
    """

    def __init__(self, spec: dict[str, Any], teacher: nn.Module, lr: float, weight_decay: float,
                 temperature: float, alpha: float) -> None:
        super().__init__(spec, lr=lr, weight_decay=weight_decay, label_smoothing=0.0)
        self.teacher = teacher.eval().requires_grad_(False)
        self.temperature, self.alpha = temperature, alpha

    def on_train_epoch_start(self) -> None:
        self.teacher.eval()  # Lightning puts every submodule in train mode; keep the teacher's BN fixed

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        with torch.no_grad():
            soft = torch.softmax(self.teacher(x) / self.temperature, dim=1)
        kd = nn.functional.kl_div(torch.log_softmax(logits / self.temperature, dim=1), soft, reduction="batchmean")
        loss = self.alpha * self.temperature**2 * kd + (1 - self.alpha) * self.loss(logits, y)
        self.train_acc(logits, y)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss
