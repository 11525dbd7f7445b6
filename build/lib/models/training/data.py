"""Training data for Lightning, read from the prepared shards (lab2prod/data/dataset.py) one of two ways:

- **memory**: the split decoded once into uint8 tensors (on the GPU when it fits in a quarter of its
  free memory), batched by indexing: no workers, no per-item collation. Fastest for data that fits.
- **stream**: a DataLoader whose worker processes read and decode each batch's images from the
  shards by byte offset; memory stays flat however large the split is.

`loader="auto"` picks memory when the decoded train + val splits need at most `memory_limit_mb`
(train.memory_limit_mb, default 2048 MB), else stream. Both paths draw the same batches: a
permutation seeded with (seed, epoch), so a run resumed at epoch k sees the same batches as an
uninterrupted one, cut into equally many batches per DDP rank, each rank a disjoint share.

Online augmentation (a module such as kornia's AugmentationSequential) runs per training batch on the
training device, seeded by (augmentation seed, optimizer step, rank): identical after a resume.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from lab2prod.data.dataset import SplitIndex
from models.nets.inputs import to_model_input

log = logging.getLogger(__name__)

# Keep a dataset on the GPU whole when it needs under this share of the free GPU memory.
GPU_RESIDENT_SHARE = 0.25


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class EpochBatches:
    """Batches of sample indices for one rank: a seeded per-epoch permutation (or the natural order),
    this rank's strided share of it, cut into the same number of batches on every rank (so DDP's
    collective calls line up) without repeating or dropping a sample."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        shuffle: bool,
        seed: int,
        epoch: Callable[[], int] = lambda: 0,
        rank_world: tuple[int, int] | None = None,
    ) -> None:
        self.n, self.batch_size, self.shuffle, self.seed, self.epoch = n, batch_size, shuffle, seed, epoch
        self.rank_world = rank_world  # None: from torch.distributed when it runs

    def _rank_world(self) -> tuple[int, int]:
        return self.rank_world or rank_and_world()

    def __len__(self) -> int:
        _, world = self._rank_world()
        return max(1, math.ceil(math.ceil(self.n / world) / self.batch_size))

    def __iter__(self) -> Iterator[np.ndarray]:
        rank, world = self._rank_world()
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch()]).permutation(self.n)
        else:
            order = np.arange(self.n)
        share = order[rank::world]
        for batch in np.array_split(share, len(self)):
            if len(batch):
                yield batch


class ArrayBatches:
    """Batches from in-memory tensors: one indexing op per batch."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batches: EpochBatches) -> None:
        self.x, self.y, self.batches = x, y, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for idx in self.batches:
            i = torch.from_numpy(idx).to(self.x.device)
            yield self.x[i], self.y[i]


class ShardImages(Dataset):
    """Map-style dataset over one or more splits' shards: item i -> (uint8 HWC image, label)."""

    def __init__(self, indexes: list[SplitIndex]) -> None:
        self.indexes = indexes
        self.starts = np.cumsum([0] + [len(ix) for ix in indexes])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = int(np.searchsorted(self.starts, i, side="right") - 1)
        local = i - int(self.starts[k])
        index = self.indexes[k]
        return torch.from_numpy(index.image(local)), torch.tensor(index.labels[local])

    @property
    def decoded_bytes(self) -> int:
        return sum(ix.decoded_bytes for ix in self.indexes)

    def labels(self) -> torch.Tensor:
        return torch.from_numpy(np.concatenate([ix.labels for ix in self.indexes]))

    def decode_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        x = np.concatenate([ix.images(range(len(ix))) for ix in self.indexes])
        for ix in self.indexes:
            ix.close()
        return torch.from_numpy(x), self.labels()


def resolve_workers(workers: int | str) -> int:
    """`auto`: one loader process per core but one (the training process needs a core too)."""
    if workers == "auto":
        return max(1, min(8, (os.cpu_count() or 2) - 1))
    return int(workers)


class ShardDataModule(L.LightningDataModule):
    """Train/val from the prepared shards; `extra_train` are more training splits (offline copies)."""

    def __init__(
        self,
        prepared: Path,
        batch_size: int,
        seed: int,
        loader: str = "auto",
        memory_limit_mb: int = 2048,
        workers: int | str = "auto",
        augment: torch.nn.Module | None = None,
        augment_seed: int = 0,
        extra_train: tuple[tuple[Path, str], ...] = (),
    ) -> None:
        super().__init__()
        self.prepared, self.batch_size, self.seed = Path(prepared), batch_size, seed
        self.loader, self.memory_limit_mb, self.workers = loader, memory_limit_mb, resolve_workers(workers)
        self.augment, self.augment_seed, self.extra_train = augment, augment_seed, extra_train
        self.mode = ""

    def setup(self, stage: str) -> None:
        if self.mode:
            return
        train = ShardImages([SplitIndex.read(self.prepared, "train")] + [SplitIndex.read(*e) for e in self.extra_train])
        val = ShardImages([SplitIndex.read(self.prepared, "val")])
        need = train.decoded_bytes + val.decoded_bytes
        in_memory = self.loader == "memory" or (self.loader == "auto" and need <= self.memory_limit_mb * 2**20)
        self.mode = "memory" if in_memory else "stream"
        log.info(
            "data: %d train + %d val images, %.0f MB decoded: %s loader%s",
            len(train),
            len(val),
            need / 2**20,
            self.mode,
            "" if in_memory else f" with {self.workers} worker process(es)",
        )
        if not in_memory:
            self.train, self.val = train, val
            return
        self.train, self.val = train.decode_all(), val.decode_all()
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if need < GPU_RESIDENT_SHARE * free:
                self.train = tuple(t.to(device) for t in self.train)
                self.val = tuple(t.to(device) for t in self.val)

    def _epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer else 0

    def _loader(self, data, shuffle: bool):
        n = len(data[1]) if isinstance(data, tuple) else len(data)
        batches = EpochBatches(n, self.batch_size, shuffle, self.seed, self._epoch if shuffle else lambda: 0)
        if isinstance(data, tuple):
            return ArrayBatches(*data, batches)
        return DataLoader(
            data,
            batch_sampler=batches,
            num_workers=self.workers,
            persistent_workers=self.workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self):
        return self._loader(self.train, shuffle=True)

    def val_dataloader(self):
        return self._loader(self.val, shuffle=False)

    def on_after_batch_transfer(self, batch: tuple[torch.Tensor, torch.Tensor], dataloader_idx: int):
        x, y = batch
        x = to_model_input(x)
        if self.augment is not None and self.trainer is not None and self.trainer.training:
            rank, _ = rank_and_world()
            torch.manual_seed(hash((self.augment_seed, self.trainer.global_step, rank)) % 2**63)
            self.augment.to(x.device)
            with torch.no_grad():
                x = self.augment(x).clamp_(0.0, 1.0)
        return x, y
