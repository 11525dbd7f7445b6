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

import logging
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import fsspec
import numpy as np
import typer

from lab2prod.console import ParamsFile, run_stage
from lab2prod.files import atomic_dir, write_json
from lab2prod.layout import PARAMS, WORKSPACE
from lab2prod.settings import IngestConfig, load_params
from lab2prod.sources import load_digits_source, load_image_folder, merge_datasets
from lab2prod.splits import check_class_sizes, dataset_hash, drop_duplicates, image_digests, stratified_split

log = logging.getLogger("tasks.ingest")  # not __name__: that is __main__ under python -m


def ingest(cfg: IngestConfig, out_dir: Path = WORKSPACE.prepared) -> dict:
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
            counts[name] = {c: int(n) for c, n in zip(ds.classes, per_class, strict=True)}
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

    summary = {
        "images": meta["n_images"],
        "classes": len(ds.classes),
        "split": {k: int(len(v)) for k, v in splits.items()},
        "quarantined": reasons,
    }
    log.info("ingest: %s", summary)
    if rejected:
        log.warning("ingest: %d file(s) set aside, see %s", len(rejected), out_dir / "quarantine/report.json")
    return summary


def main(
    params: ParamsFile = PARAMS,
    out: Annotated[Path, typer.Option(help="Output directory (replaced atomically).")] = WORKSPACE.prepared,
) -> None:
    """Validate and split the source images into data/prepared/."""
    ingest(load_params(params).ingest, out)


if __name__ == "__main__":
    run_stage(main)
