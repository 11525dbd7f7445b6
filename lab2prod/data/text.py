"""Text data in: a folder `<root>/<class>/*.txt` or a table (CSV, TSV, JSONL; Parquet with pyarrow) with a text
and a label column, local or any fsspec URL, into the same shards, splits and quarantine as images.

A text is stored as its UTF-8 bytes (`<key>.txt` in the tar shards), after Unicode NFC normalisation and
stripping; its content hash (of those bytes) decides its split, exactly as the pixels' hash does for an image,
so adding texts never moves one between train, val and test. Set aside with a reason, never dropped silently:
empty, not UTF-8, over `ingest.max_chars`, a file that is not .txt, and (in lab2prod/data/splits.py) exact
duplicates and duplicates with conflicting labels.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

import fsspec
import numpy as np

from lab2prod.core.errors import DataError
from lab2prod.core.settings import IngestConfig
from lab2prod.data.dataset import Sample, ShardWriter, SplitIndex
from lab2prod.data.sources import Candidate, Rejected, is_hidden, list_folder
from lab2prod.data.splits import (
    SPLIT_RULE,
    achieved_fractions,
    check_class_sizes,
    check_splits,
    dataset_hash,
    drop_duplicates,
    hash_split,
)

log = logging.getLogger("lab2prod.data.text")

TEXT_SUFFIXES = (".txt",)
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".parquet")


def detect_modality(cfg: IngestConfig) -> str:
    """`ingest.modality`, or for "auto": text for a table or a folder whose files are mostly .txt, else image."""
    if cfg.modality != "auto":
        return cfg.modality
    if cfg.source == "digits":
        return "image"
    if cfg.source.lower().endswith(TABLE_SUFFIXES):
        modality, why = "text", "a table"
    else:
        fs, root = fsspec.core.url_to_fs(cfg.source)
        if not fs.isdir(root):
            return "image"  # the image reader names the problem
        suffixes = Counter(Path(p).suffix.lower() for p in fs.find(root)[:2000] if not is_hidden(Path(p).name))
        n_text = sum(suffixes[s] for s in TEXT_SUFFIXES)
        modality = "text" if n_text > sum(suffixes.values()) / 2 else "image"
        why = f"{n_text} of the first {sum(suffixes.values())} files are .txt"
    log.info("ingest: modality %s (ingest.modality auto: %s)", modality, why)
    return modality


def clean(raw: bytes | str, max_chars: int) -> tuple[str | None, str, str]:
    """(the text, "", "") or (None, reason, detail): NFC-normalised and stripped; empty, undecodable, too long."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            return None, "not_utf8", f"byte {exc.start} is not UTF-8 ({exc.reason}); save the file as UTF-8"
    text = unicodedata.normalize("NFC", raw).strip()
    if not text:
        return None, "empty", "no text after stripping whitespace"
    if len(text) > max_chars:
        return None, "too_long", f"{len(text)} characters > ingest.max_chars = {max_chars}"
    return text, "", ""


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class TextGather:
    """Every usable text (as a Candidate keyed by its content hash; the text itself in `texts`) and every
    rejected one, from the main source and the extra sources (the feedback inbox), classes in order found."""

    def __init__(self, cfg: IngestConfig) -> None:
        self.cfg = cfg
        self.classes: list[str] = []
        self.candidates: list[Candidate] = []
        self.rejected: list[Rejected] = []
        self.texts: dict[str, str] = {}
        self.listed = 0

    def add(self, raw: bytes | str, class_name: str, where: str) -> None:
        self.listed += 1
        text, reason, detail = clean(raw, self.cfg.max_chars)
        if text is None:
            self.rejected.append(Rejected(where, class_name, reason, detail))
            return
        sha = text_sha256(text)
        self.texts[sha] = text
        self.candidates.append(Candidate(class_name, where, sha, sha, ()))
        if class_name not in self.classes:
            self.classes.append(class_name)

    def folder(self, source: str, min_classes: int) -> None:
        names, files, unusable = list_folder(self.cfg, source, min_classes, suffixes=TEXT_SUFFIXES)
        self.classes += [n for n in names if n not in self.classes]
        self.rejected += [
            Rejected(r.path, r.label, "not_a_text_extension", r.detail) if r.reason == "not_an_image_extension" else r
            for r in unusable
        ]
        self.listed += len(unusable)
        fs, _ = fsspec.core.url_to_fs(source)
        for f in files:
            try:
                data = fs.cat_file(f.path)
            except OSError as exc:
                self.listed += 1
                self.rejected.append(Rejected(f.path, f.class_name, "unreadable", str(exc)))
                continue
            self.add(data, f.class_name, f.path)

    def table(self, source: str) -> None:
        rows = read_table(source, self.cfg.text_column, self.cfg.label_column)
        for n, (text, label) in enumerate(rows, start=1):
            where = f"{source}#row{n}"
            if label is None or str(label).strip() == "":
                self.listed += 1
                self.rejected.append(Rejected(where, "", "no_label", f"empty {self.cfg.label_column!r}"))
            else:
                self.add("" if text is None else str(text), str(label).strip(), where)
        self.classes.sort()  # a table's classes in name order, as a folder's are
        found = len(set(c.class_name for c in self.candidates))
        if found < 2:
            raise DataError(f"{source}: {found} class(es) in column {self.cfg.label_column!r}; need at least 2.")


