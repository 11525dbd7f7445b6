"""Assembling a prepared dataset from what the sources gave: gathering every source's usable and rejected
files, the shard plan that keeps unchanged shards of the previous ingest, writing a split's shards, and the
meta record (classes, counts, split rule, hashes, normalisation statistics). tasks/ingest.py runs them.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
from rich.progress import track

from lab2prod.core.errors import DataError
from lab2prod.core.settings import IngestConfig
from lab2prod.data.dataset import Sample, ShardWriter, SplitIndex
from lab2prod.data.ingest_cache import IngestCache
from lab2prod.data.sources import (
    Candidate,
    Rejected,
    collect,
    decode_new,
    digits_candidates,
    list_folder,
    quarantine_files,
)
from lab2prod.data.splits import SPLIT_RULE, achieved_fractions, dataset_hash

log = logging.getLogger("lab2prod.data.build")


def gather(
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


def meta_shape(cfg: IngestConfig) -> list[int]:
    return [cfg.image_size, cfg.image_size, cfg.channels]


def _previous(out_dir: Path, split: str, shape: list[int]) -> SplitIndex | None:
    """The same split of the previous ingest's output, if it has the same image shape."""
    try:
        previous = SplitIndex.read(out_dir, split)
    except (DataError, OSError, ValueError, KeyError):
        return None
    return previous if list(previous.image_shape) == shape else None


def plan_shards(
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


def write_split(
    name: str,
    members: list[Candidate],
    out: Path,
    previous_out: Path,
    label: dict[str, int],
    cfg: IngestConfig,
    cache: IngestCache,
) -> int:
    """One split's shards in `out/<name>`: the previous ingest's unchanged shards linked, the rest written
    from the cache. Returns the bytes stored."""
    shard_bytes = int(cfg.shard_mb * 2**20)
    writer = ShardWriter(out / name, shard_bytes)
    plan = plan_shards(members, _previous(previous_out, name, meta_shape(cfg)), label, shard_bytes)
    stored = iter(cache.stored([step.key for step in plan if isinstance(step, Candidate)]))
    for step in track(plan, description=f"ingest: writing {name} shards", transient=True):
        if isinstance(step, Candidate):
            ext, data = next(stored)
            writer.write(Sample(data, ext, label[step.class_name], step.class_name, step.sha256, step.source))
        else:
            writer.link(*step)
    writer.close()
    return writer.total_bytes


def build_meta(
    cfg: IngestConfig,
    classes: list[str],
    candidates: list[Candidate],
    splits: dict[str, list[Candidate]],
    shard_bytes: dict[str, int],
    reasons: dict[str, int],
    warnings: list[str],
) -> dict[str, Any]:
    """meta.json: what every later stage reads about the data. Normalisation statistics come from the
    per-image channel sums the cache keeps: no float copy of the dataset is made."""
    pixels = cfg.image_size * cfg.image_size
    sums = np.asarray([c.sums for c in splits["train"]], np.float64).reshape(-1, 2 * cfg.channels).sum(axis=0)
    n = max(1, len(splits["train"])) * pixels * 255.0
    mean = sums[: cfg.channels] / n
    std = np.sqrt(np.maximum(sums[cfg.channels :] / (n * 255.0) - mean**2, 0.0))
    counts = {
        name: {c: int(k) for c, k in zip(classes, _per_class(members, classes), strict=True)}
        for name, members in splits.items()
    }
    return {
        "source": cfg.source,
        "modality": "image",
        "classes": classes,
        "image_shape": meta_shape(cfg),  # H, W, C
        "resize": cfg.resize,
        "format": "WebDataset tar shards + index.csv per split (lab2prod/data/dataset.py)",
        "counts": counts,
        "n_images": len(candidates),
        "n_samples": len(candidates),
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
