"""One training epoch through Lightning vs a plain PyTorch loop: same network, data, optimiser, batches.

Runs both in one process, alternating (L, P, L, P, ...) after one warm-up each, so drift in the
machine's speed hits both alike; prints each run, the medians and the per-pair ratio. The Lightning
figure is the whole `Trainer.fit` call for one epoch (set-up included; validation and checkpoints
off); the plain loop does the same steps by hand (forward, loss, backward, AdamW, one-cycle step,
running accuracy).

    python -m benchmarks.lightning_overhead --runs 5
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Annotated

import torch
import typer
from torch import nn

from lab2prod.core.files import read_json
from lab2prod.core.layout import Workspace
from lab2prod.core.settings import load_params
from models.export.machine import describe_machine as hardware
from models.nets.inputs import load_split, to_model_input
from models.nets.networks import ModelSpec
from models.nets.weights import WeightsSource
from models.training.budget import training_budget
from models.training.data import ArrayBatches, EpochBatches, ShardDataModule
from models.training.recipe import build_classifier, network_spec
from models.training.trainer import make_trainer
from models.training.training_data import n_training_images
from tasks.augment import augment
from tasks.ingest import ingest


def batch_size(ws: Workspace, params) -> int:
    """The batch size the train stage would use on this data (train.batch_size, or sized by the data)."""
    return training_budget(params.train, n_training_images(ws)).batch_size


def lightning_epoch(spec: ModelSpec, ws: Workspace, params) -> float:
    cfg = params.train
    model = build_classifier(cfg, spec.build(), spec.n_classes)
    dm = ShardDataModule(ws.prepared, batch_size(ws, params), cfg.seed, loader="memory")  # no augmentation: as the loop
    trainer = make_trainer(1, accelerator="cpu", enable_progress_bar=False, limit_val_batches=0, num_sanity_val_steps=0)
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    return time.perf_counter() - start


def plain_epoch(spec: ModelSpec, ws: Workspace, params) -> float:
    cfg = params.train
    start = time.perf_counter()
    x, y = load_split(ws.prepared, "train")
    net = spec.build().train()
    batches = ArrayBatches(x, y, EpochBatches(len(y), batch_size(ws, params), shuffle=True, seed=cfg.seed))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=len(batches), pct_start=0.25)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    correct = seen = 0
    for xb, yb in batches:
        logits = net(to_model_input(xb))
        loss = loss_fn(logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        correct += int((logits.argmax(1) == yb).sum())
        seen += len(yb)
    return time.perf_counter() - start


def main(
    runs: Annotated[int, typer.Option(help="Counted runs of each.")] = 5,
    params_file: Annotated[Path, typer.Option("--params", help="Settings file.")] = Path("params.yaml"),
) -> None:
    """Time one epoch through Lightning and through a plain loop, alternating."""
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    params = load_params(params_file)
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.under(Path(tmp))
        ingest(params.ingest, ws.prepared)
        augment(params.augment, ws)
        meta = read_json(ws.prepared / "meta.json")
        h, w, c = meta["image_shape"]
        spec = network_spec(params.train, meta, WeightsSource("none", "none"))
        n_images, batch = len(load_split(ws.prepared, "train")[1]), batch_size(ws, params)
        lightning_epoch(spec, ws, params), plain_epoch(spec, ws, params)  # warm-up
        pairs = [(lightning_epoch(spec, ws, params), plain_epoch(spec, ws, params)) for _ in range(runs)]

    lit, plain = [p[0] for p in pairs], [p[1] for p in pairs]
    ratios = [a / b for a, b in pairs]
    print(f"hardware: {hardware()}")
    print(
        f"one epoch: {n_images} images {h}x{w}x{c}, {params.train.architecture} width {params.train.width}, "
        f"batch {batch}; n = {runs} pairs after 1 warm-up pair"
    )
    print("run  lightning s  plain s  ratio")
    for i, (a, b) in enumerate(pairs):
        print(f"{i:>3}  {a:>11.3f}  {b:>7.3f}  {a / b:>5.3f}")
    print(
        f"median: lightning {statistics.median(lit):.3f} s, plain loop {statistics.median(plain):.3f} s, "
        f"ratio {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})"
    )


if __name__ == "__main__":
    typer.run(main)
