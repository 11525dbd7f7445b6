"""Accuracy vs training seconds: the default recipe beside a plain CNN and beside the speed settings.

Every arm trains on the same splits (one ingest per seed) and is scored on the same test split; the arms
of one seed run one after the other, so they share the machine's state. Each arm starts from params.yaml
and changes only what its name says:

- `default`: params.yaml as it is (online augmentation, one-cycle AdamW, early stopping).
- `plain cnn`: the first version's recipe: `small_cnn`, 5 epochs, no augmentation.
- `epochs_30`: the recipe before training was sized by the data: batch 128, width 32, 30 epochs.
- `channels_last`, `compile`: the default recipe with `train.channels_last` / `train.compile` on.
- `steps_*`, `batch_128`, `width_*`: other training lengths, batch sizes and network widths than the default.
- `photo_augment`: random resized crops (35-100 % of the area) and mirroring, params.yaml's advice for photos.

    python -m benchmarks.recipe --seeds 3                                  # the embedded digits
    python -m benchmarks.recipe --seeds 3 --source /data/digits_5000 -S ingest.image_size=28
    python -m benchmarks.recipe --arms default,plain_cnn                   # a subset of the arms
    python -m benchmarks.recipe --seeds 1 --source /tmp/photos -S ingest.image_size=32 -S ingest.channels=3 \
        --arms default,photo_augment,epochs_30                          # benchmarks.panel photos

Prints one row per arm and seed (test accuracy, training seconds, epochs), then mean +- sd per arm and each
arm's training time as a share of the default's.
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from lab2prod.cli.options import parse_overrides
from lab2prod.core.console import setup_logging
from lab2prod.core.files import read_json
from lab2prod.core.layout import Workspace
from lab2prod.core.settings import apply_overrides, validate_params
from models.export.machine import describe_machine
from tasks.augment import augment
from tasks.evaluate import evaluate
from tasks.ingest import ingest
from tasks.train import train

NO_AUGMENTATION = {
    "augment.rotation_deg": 0.0,
    "augment.shift": 0.0,
    "augment.scale_min": 1.0,
    "augment.scale_max": 1.0,
    "augment.brightness": 0.0,
    "augment.contrast": 0.0,
    "augment.crop_scale_min": 1.0,
    "augment.offline_copies": 0,
}
# before training was sized by the data: batch 128, width 32 and a peak lr of 0.003 at that batch (train.lr is the
# rate at batch 32 now, scaled by sqrt(128 / 32) = 2)
OLD_DEFAULT = {"train.batch_size": 128, "train.patience": 10, "train.width": 32, "train.lr": 0.0015}
ARMS: dict[str, dict[str, Any]] = {
    "default": {},
    "plain_cnn": {"train.architecture": "small_cnn", "train.epochs": 5, **NO_AUGMENTATION},
    "epochs_10": {"train.epochs": 10, **OLD_DEFAULT},  # the default until the data sized the run
    "epochs_30": {"train.epochs": 30, **OLD_DEFAULT},  # the default before that
    "steps_500": {"train.min_steps": 500},
    "steps_2000": {"train.min_steps": 2000},
    "steps_500_lr01": {"train.min_steps": 500, "train.lr": 0.01},
    "batch_128": {"train.batch_size": 128},
    "width_16": {"train.width": 16},  # a quarter of the default network's MACs
    "width_24": {"train.width": 24},
    "width_24_steps_700": {"train.width": 24, "train.min_steps": 700},
    "width_24_steps_700_lr006": {"train.width": 24, "train.min_steps": 700, "train.lr": 0.006},
    "steps_700": {"train.min_steps": 700},
    "width_24_lr006": {"train.width": 24, "train.lr": 0.006},
    "width_24_steps_600_lr006": {"train.width": 24, "train.min_steps": 600, "train.lr": 0.006},
    "width_24_batch_128_steps_400_lr006": {
        "train.width": 24,
        "train.batch_size": 128,
        "train.min_steps": 400,
        "train.lr": 0.006,
    },
    # params.yaml's suggestion for photos: random resized crops and mirroring
    "photo_augment": {"augment.crop_scale_min": 0.35, "augment.horizontal_flip": True},
    "channels_last": {"train.channels_last": True},
    "compile": {"train.compile": True},
}


def run_arm(raw: dict, arm: str, seed: int, prepared: Workspace, work: Path) -> dict[str, Any]:
    """Augment, train and evaluate one arm on the seed's prepared data; training time alone is timed."""
    settings = {**ARMS[arm], "augment.seed": seed, "train.seed": seed}
    params = validate_params(apply_overrides(raw, settings))
    ws = Workspace.under(work / f"{arm}-{seed}")
    ws.prepared.parent.mkdir(parents=True, exist_ok=True)
    ws.prepared.symlink_to(prepared.prepared.resolve(), target_is_directory=True)
    augment(params.augment, ws)
    start = time.perf_counter()
    summary = train(params, ws)
    seconds = time.perf_counter() - start
    metrics = evaluate(params.evaluate, ws)
    return {
        "arm": arm,
        "seed": seed,
        "accuracy": metrics["accuracy"],
        "train_seconds": round(seconds, 2),
        "epochs": summary["epochs"],
        "batch_size": summary["batch_size"],
        "baseline_accuracy": metrics.get("baseline", {}).get("accuracy"),
        "n_test": metrics["n_test"],
    }


