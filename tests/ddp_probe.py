"""Run by tests/test_data.py as its own process: one epoch of real Lightning DDP on the CPU (gloo),
2 processes, recording the content hash of every training image each rank sees.

    python tests/ddp_probe.py <prepared dir> <out dir> <memory|stream>

Lightning's `ddp` strategy starts rank 1 by running this same command again.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.training.data import ShardDataModule  # noqa: E402
from models.training.trainer import make_trainer  # noqa: E402


class Recorder(L.LightningModule):
    def __init__(self, out: Path) -> None:
        super().__init__()
        self.layer, self.out, self.seen = torch.nn.Linear(1, 1), out, []

    def training_step(self, batch, batch_idx):
        x, _ = batch
        pixels = (x * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
        self.seen += [hashlib.sha256(img.numpy().tobytes()).hexdigest() for img in pixels]
        return self.layer(x.mean(dim=(1, 2, 3)).unsqueeze(1)).sum()

    def on_train_epoch_end(self) -> None:
        (self.out / f"rank{self.global_rank}.json").write_text(json.dumps(self.seen))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


if __name__ == "__main__":
    prepared, out, loader = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    data = ShardDataModule(prepared, batch_size=100, seed=3, loader=loader, workers=1)
    trainer = make_trainer(1, accelerator="cpu", devices=2, strategy="ddp", limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(Recorder(out), datamodule=data)
