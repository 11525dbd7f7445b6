"""The augmentation policy: the augment settings as one kornia module, applied per batch on the
training device (online, the default) or to write offline copies (only when asked for).

Random resized crop (`crop_scale_min` < 1) takes a random part of each image with 3:4..4:3 aspect and
scales it back to full size: the standard augmentation for photos. Rotation, shift and scale use an
edge-replicating affine (no black frame); brightness and contrast jitter; mirroring only if asked.
"""

from __future__ import annotations

import kornia.augmentation as K
import numpy as np
import torch

from lab2prod.core.settings import AugmentConfig

COPIES = "copies"  # data/augmented/<this>/: the offline copies' shards (augment.offline_copies > 0)
POLICY_FILE = "policy.json"
BATCH = 2048  # images per call when writing offline copies: bounds peak memory


def build_augmenter(cfg: AugmentConfig, size: int) -> K.AugmentationSequential:
    """The random transform, from the settings, for square images of side `size`."""
    ops: list[torch.nn.Module] = []
    if cfg.crop_scale_min < 1.0:
        ops.append(K.RandomResizedCrop((size, size), scale=(cfg.crop_scale_min, 1.0), ratio=(0.75, 4 / 3), p=1.0))
    ops.append(
        K.RandomAffine(
            degrees=cfg.rotation_deg,
            translate=(cfg.shift, cfg.shift),
            scale=(cfg.scale_min, cfg.scale_max),
            padding_mode="border",  # replicate the edge: no black frame on light backgrounds
            p=1.0,
        )
    )
    if cfg.brightness > 0 or cfg.contrast > 0:
        ops.append(K.ColorJitter(brightness=cfg.brightness, contrast=cfg.contrast, p=1.0))
    if cfg.horizontal_flip:
        ops.append(K.RandomHorizontalFlip(p=0.5))
    return K.AugmentationSequential(*ops)


def augment_images(images: np.ndarray, cfg: AugmentConfig, copies: int, seed: int) -> np.ndarray:
    """`copies` augmented versions of each uint8 (N, H, W, C) image, copy-major order, seeded."""
    if copies == 0 or len(images) == 0:
        return images[:0]
    torch.manual_seed(seed)  # kornia draws from torch's global generator
    augmenter = build_augmenter(cfg, images.shape[1])
    out = []
    with torch.no_grad():
        for _ in range(copies):
            for start in range(0, len(images), BATCH):
                chunk = torch.from_numpy(images[start : start + BATCH]).permute(0, 3, 1, 2).float() / 255.0
                moved = augmenter(chunk).clamp(0.0, 1.0)
                out.append((moved * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)
