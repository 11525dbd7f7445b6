"""Stage 1, ingest: images in, validated shards of train/val/test out.

Sources: scikit-learn's embedded `digits`, or an image folder `<root>/<class>/<image>` on any fsspec
filesystem (local path, file://, s3://, gs://, ...), plus `extra_sources` (the feedback inbox).
Incremental: only files the ingest cache has not seen are read and decoded (by worker processes);
listing is the only step that touches every file. Splits are hash buckets of each image's content, so
they never move as data grows. Every file that cannot be used is quarantined with its reason (never
silently dropped): empty, not an image, truncated, decompression bomb, duplicate, conflicting labels.
Output, written atomically as one directory (format: lab2prod/dataset.py):

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

import fsspec
import numpy as np
import typer
from rich.progress import track

from lab2prod.console import ParamsFile, run_stage
from lab2prod.dataset import Sample, ShardWriter, SplitIndex
from lab2prod.errors import DataError
from lab2prod.files import atomic_dir, write_json
from lab2prod.ingest_cache import IngestCache
from lab2prod.layout import PARAMS, WORKSPACE
from lab2prod.settings import IngestConfig, load_params
from lab2prod.sources import (
    Candidate,
    Rejected,
    collect,
    decode_new,
    digits_candidates,
    list_folder,
    quarantine_files,
)
from lab2prod.splits import (
    SPLIT_RULE,
    achieved_fractions,
    check_class_sizes,
    check_splits,
    dataset_hash,
    drop_duplicates,
    hash_split,
)

log = logging.getLogger("tasks.ingest")  # not __name__: that is __main__ under python -m

CACHE_NAME = ".ingest-cache.sqlite"  # beside the output (data/.ingest-cache.sqlite): local, never versioned


def _gather(
    cfg: IngestConfig, cache: IngestCache, quarantine: Path
) -> tuple[list[str], list[Candidate], list[Rejected], dict]:
    """Class names (the main source's, then new ones from extra sources), every usable image, every
    rejected file, and how many files were listed and decoded anew."""
    classes: list[str] = []
    candidates: list[Candidate] = []
    rejected: list[Rejected] = []
    stats = {"listed": 0, "decoded": 0}
    sources = [] if cfg.source == "digits" else [(cfg.source, 2)]
    if cfg.source == "digits":
        candidates = digits_candidates(cfg, cache)
        classes = sorted({c.class_name for c in candidates})
        stats["listed"] = len(candidates)
    for extra in cfg.extra_sources:
        fs, root = fsspec.core.url_to_fs(extra)
        if not fs.isdir(root) or not fs.find(root):
            log.info("ingest: extra source %s is empty or absent; nothing added", extra)
            continue
        sources.append((extra, 1))
    for source, min_classes in sources:
        names, files, unusable = list_folder(cfg, source, min_classes)
        classes += [n for n in names if n not in classes]
        stats["listed"] += len(files) + len(unusable)
        stats["decoded"] += decode_new(cfg, source, files, cache)
        usable, bad = collect(files, cache)
        quarantine_files(source, bad, quarantine)
        if source != cfg.source:
            log.info("ingest: %d image(s) added from %s", len(usable), source)
        candidates, rejected = candidates + usable, rejected + unusable + bad
    return classes, candidates, rejected, stats


def ingest(cfg: IngestConfig, out_dir: Path = WORKSPACE.prepared, cache_path: Path | None = None) -> dict:
    """Build the prepared shards in `out_dir` (replaced atomically). Returns the stage summary.

    `cache_path`: the ingest cache (default: `.ingest-cache.sqlite` beside `out_dir`).
    """
    started = time.perf_counter()
    with atomic_dir(out_dir) as tmp, tempfile.TemporaryDirectory() as scratch:
        quarantine = tmp / "quarantine"
        quarantine.mkdir()
        cache_file = (cache_path or out_dir.parent / CACHE_NAME) if cfg.cache else Path(scratch) / CACHE_NAME
        cache = IngestCache(Path(cache_file))
        try:
            classes, candidates, rejected, stats = _gather(cfg, cache, quarantine)
            candidates, duplicates = drop_duplicates(candidates)
            rejected += duplicates
            check_class_sizes(candidates, classes, cfg.min_images_per_class, rejected)
            splits = hash_split(candidates, cfg)
            warnings = check_splits(splits, classes)
            label = {name: i for i, name in enumerate(classes)}
            shard_bytes = {}
            for name, members in splits.items():
                writer = ShardWriter(tmp / name, int(cfg.shard_mb * 2**20))
                plan = _plan(members, _previous(out_dir, name, meta_shape(cfg)), label, int(cfg.shard_mb * 2**20))
                to_write = [step for step in plan if isinstance(step, Candidate)]
                stored = iter(cache.stored([c.key for c in to_write]))
                for step in track(plan, description=f"ingest: writing {name} shards", transient=True):
                    if isinstance(step, Candidate):
                        ext, data = next(stored)
                        writer.write(
                            Sample(data, ext, label[step.class_name], step.class_name, step.sha256, step.source)
                        )
                    else:
                        writer.link(*step)
                writer.close()
                shard_bytes[name] = writer.total_bytes
        finally:
            cache.close()

        pixels = cfg.image_size * cfg.image_size
        sums = np.asarray([c.sums for c in splits["train"]], np.float64).reshape(-1, 2 * cfg.channels).sum(axis=0)
        n = max(1, len(splits["train"])) * pixels * 255.0
        mean = sums[: cfg.channels] / n
        std = np.sqrt(np.maximum(sums[cfg.channels :] / (n * 255.0) - mean**2, 0.0))
        counts = {
            name: {c: int(k) for c, k in zip(classes, _per_class(members, classes), strict=True)}
            for name, members in splits.items()
        }
        reasons = dict(Counter(r.reason for r in rejected))
        meta = {
            "source": cfg.source,
            "classes": classes,
            "image_shape": meta_shape(cfg),  # H, W, C
            "resize": cfg.resize,
            "format": "WebDataset tar shards + index.csv per split (lab2prod/dataset.py)",
            "counts": counts,
            "n_images": len(candidates),
            "split_rule": {"rule": SPLIT_RULE, "seed": cfg.seed, "val": cfg.val_fraction, "test": cfg.test_fraction},
            "achieved_fractions": achieved_fractions(splits, classes),
            "split_hashes": {
                name: dataset_hash([(c.sha256, c.class_name) for c in m], classes) for name, m in splits.items()
            },
            "dataset_hash": dataset_hash([(c.sha256, c.class_name) for c in candidates], classes),
            "stored_bytes": shard_bytes,
            "normalization": {
                "mean": mean.round(6).tolist(),
                "std": std.round(6).tolist(),
                "scale": "pixel / 255, then (x - mean) / std",
            },
            "quarantined": reasons,
            "warnings": warnings,
        }
        write_json(tmp / "meta.json", meta)
        write_json(quarantine / "report.json", {"counts": reasons, "files": [asdict(r) for r in rejected]})

    seconds = time.perf_counter() - started
    summary = {
        "images": meta["n_images"],
        "classes": len(classes),
        "split": {k: len(v) for k, v in splits.items()},
        "quarantined": reasons,
        "files_listed": stats["listed"],
        "files_decoded": stats["decoded"],
        "seconds": round(seconds, 2),
    }
    log.info("ingest: %s", summary)
    for warning in warnings:
        log.warning("ingest: %s", warning)
    if rejected:
        log.warning("ingest: %d file(s) set aside, see %s", len(rejected), out_dir / "quarantine/report.json")
    return summary


def meta_shape(cfg: IngestConfig) -> list[int]:
    return [cfg.image_size, cfg.image_size, cfg.channels]


def _previous(out_dir: Path, split: str, shape: list[int]) -> SplitIndex | None:
    """The same split of the previous ingest's output, if it has the same image shape."""
    try:
        previous = SplitIndex.read(out_dir, split)
    except (DataError, OSError, ValueError, KeyError):
        return None
    return previous if list(previous.image_shape) == shape else None


def _plan(
    members: list[Candidate], previous: SplitIndex | None, label: dict[str, int], shard_bytes: int
) -> list[Candidate | tuple[Path, list[tuple]]]:
    """What to write, in order: whole shards of the previous ingest kept as they are (every image in
    them still there, same label and source), then the images of changed shards, then new images.

    Adding images therefore writes only new shards (and rewrites a small last one): a re-ingest after
    a 1 % addition copies nothing, and DVC stores and pushes only the new shards.
    """
    if previous is None:
        return list(members)
    by_sha = {c.sha256: c for c in members}
    plan: list[Candidate | tuple[Path, list[tuple]]] = []
    placed: set[str] = set()
    n_shards = int(previous.shard.max()) + 1 if len(previous) else 0
    for k in range(n_shards):
        rows = np.flatnonzero(previous.shard == k)
        shard = previous.dir / f"shard-{k:05d}.tar"
        kept = [by_sha.get(previous.sha256[i]) for i in rows]
        unchanged = all(
            c is not None and label[c.class_name] == previous.labels[i] and c.source == previous.sources[i]
            for c, i in zip(kept, rows, strict=True)
        )
        small_last = k == n_shards - 1 and int(previous.size[rows].sum()) < shard_bytes // 2
        if unchanged and not small_last and shard.is_file():
            plan.append((shard, [previous.row(int(i)) for i in rows]))
        else:
            plan += [c for c in kept if c is not None]
        placed |= {c.sha256 for c in kept if c is not None}
    return plan + [c for c in members if c.sha256 not in placed]


def _per_class(members: list[Candidate], classes: list[str]) -> list[int]:
    counts = Counter(c.class_name for c in members)
    return [counts.get(name, 0) for name in classes]


def main(
    params: ParamsFile = PARAMS,
    out: Annotated[Path, typer.Option(help="Output directory (replaced atomically).")] = WORKSPACE.prepared,
) -> None:
    """Validate, split and shard the source images into data/prepared/."""
    ingest(load_params(params).ingest, out)


if __name__ == "__main__":
    run_stage(main)
