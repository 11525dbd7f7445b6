"""What augment shows and stores: the preview image (each class beside augmented versions of it) and, when asked,
offline augmented copies as shards."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lab2prod.core.files import atomic_file  # noqa: E402
from lab2prod.core.settings import AugmentConfig  # noqa: E402
from lab2prod.data.dataset import Sample, ShardWriter, SplitIndex, encode_png  # noqa: E402
from models.training.augmentation import BATCH, augment_images  # noqa: E402

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
