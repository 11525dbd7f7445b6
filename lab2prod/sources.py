"""Where images come from: scikit-learn's embedded digits, or an image folder `<root>/<class>/**/<image>`
on any fsspec filesystem (local path, file://, s3://, gs://, ...). Every file that cannot be used
is set aside as a `Rejected` record with its reason, never silently dropped."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np
from PIL import Image
from rich.progress import track

from lab2prod.errors import DataError
from lab2prod.images import IMAGE_SUFFIXES, BadImage, decode_image
from lab2prod.settings import IngestConfig


@dataclass(frozen=True)
class Rejected:
    path: str
    label: str
    reason: str
    detail: str


@dataclass
class Dataset:
    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int64 (N,)
    classes: list[str]
    sources: list[str]  # where each image came from (path, or digits:<index>)


def load_digits_source(cfg: IngestConfig) -> Dataset:
    """scikit-learn's 8x8 digits (values 0..16), scaled to uint8 and resized to image_size."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    raw = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = np.empty((len(raw), cfg.image_size, cfg.image_size, cfg.channels), np.uint8)
    for i, img in enumerate(raw):
        pil = Image.fromarray(img, "L")
        if cfg.image_size != 8:
            pil = pil.resize((cfg.image_size, cfg.image_size), Image.Resampling.BILINEAR)
        if cfg.channels == 3:
            pil = pil.convert("RGB")
        images[i] = np.asarray(pil).reshape(cfg.image_size, cfg.image_size, cfg.channels)
    classes = [str(c) for c in digits.target_names]
    return Dataset(images, digits.target.astype(np.int64), classes, [f"digits:{i}" for i in range(len(raw))])


def load_image_folder(
    cfg: IngestConfig, quarantine_dir: Path | None, source: str | None = None, min_classes: int = 2
) -> tuple[Dataset, list[Rejected]]:
    """Read `<root>/<class>/**/<image>` from any fsspec URL; quarantine what cannot be used."""
    source = source or cfg.source
    fs, root = fsspec.core.url_to_fs(source)
    if not fs.isdir(root):
        raise DataError(
            f"ingest.source = {source!r}: not a directory. Point it at a folder with one "
            "subfolder per class, or set it to 'digits'."
        )
    entries = sorted(fs.ls(root, detail=True), key=lambda e: e["name"])
    class_dirs = [e["name"] for e in entries if e["type"] == "directory"]
    rejected = [
        Rejected(e["name"], "", "outside_class_folder", "files must sit in a <class>/ subfolder")
        for e in entries
        if e["type"] != "directory"
    ]
    classes = [d.rstrip("/").rsplit("/", 1)[-1] for d in class_dirs]
    if len(classes) < min_classes:
        raise DataError(f"{source}: found {len(classes)} class folder(s); need at least {min_classes}.")

    files = [(path, label) for label, d in enumerate(class_dirs) for path in sorted(fs.find(d))]
    images, labels, sources = [], [], []
    for path, label in track(files, description="ingest: decoding images", transient=True):
        name = classes[label]
        if Path(path).suffix.lower() not in IMAGE_SUFFIXES:
            rejected.append(Rejected(path, name, "not_an_image_extension", f"suffix {Path(path).suffix!r}"))
            continue
        data = fs.cat_file(path)
        try:
            images.append(decode_image(data, cfg.image_size, cfg.channels, cfg.max_image_pixels))
        except BadImage as bad:
            rejected.append(Rejected(path, name, bad.reason, bad.detail))
            if quarantine_dir is not None:
                target = quarantine_dir / "files" / name / Path(path).name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            continue
        labels.append(label)
        sources.append(path)
    shape = (0, cfg.image_size, cfg.image_size, cfg.channels)
    stacked = np.stack(images) if images else np.empty(shape, np.uint8)
    return Dataset(stacked, np.asarray(labels, np.int64), classes, sources), rejected


def merge_datasets(first: Dataset, more: Dataset) -> Dataset:
    """Append `more`, matching classes by name; classes only `more` has are added at the end."""
    classes = first.classes + [c for c in more.classes if c not in first.classes]
    remap = np.asarray([classes.index(c) for c in more.classes], np.int64)
    labels = remap[more.labels] if len(more.labels) else more.labels
    return Dataset(
        np.concatenate([first.images, more.images]),
        np.concatenate([first.labels, labels]),
        classes,
        first.sources + more.sources,
    )
