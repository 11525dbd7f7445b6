"""Cleaning and splitting a dataset: one copy of each image, classes big enough, seeded stratified splits,
and an order-independent content hash."""

from __future__ import annotations

import hashlib

import numpy as np
from sklearn.model_selection import train_test_split

from lab2prod.errors import DataError
from lab2prod.settings import IngestConfig
from lab2prod.sources import Dataset, Rejected


def image_digests(images: np.ndarray) -> list[str]:
    return [hashlib.sha256(img.tobytes()).hexdigest() for img in images]


def drop_duplicates(ds: Dataset) -> tuple[Dataset, list[Rejected]]:
    """Keep one copy of pixel-identical images, so no image can sit in two splits.

    Copies that disagree on the label are all set aside: nobody can say which label is right.
    """
    digests = image_digests(ds.images)
    labels_of: dict[str, set[int]] = {}
    for digest, label in zip(digests, ds.labels, strict=True):
        labels_of.setdefault(digest, set()).add(int(label))
    keep, seen, rejected = [], {}, []
    for i, (digest, label) in enumerate(zip(digests, ds.labels, strict=True)):
        name = ds.classes[label]
        if len(labels_of[digest]) > 1:
            rejected.append(
                Rejected(
                    ds.sources[i],
                    name,
                    "conflicting_labels",
                    f"identical pixels appear under classes {sorted(labels_of[digest])}",
                )
            )
        elif digest in seen:
            rejected.append(Rejected(ds.sources[i], name, "duplicate", f"same pixels as {seen[digest]}"))
        else:
            seen[digest] = ds.sources[i]
            keep.append(i)
    idx = np.asarray(keep, np.int64)
    kept = Dataset(ds.images[idx], ds.labels[idx], ds.classes, [ds.sources[i] for i in keep])
    return kept, rejected


def check_class_sizes(labels: np.ndarray, classes: list[str], minimum: int) -> None:
    counts = np.bincount(labels, minlength=len(classes))
    small = {classes[i]: int(n) for i, n in enumerate(counts) if n < minimum}
    if small:
        listed = ", ".join(f"'{c}' has {n}" for c, n in small.items())
        raise DataError(
            f"too few usable images to split ({listed}; ingest.min_images_per_class = {minimum}). "
            "Add images to those classes, remove their folders, or see the quarantine report."
        )


def stratified_split(labels: np.ndarray, cfg: IngestConfig) -> dict[str, np.ndarray]:
    """Seeded, stratified train/val/test indices."""
    idx = np.arange(len(labels))
    rest, test = train_test_split(idx, test_size=cfg.test_fraction, stratify=labels, random_state=cfg.seed)
    val_share = cfg.val_fraction / (1.0 - cfg.test_fraction)
    train, val = train_test_split(rest, test_size=val_share, stratify=labels[rest], random_state=cfg.seed)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def dataset_hash(digests: list[str], labels: np.ndarray, classes: list[str]) -> str:
    """Order-independent content hash of (pixels, label) pairs and the class list."""
    h = hashlib.sha256("\n".join(classes).encode())
    for pair in sorted(f"{d}:{classes[int(y)]}" for d, y in zip(digests, labels, strict=True)):
        h.update(pair.encode())
    return h.hexdigest()
