"""The training data module every stage that trains builds the same way (train, compress's fine-tuning
and distillation): the prepared shards, the offline copies if augment wrote any, the loader settings,
and the augmentation policy augment wrote, applied online."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lab2prod.core.errors import DataError
from lab2prod.core.files import files_digest, read_json
from lab2prod.core.layout import Workspace
from lab2prod.core.settings import AugmentConfig, Params
from lab2prod.data.dataset import SplitIndex
from models.training.augmentation import COPIES, POLICY_FILE, build_augmenter

if TYPE_CHECKING:  # Lightning, imported where a data module is made: reading counts and policies needs none
    from models.training.data import ShardDataModule


def policy(ws: Workspace) -> dict:
    path = ws.augmented / POLICY_FILE
    if not path.is_file():
        raise DataError(f"{path}: no augmentation policy; run the augment stage first (`lab2prod run augment`).")
    return read_json(path)


def training_inputs(ws: Workspace) -> list[Path]:
    """The files whose content decides what training sees (their digest goes into a run's fingerprint)."""
    files = [ws.prepared / "train/index.csv", ws.prepared / "val/index.csv", ws.augmented / POLICY_FILE]
    copies = ws.augmented / COPIES / "index.csv"
    return files + ([copies] if copies.is_file() else [])


def inputs_digest(ws: Workspace) -> str:
    return files_digest(*training_inputs(ws))


def n_training_images(ws: Workspace) -> int:
    """Images one training epoch goes through: the train split and augment's offline copies, if any."""
    n = len(SplitIndex.read(ws.prepared, "train").labels)
    copies = ws.augmented / COPIES / "index.csv"
    return n + (len(SplitIndex.read(ws.augmented, COPIES).labels) if copies.is_file() else 0)


def datamodule(params: Params, ws: Workspace, seed: int, batch_size: int) -> ShardDataModule:
    from models.training.data import ShardDataModule

    rules = policy(ws)
    augment = AugmentConfig.model_validate(rules["settings"])
    copies = ws.augmented / COPIES
    return ShardDataModule(
        ws.prepared,
        batch_size,
        seed,
        loader=params.train.loader,
        memory_limit_mb=params.train.memory_limit_mb,
        workers=params.train.workers,
        augment=build_augmenter(augment, rules["image_size"]),
        augment_seed=augment.seed,
        extra_train=((ws.augmented, COPIES),) if (copies / "index.csv").is_file() else (),
    )
