"""Stage 1, ingest: images in, validated stratified uint8 splits out.

Sources: scikit-learn's embedded `digits`, or an image folder `<root>/<class>/<image>` on any fsspec
filesystem (local path, file://, s3://, gs://, ...). Every file that cannot be used is quarantined
with its reason (never silently dropped): empty, not an image, truncated, decompression bomb,
duplicate. Output, written atomically as one directory:

    data/prepared/{train,val,test}.npz   x: uint8 (N, H, W, C), y: int64 (N,)
    data/prepared/meta.json               classes, shape, counts, dataset hash, normalisation stats
    data/prepared/quarantine/report.json  one record per rejected file: path, class, reason, detail
    data/prepared/quarantine/files/       the rejected files themselves, for inspection
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import fsspec
import numpy as np
import typer
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from rich.progress import track
from sklearn.model_selection import train_test_split

from tasks.artifacts import atomic_dir, write_json
from tasks.config import IngestConfig, load_params
from tasks.logs import DataError, stage_entry

log = logging.getLogger("tasks.ingest")  # not __name__: that is __main__ under python -m

OUT_DIR = Path("data/prepared")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
SPLITS = ("train", "val", "test")


class BadImage(Exception):
    """A file that cannot be used as an image; `reason` is a stable short code for the report."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


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


# ---------------------------------------------------------------------------------------------
# Decoding and validation
# ---------------------------------------------------------------------------------------------

def decode_image(data: bytes, size: int, channels: int, max_pixels: int) -> np.ndarray:
    """Decode, validate and resize one image file's bytes to uint8 (size, size, channels)."""
    if not data:
        raise BadImage("empty_file", "the file has zero bytes")
    # PIL's own bomb guard: an error above 2x the limit, a warning above 1x; we make both errors.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    previous_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage("decompression_bomb", str(exc)) from None
    except UnidentifiedImageError:
        raise BadImage("not_an_image", "no image format recognises these bytes") from None
    except (OSError, SyntaxError, ValueError) as exc:  # PIL reports truncation and corruption so
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise BadImage(reason, str(exc)) from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous_limit
    img = ImageOps.exif_transpose(img).convert("L" if channels == 1 else "RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8).reshape(size, size, channels)


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------

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


def load_image_folder(cfg: IngestConfig, quarantine_dir: Path | None, source: str | None = None,
                      min_classes: int = 2) -> tuple[Dataset, list[Rejected]]:
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
        for e in entries if e["type"] != "directory"
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


# ---------------------------------------------------------------------------------------------
# Cleaning and splitting
# ---------------------------------------------------------------------------------------------

def merge_datasets(first: Dataset, more: Dataset) -> Dataset:
    """Append `more`, matching classes by name; classes only `more` has are added at the end."""
    classes = first.classes + [c for c in more.classes if c not in first.classes]
    remap = np.asarray([classes.index(c) for c in more.classes], np.int64)
    labels = remap[more.labels] if len(more.labels) else more.labels
    return Dataset(np.concatenate([first.images, more.images]), np.concatenate([first.labels, labels]),
                   classes, first.sources + more.sources)


def image_digests(images: np.ndarray) -> list[str]:
    return [hashlib.sha256(img.tobytes()).hexdigest() for img in images]


def drop_duplicates(ds: Dataset) -> tuple[Dataset, list[Rejected]]:
    """Keep one copy of pixel-identical images, so no image can sit in two splits.

    Copies that disagree on the label are all set aside: nobody can say which label is right.
    """
    digests = image_digests(ds.images)
    labels_of: dict[str, set[int]] = {}
    for digest, label in zip(digests, ds.labels):
        labels_of.setdefault(digest, set()).add(int(label))
    keep, seen, rejected = [], {}, []
    for i, (digest, label) in enumerate(zip(digests, ds.labels)):
        name = ds.classes[label]
        if len(labels_of[digest]) > 1:
            rejected.append(Rejected(ds.sources[i], name, "conflicting_labels",
                                     f"identical pixels appear under classes {sorted(labels_of[digest])}"))
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
    for pair in sorted(f"{d}:{classes[int(y)]}" for d, y in zip(digests, labels)):
        h.update(pair.encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------

def ingest(cfg: IngestConfig, out_dir: Path = OUT_DIR) -> dict:
    """Build the prepared splits in `out_dir` (replaced atomically). Returns the stage summary."""
    with atomic_dir(out_dir) as tmp:
        quarantine = tmp / "quarantine"
        quarantine.mkdir()
        if cfg.source == "digits":
            ds, rejected = load_digits_source(cfg), []
        else:
            ds, rejected = load_image_folder(cfg, quarantine)
        for extra in cfg.extra_sources:
            fs, root = fsspec.core.url_to_fs(extra)
            if not fs.isdir(root) or not fs.find(root):
                log.info("ingest: extra source %s is empty or absent; nothing added", extra)
                continue
            more, more_rejected = load_image_folder(cfg, quarantine, extra, min_classes=1)
            log.info("ingest: %d image(s) added from %s", len(more.labels), extra)
            ds, rejected = merge_datasets(ds, more), rejected + more_rejected
        ds, duplicates = drop_duplicates(ds)
        rejected += duplicates
        check_class_sizes(ds.labels, ds.classes, cfg.min_images_per_class)
        splits = stratified_split(ds.labels, cfg)

        counts: dict[str, dict[str, int]] = {}
        for name, idx in splits.items():
            np.savez(tmp / f"{name}.npz", x=ds.images[idx], y=ds.labels[idx])
            per_class = np.bincount(ds.labels[idx], minlength=len(ds.classes))
            counts[name] = {c: int(n) for c, n in zip(ds.classes, per_class)}
        train_pixels = ds.images[splits["train"]].astype(np.float64) / 255.0
        reasons = dict(Counter(r.reason for r in rejected))
        meta = {
            "source": cfg.source,
            "classes": ds.classes,
            "image_shape": list(ds.images.shape[1:]),  # H, W, C
            "layout": "x: uint8 (N, H, W, C); y: int64 class index into `classes`",
            "counts": counts,
            "n_images": int(len(ds.labels)),
            "dataset_hash": dataset_hash(image_digests(ds.images), ds.labels, ds.classes),
            "normalization": {
                "mean": train_pixels.mean(axis=(0, 1, 2)).round(6).tolist(),
                "std": train_pixels.std(axis=(0, 1, 2)).round(6).tolist(),
                "scale": "pixel / 255, then (x - mean) / std",
            },
            "quarantined": reasons,
        }
        write_json(tmp / "meta.json", meta)
        write_json(quarantine / "report.json", {"counts": reasons, "files": [asdict(r) for r in rejected]})

    summary = {"images": meta["n_images"], "classes": len(ds.classes),
               "split": {k: int(len(v)) for k, v in splits.items()}, "quarantined": reasons}
    log.info("ingest: %s", summary)
    if rejected:
        log.warning("ingest: %d file(s) set aside, see %s", len(rejected), out_dir / "quarantine/report.json")
    return summary


@stage_entry
def main(params: Annotated[Path, typer.Option(help="Settings file to read.")] = Path("params.yaml"),
         out: Annotated[Path, typer.Option(help="Output directory (replaced atomically).")] = OUT_DIR) -> None:
    """Validate and split the source images into data/prepared/."""
    ingest(load_params(params).ingest, out)


if __name__ == "__main__":
    typer.run(main)
