"""Does starting from other weights pay? Two measurements, side by side in one run, n seeds each.

1. Pretrain -> fine-tune vs from scratch, few labels: a timm backbone (`--backbone`, default resnet10t)
   is pretrained on one digit data set (scikit-learn's digits 0-4, every image), its weights saved to
   a safetensors file, then fine-tuned through `train.pretrained: <that file>` on another (digits
   5-9) with only k labelled images per class (k = 5, 10, 20), beside the same network from random
   weights with the same labels and settings, beside params.yaml's own network (small_cnn) from random
   weights and beside evaluate's baseline (an RBF SVC on raw pixels) fitted on the same images. Each network
   trains for the budget a user's run gets on that many images (`train.epochs: auto`, `batch_size: auto`:
   at least 1000 optimizer steps). All are scored on every 5-9 image not used for training.
2. Warm start from the champion vs from scratch: a built-in small_cnn "champion" is trained on half
   of the digits' training images; a retrain on all of them (the other half is the new data) starts
   once from the champion's weights (the code path of `train.pretrained: champion`) for a third (or
   less) of the epochs, once from random weights for all of them. Both scored on the same test images.

Networks are built by `models.training.recipe.initial_network` and trained by the project's ImageClassifier
(one-cycle AdamW, linear probe, backbone learning rate) through the project's Trainer set-up, from
in-memory tensors (no augmentation in either arm: the comparison is about the weights).

    python -m benchmarks.transfer --seeds 3
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import lightning as L
import numpy as np
import torch
import typer
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

from lab2prod.core.settings import validate_params
from models.export.machine import describe_machine
from models.nets.networks import backbone_config, transfer_weights
from models.nets.scoring import fit_baseline
from models.training.budget import training_budget
from models.training.classifier import ImageClassifier
from models.training.recipe import initial_network
from models.training.trainer import make_trainer

SIZE = 16  # digits are 8 x 8; ingest's default resizes them to 16 x 16
OLD_SHARE = 0.5  # warm start: the champion saw this share of the training images, the retrain sees all


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    d = load_digits()
    x = torch.from_numpy(d.images / 16.0).float().unsqueeze(1)
    x = torch.nn.functional.interpolate(x, (SIZE, SIZE), mode="bilinear", align_corners=False).clamp(0, 1)
    return x, torch.from_numpy(d.target).long()


def meta_for(classes: list[str], x: torch.Tensor) -> dict[str, Any]:
    return {
        "image_shape": [SIZE, SIZE, 1],
        "classes": classes,
        "normalization": {"mean": [float(x.mean())], "std": [float(x.std())]},
    }


def fit(
    net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int, epochs: int | None = None, **recipe: Any
) -> float:
    """Train with the project's recipe; returns the training seconds. `epochs` None: the length and batch size
    `train.epochs: auto` and `train.batch_size: auto` give this many images (models/training/budget.py: at least
    1000 optimizer steps), what a user's run on these images would get."""
    L.seed_everything(seed, workers=True, verbose=False)
    module = ImageClassifier(net, int(y.max()) + 1, weight_decay=5e-4, label_smoothing=0.05, **recipe)
    budget = training_budget(validate_params({"train": {"accelerator": "cpu"}}).train, len(x))
    batch = budget.batch_size if epochs is None else min(128, len(x))
    loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True)
    start = time.perf_counter()
    trainer = make_trainer(epochs or budget.epochs, accelerator="cpu", num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, loader)
    return time.perf_counter() - start


def svc_accuracy(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor) -> float:
    """evaluate's default baseline (an RBF SVC on raw pixels, `evaluate.baseline: svc`) on the same images."""
    cfg = validate_params({}).evaluate
    to_uint8 = lambda x: (255 * x).round().to(torch.uint8).numpy()  # noqa: E731 - fit_baseline's input
    model = fit_baseline(cfg, to_uint8(x_train), y_train.numpy())
    predicted = model.predict(to_uint8(x_test).reshape(len(x_test), -1).astype(np.float64) / 255.0)
    return float((predicted == y_test.numpy()).mean())


