"""Stage 2, augment: the augmentation policy, a preview of it, and offline copies only when asked for.

By default nothing is stored per image: training applies the policy per batch on its device
(online, lab2prod/augmentation.py), seeded and identical after a resume. `offline_copies: k` > 0
also writes k augmented copies of each training image as shards (small data only: the log shows
what they cost in bytes and seconds). Validation and test splits are never augmented. Output:

    data/augmented/policy.json          the resolved augment settings and seed training applies
    data/augmented/copies/              offline copies' shards + index.csv (only when offline_copies > 0)
    plots/augment_preview.png           one image of each class beside augmented versions of it
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lab2prod.augmentation import BATCH, POLICY_FILE, augment_images  # noqa: E402
from lab2prod.console import ParamsFile, run_stage  # noqa: E402
from lab2prod.dataset import Sample, ShardWriter, SplitIndex, encode_png  # noqa: E402
from lab2prod.files import atomic_dir, atomic_file, read_json, write_json  # noqa: E402
from lab2prod.layout import PARAMS, WORKSPACE, Workspace  # noqa: E402
from lab2prod.settings import AugmentConfig, load_params  # noqa: E402
from lab2prod.training_data import COPIES  # noqa: E402

log = logging.getLogger("tasks.augment")  # not __name__: that is __main__ under python -m

PREVIEW_COPIES = 6  # augmented versions shown beside each original in the preview


def save_preview(originals: np.ndarray, names: list[str], cfg: AugmentConfig, path: Path) -> None:
    """A grid a person can check: each row one class's image, then augmented versions of it."""
    versions = augment_images(originals, cfg, PREVIEW_COPIES, cfg.seed)
    n_rows = len(originals)
    fig, axes = plt.subplots(
        n_rows, 1 + PREVIEW_COPIES, figsize=(1.3 * (1 + PREVIEW_COPIES), 1.3 * n_rows), squeeze=False
    )
    for r in range(n_rows):
        row = [originals[r]] + [versions[c * n_rows + r] for c in range(PREVIEW_COPIES)]
        for c, img in enumerate(row):
            ax = axes[r, c]
            ax.imshow(
                img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255, interpolation="nearest"
            )
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title("original" if c == 0 else f"augmented {c}", fontsize=7)
            if c == 0:
                ax.set_ylabel(names[r], fontsize=8)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def write_copies(index: SplitIndex, classes: list[str], cfg: AugmentConfig, out: Path) -> int:
    """`offline_copies` augmented copies of each training image as shards; returns the bytes stored."""
    writer = ShardWriter(out, 256 * 2**20)
    for start in range(0, len(index), BATCH):
        idx = range(start, min(start + BATCH, len(index)))
        copies = augment_images(index.images(idx), cfg, cfg.offline_copies, cfg.seed * 1_000_003 + start)
        labels = np.tile(index.labels[start : idx.stop], cfg.offline_copies)
        sources = [index.sources[i] for i in idx] * cfg.offline_copies
        for img, label, source in zip(copies, labels, sources, strict=True):
            writer.write(Sample(encode_png(img), "png", int(label), classes[label], "", f"augmented:{source}"))
    writer.close()
    index.close()
    return writer.total_bytes


def augment(cfg: AugmentConfig, ws: Workspace = WORKSPACE) -> dict:
    """Write the policy, the preview and any offline copies. Returns the stage summary."""
    started = time.perf_counter()
    meta = read_json(ws.prepared / "meta.json")
    index = SplitIndex.read(ws.prepared, "train")
    stored = 0
    with atomic_dir(ws.augmented) as tmp:
        write_json(
            tmp / POLICY_FILE,
            {
                "online": True,
                "offline_copies": cfg.offline_copies,
                "image_size": meta["image_shape"][0],
                "settings": cfg.model_dump(mode="json"),
            },
        )
        if cfg.offline_copies:
            write_json(tmp / "meta.json", meta)  # the copies' shape and classes, read with the copies
            stored = write_copies(index, meta["classes"], cfg, tmp / COPIES)
    first_of_class = {}
    for i, label in enumerate(index.labels):
        first_of_class.setdefault(int(label), i)
    shown = sorted(first_of_class.items())[: cfg.preview_images]
    save_preview(index.images([i for _, i in shown]), [meta["classes"][c] for c, _ in shown], cfg, ws.augment_preview)
    index.close()
    summary = {
        "train_images": len(index),
        "online": True,
        "offline_copies": cfg.offline_copies,
        "offline_bytes": stored,
        "seconds": round(time.perf_counter() - started, 2),
    }
    if cfg.offline_copies:
        log.info(
            "augment: offline copies cost %.1f MB on disk (and in the DVC cache) and %.1f s; "
            "online augmentation (offline_copies: 0) costs neither",
            stored / 2**20,
            summary["seconds"],
        )
    log.info("augment: %s; preview in %s", summary, ws.augment_preview)
    return summary


def main(params: ParamsFile = PARAMS) -> None:
    """Write the augmentation policy to data/augmented/ and draw plots/augment_preview.png."""
    augment(load_params(params).augment)


if __name__ == "__main__":
    run_stage(main)
