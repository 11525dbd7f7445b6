"""Stage 2, augment: seeded offline augmentation of the training split (kornia).

Each training image is kept and joined by `copies` randomly rotated / shifted / scaled /
brightness-and-contrast-jittered versions of itself (mirrored only if `horizontal_flip`).
Validation and test splits are never augmented. Output, each written atomically:

    data/augmented/train.npz     x: uint8 (N * (1 + copies), H, W, C), y: int64
    plots/augment_preview.png    originals (left column) beside their augmented copies
"""

from __future__ import annotations

import logging
from pathlib import Path

import kornia.augmentation as K
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from lab2prod.console import ParamsFile, run_stage  # noqa: E402
from lab2prod.files import atomic_dir, atomic_file  # noqa: E402
from lab2prod.layout import PARAMS, WORKSPACE, Workspace  # noqa: E402
from lab2prod.settings import AugmentConfig, load_params  # noqa: E402

log = logging.getLogger("tasks.augment")  # not __name__: that is __main__ under python -m

BATCH = 2048  # images per augmentation call; bounds peak memory on large datasets
PREVIEW_COPIES = 6  # augmented copies shown beside each original in the preview


def build_augmenter(cfg: AugmentConfig) -> K.AugmentationSequential:
    """The random transform applied to each copy, from the settings."""
    ops: list[torch.nn.Module] = [
        K.RandomAffine(
            degrees=cfg.rotation_deg,
            translate=(cfg.shift, cfg.shift),
            scale=(cfg.scale_min, cfg.scale_max),
            padding_mode="border",  # replicate the edge: no black frame on light backgrounds
            p=1.0,
        )
    ]
    if cfg.brightness > 0 or cfg.contrast > 0:
        ops.append(K.ColorJitter(brightness=cfg.brightness, contrast=cfg.contrast, p=1.0))
    if cfg.horizontal_flip:
        ops.append(K.RandomHorizontalFlip(p=0.5))
    return K.AugmentationSequential(*ops)


def augment_images(images: np.ndarray, cfg: AugmentConfig) -> np.ndarray:
    """Return `copies` augmented versions of each uint8 (N, H, W, C) image, copy-major order."""
    if cfg.copies == 0 or len(images) == 0:
        return images[:0]
    torch.manual_seed(cfg.seed)  # kornia draws from torch's global generator
    augmenter = build_augmenter(cfg)
    out = []
    with torch.no_grad():
        for _ in range(cfg.copies):
            for start in range(0, len(images), BATCH):
                chunk = torch.from_numpy(images[start : start + BATCH]).permute(0, 3, 1, 2).float() / 255.0
                moved = augmenter(chunk).clamp(0.0, 1.0)
                out.append((moved * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def save_preview(originals: np.ndarray, copies: np.ndarray, n_copies: int, path: Path, n_rows: int) -> None:
    """A grid a person can check: each row one original, then its augmented copies."""
    n_rows = min(n_rows, len(originals))
    shown = min(n_copies, PREVIEW_COPIES)
    fig, axes = plt.subplots(n_rows, 1 + shown, figsize=(1.3 * (1 + shown), 1.3 * n_rows), squeeze=False)
    n = len(originals)
    for r in range(n_rows):
        row = [originals[r]] + [copies[c * n + r] for c in range(shown)]
        for c, img in enumerate(row):
            ax = axes[r, c]
            ax.imshow(
                img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255, interpolation="nearest"
            )
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title("original" if c == 0 else f"copy {c}", fontsize=8)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def augment(cfg: AugmentConfig, ws: Workspace = WORKSPACE) -> dict:
    """Write the augmented training set and its preview. Returns the stage summary."""
    with np.load(ws.prepared / "train.npz") as split:
        x, y = split["x"], split["y"]
    copies = augment_images(x, cfg)
    x_all = np.concatenate([x, copies])
    y_all = np.concatenate([y] + [y] * cfg.copies)
    with atomic_dir(ws.augmented) as tmp:
        np.savez(tmp / "train.npz", x=x_all, y=y_all)
    save_preview(x, copies, cfg.copies, ws.augment_preview, cfg.preview_images)
    summary = {"original": int(len(x)), "copies_per_image": cfg.copies, "total": int(len(x_all))}
    log.info("augment: %s; preview in %s", summary, ws.augment_preview)
    return summary


def main(params: ParamsFile = PARAMS) -> None:
    """Augment data/prepared/train.npz into data/augmented/ and draw plots/augment_preview.png."""
    augment(load_params(params).augment)


if __name__ == "__main__":
    run_stage(main)
