"""Tensors in: a prepared split as torch tensors, and the one input transform every network takes.

lab2prod.data.dataset reads the shards into NumPy arrays (torch-free, for serving and the gate); these wrap
them for PyTorch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from lab2prod.data.dataset import SplitBatches, SplitIndex, load_split_arrays


def load_split(prepared: Path | str, split: str, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A split (or its first `limit` samples) decoded into memory: (uint8 NHWC images, int64 labels)."""
    x, y = load_split_arrays(prepared, split, limit)
    return torch.from_numpy(x), torch.from_numpy(y)


def iter_split(prepared: Path | str, split: str, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """A split in order, `batch_size` decoded images at a time: memory stays flat however large it is."""
    index = SplitIndex.read(prepared, split)
    try:
        for start in range(0, len(index), batch_size):
            idx = range(start, min(start + batch_size, len(index)))
            yield torch.from_numpy(index.images(idx)), torch.from_numpy(index.labels[start : idx.stop].copy())
    finally:
        index.close()


def in_batches(images: torch.Tensor | np.ndarray | SplitBatches, batch_size: int = 512) -> Iterator[torch.Tensor]:
    """uint8 NHWC tensor batches of an in-memory tensor or array, or of a SplitBatches (in its own batch size)."""
    if isinstance(images, SplitBatches):
        for batch in images:
            yield torch.from_numpy(batch)
    else:
        images = torch.as_tensor(images)
        for start in range(0, len(images), batch_size):
            yield images[start : start + batch_size]


def to_model_input(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [0, 1]: the input every network and exported model takes."""
    return torch.as_tensor(x).permute(0, 3, 1, 2).float().div_(255.0).contiguous()


@torch.no_grad()
def torch_top1(
    net: torch.nn.Module, images: torch.Tensor | np.ndarray | SplitBatches, batch_size: int = 512
) -> np.ndarray:
    """Top-1 class indices of a PyTorch network for uint8 NHWC images (a tensor, or a split streamed), in batches."""
    net.eval()
    out = [net(to_model_input(x)).argmax(1) for x in in_batches(images, batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)
