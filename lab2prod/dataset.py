"""The prepared-data format every stage after ingest reads, and the input every model takes.

    <prepared>/{train,val,test}.npz   x: uint8 (N, H, W, C), y: int64 class index into meta's `classes`
    <prepared>/meta.json              classes, image shape, counts, content hash, normalisation stats

Models take float32 NCHW pixels in [0, 1] (`to_model_input`); normalisation is inside each network.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def load_split(path: Path | str) -> tuple[torch.Tensor, torch.Tensor]:
    """A split file as (uint8 NHWC images, int64 labels) tensors."""
    with np.load(path, allow_pickle=False) as split:
        return torch.from_numpy(split["x"]), torch.from_numpy(split["y"]).long()


def to_model_input(x: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [0, 1]: the input every network and exported model takes."""
    return x.permute(0, 3, 1, 2).float().div_(255.0).contiguous()
