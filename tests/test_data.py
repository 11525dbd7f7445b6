"""The training data paths: in-memory and streaming loaders draw the same seeded batches, an epoch is
cut exactly across DDP ranks (real 2-process DDP on the CPU), online augmentation is seeded per step."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lab2prod.core.settings import validate_params
from lab2prod.data.dataset import SplitBatches, SplitIndex
from models.nets.inputs import load_split, torch_top1
from models.nets.networks import build_network
from models.training.augmentation import build_augmenter
from models.training.data import EpochBatches, ShardDataModule
from tasks.ingest import ingest
from tests.conftest import ROOT, TINY


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "prepared"
    ingest(validate_params(TINY).ingest, out)
    return out


def batches(dm: ShardDataModule, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    dm.trainer = SimpleNamespace(current_epoch=epoch, training=False)  # what the module reads of a Trainer
    return list(dm.train_dataloader())


def test_memory_and_stream_loaders_give_the_same_seeded_batches(prepared: Path) -> None:
    memory = ShardDataModule(prepared, 64, seed=5, loader="memory")
    stream = ShardDataModule(prepared, 64, seed=5, loader="stream", workers=1)
    memory.setup("fit"), stream.setup("fit")
    assert (memory.mode, stream.mode) == ("memory", "stream")
    a, b = batches(memory, 0), batches(stream, 0)
    assert len(a) == len(b) == len(memory.train_dataloader())
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(batches(memory, 1)[0][0], a[0][0])  # a new order each epoch
    assert torch.equal(batches(memory, 0)[0][0], a[0][0])  # the same order for the same epoch (resume)
    seen = torch.cat([x for x, _ in a])
    assert len(seen) == len(SplitIndex.read(prepared, "train"))  # every image once


def test_auto_streams_above_the_memory_limit(prepared: Path) -> None:
    small = ShardDataModule(prepared, 64, seed=0, memory_limit_mb=1)
    small.setup("fit")
    tiny = ShardDataModule(prepared, 64, seed=0, memory_limit_mb=0)
    tiny.setup("fit")
    assert small.mode == "memory" and tiny.mode == "stream"


def test_every_rank_gets_the_same_number_of_batches_and_together_all_samples() -> None:
    for n, world, size in [(1085, 2, 128), (1001, 3, 100), (7, 2, 4)]:
        shares = [list(EpochBatches(n, size, shuffle=True, seed=1, rank_world=(r, world))) for r in range(world)]
        assert len({len(s) for s in shares}) == 1, (n, world)
        everything = np.concatenate([b for s in shares for b in s])
        assert sorted(everything.tolist()) == list(range(n))


def test_online_augmentation_is_seeded_by_step_and_only_in_training(prepared: Path) -> None:
    cfg = validate_params(TINY).augment
    dm = ShardDataModule(prepared, 64, seed=0, loader="memory", augment=build_augmenter(cfg, 8), augment_seed=7)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    dm.trainer = SimpleNamespace(training=True, global_step=3, current_epoch=0)
    first = dm.on_after_batch_transfer((x, y), 0)[0]
    again = dm.on_after_batch_transfer((x, y), 0)[0]
    dm.trainer = SimpleNamespace(training=True, global_step=4, current_epoch=0)
    other = dm.on_after_batch_transfer((x, y), 0)[0]
    dm.trainer = SimpleNamespace(training=False, global_step=4, current_epoch=0)
    plain = dm.on_after_batch_transfer((x, y), 0)[0]
    assert torch.equal(first, again) and not torch.equal(first, other)  # resumed at step 3: the same batch
    assert torch.equal(plain, x.permute(0, 3, 1, 2).float() / 255)  # validation is never augmented
    assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0


@pytest.mark.parametrize("loader", ["memory", "stream"])
def test_ddp_two_cpu_processes_see_disjoint_halves_of_the_train_split(
    prepared: Path, tmp_path: Path, loader: str
) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "tests/ddp_probe.py"), str(prepared), str(tmp_path), loader],
        check=True,
        cwd=tmp_path,
        timeout=300,
        capture_output=True,
    )
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    train = SplitIndex.read(prepared, "train").sha256
    assert all(abs(len(r) - len(train) / 2) <= 1 for r in ranks)  # an even share each
    assert not set(ranks[0]) & set(ranks[1])  # disjoint
    assert sorted(ranks[0] + ranks[1]) == sorted(train)  # together exactly the train split, no repeats


def test_scoring_streams_a_split_batch_by_batch_with_the_same_answers(prepared: Path) -> None:
    x, y = load_split(prepared, "test")
    batches = SplitBatches(prepared, "test", batch_size=64)
    assert len(batches) == len(x) and np.array_equal(batches.labels, y.numpy())
    seen = list(batches)
    assert max(len(b) for b in seen) == 64 and np.array_equal(np.concatenate(seen), x.numpy())  # in order
    assert np.array_equal(batches.first(7), x[:7].numpy())
    keep = np.arange(len(x)) % 3 == 0
    some = SplitBatches(prepared, "test", batch_size=50, keep=keep)
    assert np.array_equal(np.concatenate(list(some)), x.numpy()[keep])
    assert np.array_equal(some.labels, y.numpy()[keep])
    torch.manual_seed(0)
    net = build_network("small_cnn", 1, 10, 8, 0.0, [0.3], [0.3])
    assert np.array_equal(torch_top1(net, batches), torch_top1(net, x))
