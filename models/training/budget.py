"""How long to train, from the data: counted in optimizer steps and images seen, not in a fixed epoch count.

A fixed `batch_size: 128` and `epochs: 10` gives digits' 1,078 training images 90 steps, but 65 images one
step per epoch (10 in all: a network that has barely moved) and 3,000 MNIST digits too few to converge.
With `train.batch_size: auto` a batch is about 1/32 of the training split (a power of two, 16..128), so
every epoch has ~32 steps whatever the data's size; with `train.epochs: auto` the run is long enough for
`train.min_steps` optimizer steps (counted at batch 32: fewer, larger steps above it, `step_floor`), at least
`min_epochs` and at most `max_epochs` epochs. Early stopping
(`train.patience`, "auto" = a third of the epochs, at least 5) ends a run whose validation loss has stopped
improving; the one-cycle schedule is laid over the planned steps.

Pure arithmetic (no torch): the train stage, compress's fine-tuning and the benchmarks call it alike.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from lab2prod.core.errors import ConfigError
from lab2prod.core.settings import TrainConfig

MIN_AUTO_BATCH, MAX_AUTO_BATCH = 16, 128
STEPS_PER_EPOCH_TARGET = 32  # batch "auto": about this many batches per epoch
STEPS_BATCH = 32  # train.min_steps counts steps of this many images; larger batches need fewer (step_floor)


@dataclass(frozen=True)
class Budget:
    batch_size: int
    epochs: int
    steps_per_epoch: int
    patience: int
    n_train: int
    why: str
    lr: float  # the peak learning rate at this batch size (lr_at)

    @property
    def steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def samples(self) -> int:
        return self.epochs * self.n_train

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "steps": self.steps, "samples": self.samples}

    def log_to(self, live: Any) -> None:
        """Into a DVCLive run's summary (metrics.json) as budget/<name>, beside the final figures."""
        for key, value in self.as_dict().items():
            if key != "why":
                live.log_metric(f"budget/{key}", value, plot=False)


def auto_batch_size(n_train: int) -> int:
    """A power of two near n_train / 32, within 16..128 (never above the data itself)."""
    target = max(1, n_train // STEPS_PER_EPOCH_TARGET)
    power = 2 ** int(math.floor(math.log2(target))) if target > 1 else 1
    return max(1, min(MAX_AUTO_BATCH, max(MIN_AUTO_BATCH, power), n_train))


def step_floor(min_steps: int, batch: int) -> int:
    """`min_steps` counts steps of STEPS_BATCH images; a larger batch's gradient is less noisy, so it needs fewer:
    min_steps x sqrt(STEPS_BATCH / batch) (708 steps of 64 images, 500 of 128: 1.4x and 2x the images seen).
    Smaller batches (small data: 16) keep min_steps: they need every step they get."""
    return math.ceil(min_steps * math.sqrt(STEPS_BATCH / batch)) if batch > STEPS_BATCH else min_steps


def lr_at(lr: float, batch: int) -> float:
    """`train.lr` is the peak learning rate at STEPS_BATCH images; a larger batch takes lr x sqrt(batch /
    STEPS_BATCH), the square-root scaling rule for Adam-type optimisers (timm's `lr_base_scale: sqrt`; Malladi
    et al., 2022), so fewer, larger steps still move the weights as far. Smaller batches keep `lr`."""
    return lr * math.sqrt(batch / STEPS_BATCH) if batch > STEPS_BATCH else lr


def training_budget(cfg: TrainConfig, n_train: int, world: int = 1, unit: str = "images") -> Budget:
    """The batch size, epochs and patience for `n_train` training examples on `world` processes; `unit` names them
    in the explanation ("images", "texts")."""
    if n_train < 1:
        raise ValueError("training_budget: the training split is empty")
    per_rank = math.ceil(n_train / world)
    batch = auto_batch_size(per_rank) if cfg.batch_size == "auto" else min(cfg.batch_size, per_rank)
    steps_per_epoch = math.ceil(per_rank / batch)
    how_batch = f"batch {batch}" + (" (auto: ~1/32 of the split)" if cfg.batch_size == "auto" else "")
    if cfg.epochs == "auto":
        floor = step_floor(cfg.min_steps, batch)
        wanted = math.ceil(floor / steps_per_epoch)
        epochs = min(cfg.max_epochs, max(cfg.min_epochs, wanted))
        bound = (
            f"min_steps {cfg.min_steps}" + (f" ({floor} at batch {batch})" if floor != cfg.min_steps else "")
            if epochs == wanted
            else (f"min_epochs {cfg.min_epochs}" if epochs == cfg.min_epochs else f"max_epochs {cfg.max_epochs}")
        )
        how_epochs = f"{epochs} epochs (auto, set by {bound})"
    else:
        epochs = cfg.epochs
        how_epochs = f"{epochs} epochs (train.epochs)"
    if cfg.freeze_epochs >= epochs:
        raise ConfigError(f"train.freeze_epochs = {cfg.freeze_epochs} leaves none of the {epochs} epochs to tune")
    patience = max(5, epochs // 3) if cfg.patience == "auto" else cfg.patience
    lr = lr_at(cfg.lr, batch)
    why = (
        f"{n_train} training {unit}: {how_batch}, {steps_per_epoch} steps per epoch; {how_epochs}: "
        f"{epochs * steps_per_epoch} steps, {epochs * n_train} {unit} seen; peak lr {lr:.3g}"
        + (f" (train.lr {cfg.lr:g} at batch {STEPS_BATCH}, x sqrt({batch}/{STEPS_BATCH}))" if lr != cfg.lr else "")
        + f"; early stop after {patience} epochs without a better val loss"
    )
    return Budget(batch, epochs, steps_per_epoch, patience, n_train, why, lr)


def share_of(epochs: int | str, share: float, trained_epochs: int) -> int:
    """Epochs of a fine-tuning or distillation run: `epochs` as set, or under "auto" `share` of the epochs the
    trained model ran (at least 1)."""
    return max(1, round(share * trained_epochs)) if epochs == "auto" else int(epochs)