def gather_texts(cfg: IngestConfig) -> TextGather:
    found = TextGather(cfg)
    if cfg.source.lower().endswith(TABLE_SUFFIXES):
        found.table(cfg.source)
    else:
        found.folder(cfg.source, 2)
    for extra in cfg.extra_sources:
        fs, root = fsspec.core.url_to_fs(extra)
        if fs.isdir(root) and fs.find(root):
            before = len(found.candidates)
            found.folder(extra, 1)
            log.info("ingest: %d text(s) added from %s", len(found.candidates) - before, extra)
    return found


def read_table(source: str, text_column: str, label_column: str) -> list[tuple[Any, Any]]:
    """(text, label) per row of a CSV/TSV/JSONL/Parquet table; a DataError naming a missing column."""
    suffix = Path(source.lower()).suffix
    fs, path = fsspec.core.url_to_fs(source)
    if not fs.isfile(path):
        raise DataError(f"ingest.source = {source!r}: no such file. Point it at a table or a <class>/*.txt folder.")
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq  # optional: only for Parquet tables
        except ImportError:
            raise DataError(f"{source}: reading Parquet needs pyarrow (pip install pyarrow); or use CSV") from None
        with fs.open(path, "rb") as fh:
            table = pq.read_table(fh)
        columns, records = table.column_names, table.to_pylist()
    else:
        with fs.open(path, "rb") as fh:
            raw = fh.read()
        try:
            body = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise DataError(f"{source}: not UTF-8 (byte {exc.start}); save the table as UTF-8") from None
        if suffix in (".jsonl", ".ndjson"):
            records = []
            for n, line in enumerate(body.splitlines(), start=1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{source}: line {n} is not JSON ({exc.msg}); fix or remove it") from None
            columns = sorted({k for r in records if isinstance(r, dict) for k in r})
            records = [r if isinstance(r, dict) else {} for r in records]
        else:
            reader = csv.DictReader(io.StringIO(body, newline=""), delimiter="\t" if suffix == ".tsv" else ",")
            columns, records = list(reader.fieldnames or []), list(reader)
    for setting, column in (("ingest.text_column", text_column), ("ingest.label_column", label_column)):
        if column not in columns:
            raise DataError(f"{source}: no column {column!r} ({setting}); its columns are {columns}. Set {setting}.")
    return [(r.get(text_column), r.get(label_column)) for r in records]


def write_text_split(
    name: str, members: list[Candidate], out: Path, label: dict[str, int], texts: dict[str, str], shard_mb: float
) -> int:
    """One split's texts as tar shards (`<key>.txt`) + index.csv in `out/<name>`. Returns the bytes stored."""
    writer = ShardWriter(out / name, int(shard_mb * 2**20))
    for c in members:
        data = texts[c.sha256].encode("utf-8")
        writer.write(Sample(data, "txt", label[c.class_name], c.class_name, c.sha256, c.source))
    writer.close()
    return writer.total_bytes


def read_texts(prepared: Path | str, split: str) -> tuple[list[str], np.ndarray]:
    """A text split's texts and int64 labels, in index order."""
    index = SplitIndex.read(prepared, split)
    try:
        return [index.encoded(i).decode("utf-8") for i in range(len(index))], index.labels.copy()
    finally:
        index.close()


def _lengths(texts: list[str]) -> dict[str, float]:
    if not texts:
        return {}
    words = np.asarray([len(t.split()) for t in texts])
    chars = np.asarray([len(t) for t in texts])
    return {
        "chars_mean": round(float(chars.mean()), 1),
        "words_mean": round(float(words.mean()), 1),
        "words_p50": float(np.percentile(words, 50)),
        "words_p95": float(np.percentile(words, 95)),
        "words_max": int(words.max()),
    }


def text_stats(splits: dict[str, list[Candidate]], texts: dict[str, str]) -> dict[str, Any]:
    """Lengths per split, and how many of val's and test's words the training split has seen (lower case)."""
    by_split = {name: [texts[c.sha256] for c in members] for name, members in splits.items()}
    seen = {w for t in by_split["train"] for w in t.lower().split()}
    coverage = {}
    for name in ("val", "test"):
        words = [w for t in by_split[name] for w in t.lower().split()]
        coverage[name] = round(sum(w in seen for w in words) / max(1, len(words)), 4)
    return {
        "lengths": {name: _lengths(t) for name, t in by_split.items()},
        "train_vocabulary": len(seen),
        "word_coverage_by_train": coverage,
    }


def build_text_dataset(cfg: IngestConfig, out: Path) -> tuple[dict[str, Any], list[Rejected], dict[str, int]]:
    """The text counterpart of the image ingest: gather, de-duplicate, split by content hash, write the shards
    into `out`. Returns (meta.json's record, every rejected text, {"listed": n})."""
    found = gather_texts(cfg)
    candidates, duplicates = drop_duplicates(found.candidates, "texts")
    rejected = found.rejected + duplicates
    check_class_sizes(candidates, found.classes, cfg.min_images_per_class, rejected)
    splits = hash_split(candidates, cfg)
    warnings = check_splits(splits, found.classes)
    label = {name: i for i, name in enumerate(found.classes)}
    stored = {name: write_text_split(name, m, out, label, found.texts, cfg.shard_mb) for name, m in splits.items()}
    counts = {s: Counter(c.class_name for c in m) for s, m in splits.items()}
    pairs, classes = [(c.sha256, c.class_name) for c in candidates], found.classes
    meta = {
        "source": cfg.source,
        "modality": "text",
        "classes": found.classes,
        "format": "WebDataset tar shards (<key>.txt, UTF-8) + index.csv per split (lab2prod/data/text.py)",
        "counts": {s: {name: int(c.get(name, 0)) for name in found.classes} for s, c in counts.items()},
        "n_samples": len(candidates),
        "split_rule": {"rule": SPLIT_RULE.replace("pixel", "text"), "seed": cfg.seed, "val": cfg.val_fraction},
        "achieved_fractions": achieved_fractions(splits, found.classes),
        "split_hashes": {s: dataset_hash([(c.sha256, c.class_name) for c in m], classes) for s, m in splits.items()},
        "dataset_hash": dataset_hash(pairs, found.classes),
        "stored_bytes": stored,
        "text": text_stats(splits, found.texts),
        "quarantined": dict(Counter(r.reason for r in rejected)),
        "warnings": warnings,
    }
    meta["split_rule"]["test"] = cfg.test_fraction
    return meta, rejected, {"listed": found.listed, "decoded": found.listed}