def main(
    seeds: Annotated[int, typer.Option(help="Seeds 0..N-1; each re-splits the data and re-trains every arm.")] = 3,
    arms: Annotated[str, typer.Option(help=f"Comma-separated, from: {', '.join(ARMS)}.")] = ",".join(ARMS),
    source: Annotated[str, typer.Option(help="ingest.source: 'digits' or an image folder.")] = "",
    params: Annotated[Path, typer.Option(help="Settings file every arm starts from.")] = Path("params.yaml"),
    setting: Annotated[list[str], typer.Option("--set", "-S", help="KEY=VALUE for every arm.")] = [],  # noqa: B006
    out: Annotated[Path, typer.Option(help="JSON result.")] = Path("benchmarks/results/recipe.json"),
) -> None:
    """Test accuracy and training seconds per arm, side by side on the same splits, over seeds."""
    setup_logging(logging.WARNING)
    chosen = [a.strip() for a in arms.split(",") if a.strip()]
    unknown = [a for a in chosen if a not in ARMS]
    if unknown:
        raise typer.BadParameter(f"unknown arm(s) {unknown}; choose from {list(ARMS)}", param_hint="--arms")
    raw = yaml.safe_load(params.read_text())
    common = parse_overrides(setting, params)
    if source:
        common["ingest.source"] = source
    raw = apply_overrides(raw, {**common, "ingest.extra_sources": []})
    validate_params(raw)  # fail fast on bad settings
    rows = []
    with tempfile.TemporaryDirectory(prefix="lab2prod-recipe-") as tmp:
        for seed in range(seeds):
            data = Workspace.under(Path(tmp) / f"data-{seed}")
            ingested = validate_params(apply_overrides(raw, {"ingest.seed": seed}))
            ingest(ingested.ingest, data.prepared)
            n_train = sum(read_json(data.prepared / "meta.json")["counts"]["train"].values())
            seed_raw = apply_overrides(raw, {"ingest.seed": seed})
            for arm in chosen:
                row = run_arm(seed_raw, arm, seed, data, Path(tmp))
                rows.append(row)
                print(
                    f"seed {seed}  {arm:14s} test {100 * row['accuracy']:6.2f} %  "
                    f"training {row['train_seconds']:7.1f} s  ({row['epochs']} epochs of batch {row['batch_size']}, "
                    f"{n_train} training images; baseline {100 * (row['baseline_accuracy'] or 0):.2f} %)",
                    flush=True,
                )
    print(f"\nhardware: {describe_machine()}; n = {seeds} seeds; test images per seed: {rows[0]['n_test']}")
    summary = {}
    for arm in chosen:
        acc = [100 * r["accuracy"] for r in rows if r["arm"] == arm]
        secs = [r["train_seconds"] for r in rows if r["arm"] == arm]
        summary[arm] = {
            "accuracy_mean": statistics.mean(acc),
            "accuracy_sd": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "train_seconds_mean": statistics.mean(secs),
        }
    base = summary.get("default", {}).get("train_seconds_mean")
    print(f"{'arm':14s} {'test accuracy %':>18s} {'training s':>11s} {'vs default':>11s}")
    for arm, s in summary.items():
        share = f"{s['train_seconds_mean'] / base:10.2f}x" if base else ""
        print(f"{arm:14s} {s['accuracy_mean']:9.2f} +- {s['accuracy_sd']:4.2f} {s['train_seconds_mean']:11.1f} {share}")
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"hardware": describe_machine(), "source": source or raw["ingest"]["source"], "settings": common}
    out.write_text(json.dumps({**result, "rows": rows, "summary": summary}, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    typer.run(main)
