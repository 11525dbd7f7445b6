"""Training length from the data: batch size and epochs sized by the training split, and what a run does with it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lab2prod.core.errors import ConfigError
from lab2prod.core.layout import Workspace
from lab2prod.core.settings import validate_params
from models.training.budget import share_of, training_budget
from tests.conftest import TINY


@pytest.mark.parametrize(
    ("n_train", "batch", "steps_per_epoch", "epochs", "lr"),
    [
        (72, 16, 5, 200, 0.003),  # 3 classes x 40 images: 5 steps an epoch, 1000 steps in 200 epochs
        (1078, 32, 34, 30, 0.003),  # digits
        (3000, 64, 47, 16, 0.0042426),  # MNIST 5k: 708 steps of 64 (1000 at batch 32), lr 0.003 x sqrt(2)
        (50_000, 128, 391, 5, 0.006),  # large: min_epochs decides; lr 0.003 x sqrt(4)
        (10, 10, 1, 300, 0.003),  # tinier than a batch: the whole split per step, max_epochs caps it
    ],
)
def test_auto_budget_is_sized_by_the_data(
    n_train: int, batch: int, steps_per_epoch: int, epochs: int, lr: float
) -> None:
    b = training_budget(validate_params({}).train, n_train)
    assert (b.batch_size, b.steps_per_epoch, b.epochs) == (batch, steps_per_epoch, epochs)
    assert b.lr == pytest.approx(lr, rel=1e-4) and f"peak lr {lr:.3g}" in b.why
    assert b.patience == max(5, epochs // 3)
    assert f"{n_train} training images" in b.why and f"{epochs} epochs" in b.why


def test_fixed_settings_win_and_a_batch_never_exceeds_the_data() -> None:
    cfg = validate_params({"train": {"epochs": 7, "batch_size": 256, "patience": 3}}).train
    b = training_budget(cfg, 100)
    assert (b.batch_size, b.epochs, b.patience, b.steps_per_epoch) == (100, 7, 3, 1)
    two_gpus = training_budget(validate_params({}).train, 1078, world=2)  # 539 per process
    assert (two_gpus.batch_size, two_gpus.steps_per_epoch) == (16, 34)


def test_a_linear_probe_longer_than_the_planned_run_is_a_clear_error() -> None:
    cfg = validate_params({"train": {"freeze_epochs": 10, "max_epochs": 10}}).train
    with pytest.raises(ConfigError, match=r"train.freeze_epochs = 10 leaves none of the 10 epochs"):
        training_budget(cfg, 1000)


def test_compress_budgets_are_a_share_of_the_training_run() -> None:
    assert share_of("auto", 0.2, 30) == 6 and share_of("auto", 0.5, 30) == 15
    assert share_of("auto", 0.2, 2) == 1  # at least one epoch
    assert share_of(4, 0.2, 30) == 4 and share_of(0, 0.2, 30) == 0  # set explicitly: as set


def test_small_data_gets_enough_optimizer_steps_to_learn(tmp_path: Path, image_folder: Path) -> None:
    """36 images (3 classes), the old fixed recipe's batch of 128 would give one step an epoch; sized by the
    data, the run takes the steps it was planned for (Lightning's own count) and learns the classes."""
    from tasks.augment import augment
    from tasks.evaluate import evaluate
    from tasks.ingest import ingest
    from tasks.train import train

    train_settings = {k: v for k, v in TINY["train"].items() if k not in ("epochs", "batch_size")}
    params = validate_params(
        {
            **TINY,
            "ingest": {**TINY["ingest"], "source": str(image_folder)},
            "train": {**train_settings, "min_steps": 150, "lr": 0.003},
        }
    )
    ws = Workspace.under(tmp_path / "run")
    ingest(params.ingest, ws.prepared)
    augment(params.augment, ws)
    summary = train(params, ws)
    n_train = sum(json.loads((ws.prepared / "meta.json").read_text())["counts"]["train"].values())
    assert summary["batch_size"] == 16 < n_train
    steps = torch.load(ws.train_dir / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    planned = json.loads((ws.train_metrics / "metrics.json").read_text())["budget"]
    assert planned["steps"] >= 150 and planned["batch_size"] == 16
    assert steps >= 150 or summary["epochs"] < summary["planned_epochs"]  # all of it, unless stopped early
    metrics = evaluate(params.evaluate, ws)
    assert metrics["accuracy"] > max(0.6, metrics["verdict"]["chance_accuracy"])


def test_with_one_step_an_epoch_every_curve_has_one_row_per_epoch_at_its_epoch(
    tmp_path: Path, image_folder: Path
) -> None:
    """36 images and a batch larger than the train split: one optimizer step an epoch. DVCLive alone logged epoch 0
    at step 1 beside epoch 1 (its `if step:` reads a step of 0 as none); the curves' x is the epoch."""
    from tasks.augment import augment
    from tasks.ingest import ingest
    from tasks.train import train

    params = validate_params(
        {**TINY, "ingest": {**TINY["ingest"], "source": str(image_folder)}, "train": {**TINY["train"], "epochs": 4}}
    )
    ws = Workspace.under(tmp_path / "run")
    ingest(params.ingest, ws.prepared)
    augment(params.augment, ws)
    summary = train(params, ws)
    assert summary["epochs"] == 4
    steps = torch.load(ws.train_dir / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    assert steps == 4  # Lightning's own count: one step an epoch
    curves = list((ws.train_metrics / "plots/metrics").rglob("*.tsv"))
    assert {t.relative_to(ws.train_metrics / "plots/metrics").as_posix() for t in curves} == {
        "train/loss.tsv",
        "train/acc.tsv",
        "val/loss.tsv",
        "val/acc.tsv",
    }  # no curve of the epoch itself
    for tsv in curves:
        rows = [line.split("\t")[0] for line in tsv.read_text().splitlines()[1:]]
        assert rows == ["0", "1", "2", "3"], (tsv, rows)
