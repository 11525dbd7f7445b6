"""Training data for Lightning: the prepared splits held in memory as uint8, batched by indexing,
converted to float per batch on the training device."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist

from lab2prod.dataset import load_split, to_model_input

# Keep a dataset on the GPU whole when it needs under this share of the free GPU memory.
GPU_RESIDENT_SHARE = 0.25


class ArrayBatches:
    """Batches from in-memory tensors: one indexing op per batch, no per-item collation.

    Shuffled by a permutation seeded with (seed, epoch), so a run resumed at epoch k sees the same
    batches as an uninterrupted one; under DDP each rank takes a strided share of the permutation,
    so ranks see disjoint data.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        seed: int,
        epoch: Callable[[], int] = lambda: 0,
    ) -> None:
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
            order = order[dist.get_rank() :: dist.get_world_size()]
        return order.to(self.x.device)

    def __len__(self) -> int:
        n = len(self.y)
        if dist.is_available() and dist.is_initialized():
            n = math.ceil(n / dist.get_world_size())
        return math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._indices()
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            yield self.x[idx], self.y[idx]


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
        return ArrayBatches(
            *self.train,
            self.batch_size,
            shuffle=True,
            seed=self.seed,
            epoch=lambda: self.trainer.current_epoch if self.trainer else 0,
        )

    def val_dataloader(self) -> ArrayBatches:
        return ArrayBatches(*self.val, self.batch_size, shuffle=False, seed=self.seed)

    def on_after_batch_transfer(self, batch: tuple[torch.Tensor, torch.Tensor], dataloader_idx: int):
        x, y = batch
        return to_model_input(x), y
