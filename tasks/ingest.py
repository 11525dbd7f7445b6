"""Stage 1, ingest: images or texts in, validated shards of train/val/test out.

Sources: scikit-learn's embedded `digits`, an image folder `<root>/<class>/<image>`, or text (a folder
`<root>/<class>/*.txt` or a CSV/TSV/JSONL/Parquet table: lab2prod/data/text.py) on any fsspec filesystem
(local path, file://, s3://, gs://, ...), plus `extra_sources` (the feedback inbox).
Incremental: only files the ingest cache has not seen are read and decoded (by worker processes);
listing is the only step that touches every file. Splits are hash buckets of each image's content, so
they never move as data grows. Every file that cannot be used is quarantined with its reason (never
silently dropped): empty, not an image, truncated, decompression bomb, duplicate, conflicting labels.
Output, written atomically as one directory (format: lab2prod/data/dataset.py):

    data/prepared/{train,val,test}/shard-*.tar, index.csv
    data/prepared/meta.json               classes, shape, counts, achieved fractions, split rule,
                                          dataset hash, per-split content hashes, normalisation stats
    data/prepared/quarantine/report.json  one record per rejected file: path, class, reason, detail
    data/prepared/quarantine/files/       the rejected files themselves, for inspection
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from lab2prod.core.console import ParamsFile, run_stage
from lab2prod.core.files import atomic_dir, write_json
from lab2prod.core.layout import PARAMS, WORKSPACE
from lab2prod.core.settings import IngestConfig, load_params
from lab2prod.data.build import build_meta, gather, write_split
from lab2prod.data.ingest_cache import IngestCache
from lab2prod.data.splits import check_class_sizes, check_splits, drop_duplicates, hash_split
from lab2prod.data.text import build_text_dataset, detect_modality

log = logging.getLogger("tasks.ingest")  # not __name__: that is __main__ under python -m

CACHE_NAME = ".ingest-cache.sqlite"  # beside the output (data/.ingest-cache.sqlite): local, never versioned


def ingest(cfg: IngestConfig, out_dir: Path = WORKSPACE.prepared, cache_path: Path | None = None) -> dict:
    """Build the prepared shards in `out_dir` (replaced atomically). Returns the stage summary.

    `cache_path`: the ingest cache (default: `.ingest-cache.sqlite` beside `out_dir`).
    """
    started = time.perf_counter()
    modality = detect_modality(cfg)
    with atomic_dir(out_dir) as tmp, tempfile.TemporaryDirectory() as scratch:
        quarantine = tmp / "quarantine"
        quarantine.mkdir()
        if modality == "text":
            meta, rejected, stats = build_text_dataset(cfg, tmp)
        else:
            cache_file = (cache_path or out_dir.parent / CACHE_NAME) if cfg.cache else Path(scratch) / CACHE_NAME
            meta, rejected, stats = _images(cfg, tmp, out_dir, quarantine, IngestCache(Path(cache_file)))
        reasons, warnings = meta["quarantined"], meta["warnings"]
        write_json(tmp / "meta.json", meta)
        write_json(quarantine / "report.json", {"counts": reasons, "files": [asdict(r) for r in rejected]})

    summary = {
        "modality": modality,
        "texts" if modality == "text" else "images": meta["n_samples"],
        "classes": len(meta["classes"]),
        "split": {k: sum(v.values()) for k, v in meta["counts"].items()},
        "quarantined": reasons,
        "files_listed": stats["listed"],
        "files_decoded": stats["decoded"],
        "seconds": round(time.perf_counter() - started, 2),
    }
    log.info("ingest: %s", summary)
    for warning in warnings:
        log.warning("ingest: %s", warning)
    if rejected:
        log.warning("ingest: %d file(s) set aside, see %s", len(rejected), out_dir / "quarantine/report.json")
    return summary


def _images(cfg: IngestConfig, tmp: Path, out_dir: Path, quarantine: Path, cache: IngestCache) -> tuple:
    """The image ingest: (meta.json's record, every rejected file, {"listed", "decoded"})."""
    try:
        classes, candidates, rejected, stats = gather(cfg, cache, quarantine)
        candidates, duplicates = drop_duplicates(candidates)
        rejected += duplicates
        check_class_sizes(candidates, classes, cfg.min_images_per_class, rejected)
        splits = hash_split(candidates, cfg)
        warnings = check_splits(splits, classes)
        label = {name: i for i, name in enumerate(classes)}
        stored = {name: write_split(name, m, tmp, out_dir, label, cfg, cache) for name, m in splits.items()}
    finally:
        cache.close()
    reasons = dict(Counter(r.reason for r in rejected))
    return build_meta(cfg, classes, candidates, splits, stored, reasons, warnings), rejected, stats


def main(
    params: ParamsFile = PARAMS,
    out: Annotated[Path, typer.Option(help="Output directory (replaced atomically).")] = WORKSPACE.prepared,
) -> None:
    """Validate, split and shard the source images into data/prepared/."""
    ingest(load_params(params).ingest, out)


if __name__ == "__main__":
    run_stage(main)