@torch.no_grad()
def accuracy(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((net.eval()(x).argmax(1) == y).float().mean())


def network(train: dict[str, Any], meta: dict[str, Any], scratch: Path) -> torch.nn.Module:
    params = validate_params({"train": {"accelerator": "cpu", **train}})
    return initial_network(params, meta, scratch)[1]


def few_labels(seed: int, backbone: str, input_size: int, shots: list[int], work: Path) -> list[dict[str, Any]]:
    x, y = digits()
    source, target = y < 5, y >= 5
    arch = {"architecture": backbone, "input_size": input_size}
    # pretrain on digits 0-4
    xs, ys = x[source], y[source]
    pre = network({**arch, "seed": seed}, meta_for([str(c) for c in range(5)], xs), work)
    cfg = backbone_config(backbone)  # pretrain with the statistics a pretrained backbone is fine-tuned with
    pre[0].mean.fill_(sum(cfg["mean"]) / 3)
    pre[0].std.fill_(sum(cfg["std"]) / 3)
    pre_s = fit(pre, xs, ys, seed=seed, lr=3e-3)  # the data-sized budget a user's run on these images gets
    weights = work / f"pretrained-{seed}.safetensors"
    save_file({k: v.contiguous() for k, v in pre[1].state_dict().items()}, str(weights))
    # fine-tune on digits 5-9 with k labels per class
    xt, yt = x[target], y[target] - 5
    meta = meta_for([str(c) for c in range(5, 10)], xt)
    rng = np.random.default_rng(seed)
    rows = []
    for k in shots:
        pick = np.concatenate([rng.permutation(np.flatnonzero(yt.numpy() == c))[:k] for c in range(5)])
        rest = np.setdiff1d(np.arange(len(yt)), pick)
        row: dict[str, Any] = {"seed": seed, "labels_per_class": k, "test_images": len(rest), "pretrain_s": pre_s}
        row["svc_acc"] = svc_accuracy(xt[pick], yt[pick], xt[rest], yt[rest])
        for arm, settings in (
            ("pretrained", {**arch, "pretrained": str(weights), "freeze_epochs": 5, "backbone_lr_scale": 0.3}),
            ("scratch", arch),
            ("default", {}),  # params.yaml's network (small_cnn) from random weights: what a user's run trains
        ):
            net = network({**settings, "seed": seed}, meta, work)
            recipe = {k2: v for k2, v in settings.items() if k2 in ("freeze_epochs", "backbone_lr_scale")}
            row[f"{arm}_s"] = fit(net, xt[pick], yt[pick], seed=seed, lr=3e-3, **recipe)
            row[f"{arm}_acc"] = accuracy(net, xt[rest], yt[rest])
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def warm_start(seed: int, epochs: int, warm_epochs: list[int], work: Path) -> dict[str, Any]:
    x, y = digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    test, train = order[: len(y) // 4], order[len(y) // 4 :]
    old = train[: int(OLD_SHARE * len(train))]
    classes = [str(c) for c in range(10)]
    meta = meta_for(classes, x[train])
    settings = {"architecture": "small_cnn", "seed": seed}
    champion = network(settings, meta, work)
    fit(champion, x[old], y[old], seed=seed, epochs=epochs, lr=3e-3)
    row: dict[str, Any] = {"seed": seed, "champion_acc": accuracy(champion, x[test], y[test])}
    scratch = network(settings, meta, work)
    row["scratch_epochs"] = epochs
    row["scratch_s"] = fit(scratch, x[train], y[train], seed=seed + 1, epochs=epochs, lr=3e-3)
    row["scratch_acc"] = accuracy(scratch, x[test], y[test])
    for e in warm_epochs:
        warm = network(settings, meta, work)
        transfer_weights(warm, champion, classes, classes)  # what train.pretrained: champion does
        row[f"warm{e}_s"] = fit(warm, x[train], y[train], seed=seed + 1, epochs=e, lr=1e-3)
        row[f"warm{e}_acc"] = accuracy(warm, x[test], y[test])
    print(json.dumps(row), flush=True)
    return row


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * sd:.1f}"


def main(
    seeds: Annotated[int, typer.Option(help="seeds per arm (each re-draws labels, splits and initial weights)")] = 3,
    backbone: Annotated[str, typer.Option(help="timm backbone for the few-label comparison")] = "resnet10t",
    input_size: Annotated[int, typer.Option(help="pixels the backbone resizes the 16 px digits to")] = 32,
    shots: Annotated[str, typer.Option(help="labels per class, comma-separated")] = "5,10,20",
    epochs: Annotated[int, typer.Option(help="from-scratch epochs in the warm-start comparison")] = 30,
    out: Annotated[Path, typer.Option(help="where the JSON results go")] = Path("benchmarks/results/transfer.json"),
) -> None:
    """Pretrained -> fine-tuned vs from scratch at few labels; warm start from a champion vs from scratch."""
    ks = [int(k) for k in shots.split(",")]
    warm_epochs = sorted({max(1, epochs // 10), max(1, epochs // 6), max(1, epochs // 3)})
    with tempfile.TemporaryDirectory() as tmp:
        few = [r for s in range(seeds) for r in few_labels(s, backbone, input_size, ks, Path(tmp))]
        warm = [warm_start(s, epochs, warm_epochs, Path(tmp)) for s in range(seeds)]
    machine = describe_machine()
    print(f"\n{machine}; n = {seeds} seeds")
    print(
        f"\n1. {backbone} at {input_size} px: pretrained on digits 0-4, fine-tuned on 5-9 (test accuracy %, mean ± sd)"
    )
    print("(each network trained for the data-sized budget of train.epochs/batch_size auto; SVC: evaluate's baseline)")
    print(
        "| labels per class | SVC, raw pixels | default small_cnn | backbone from scratch | pretrained -> fine-tuned "
        "| gain over scratch, points | pretrained vs SVC, points | fine-tune s |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k in ks:
        rows = [r for r in few if r["labels_per_class"] == k]
        gain = statistics.mean(r["pretrained_acc"] - r["scratch_acc"] for r in rows)
        over_svc = statistics.mean(r["pretrained_acc"] - r["svc_acc"] for r in rows)
        cells = [mean_sd([r[f"{arm}_acc"] for r in rows]) for arm in ("svc", "default", "scratch", "pretrained")]
        print(
            f"| {k} | {' | '.join(cells)} | {100 * gain:+.1f} | {100 * over_svc:+.1f} "
            f"| {statistics.mean(r['pretrained_s'] for r in rows):.1f} |"
        )
    print(f"\n2. small_cnn retrain on twice the data: warm start from the champion vs {epochs} epochs from scratch")
    print("| start | epochs | test accuracy % | training s |")
    print("|---|---:|---:|---:|")
    print(f"| the champion alone (half the data) | {epochs} | {mean_sd([r['champion_acc'] for r in warm])} | |")
    print(
        f"| random weights | {epochs} | {mean_sd([r['scratch_acc'] for r in warm])} "
        f"| {statistics.mean(r['scratch_s'] for r in warm):.1f} |"
    )
    for e in warm_epochs:
        print(
            f"| the champion's weights | {e} | {mean_sd([r[f'warm{e}_acc'] for r in warm])} "
            f"| {statistics.mean(r[f'warm{e}_s'] for r in warm):.1f} |"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "few_labels": few, "warm_start": warm}, indent=1))


if __name__ == "__main__":
    typer.run(main)
