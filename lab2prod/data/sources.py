"""Where images come from: scikit-learn's embedded digits, or an image folder `<root>/<class>/**/<image>`
on any fsspec filesystem (local path, file://, s3://, gs://, ...).

Listing a folder is the only step that touches every file; a file whose identity (path, size, and
mtime or ETag) is in the ingest cache is not read again. New files are read and decoded by a pool of
worker processes, a batch of files per task (fsspec fetches a batch concurrently from a bucket).
Every file that cannot be used is a `Rejected` record with its reason, never silently dropped.
"""

from __future__ import annotations

import hashlib
import io
import logging
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np
from PIL import Image
from rich.progress import Progress

from lab2prod.core.errors import DataError
from lab2prod.core.settings import IngestConfig
from lab2prod.data.fingerprint import file_stamp
from lab2prod.data.images import DECODER_VERSION, IMAGE_SUFFIXES, BadImage, prepare_image
from lab2prod.data.ingest_cache import IngestCache, Outcome, cache_key

log = logging.getLogger(__name__)

FILES_PER_TASK = 32  # files a worker reads and decodes per task: amortises inter-process traffic


@dataclass(frozen=True)
class Rejected:
    path: str
    label: str
    reason: str
    detail: str


@dataclass(frozen=True)
class Candidate:
    """A usable image: its class, where it came from, and its outcome's key in the ingest cache."""

    class_name: str
    source: str
    key: str
    sha256: str
    sums: tuple[float, ...]


@dataclass(frozen=True)
class SourceFile:
    path: str
    class_name: str
    key: str


def settings_key(cfg: IngestConfig) -> str:
    """The settings an outcome depends on: change one and every file is decoded again."""
    return "|".join(
        str(v)
        for v in (
            cfg.image_size,
            cfg.channels,
            cfg.resize,
            cfg.encoding,
            cfg.quality,
            cfg.max_image_pixels,
            f"decoder{DECODER_VERSION}",
        )
    )


def list_folder(
    cfg: IngestConfig, source: str, min_classes: int = 2, suffixes: tuple[str, ...] = IMAGE_SUFFIXES
) -> tuple[list[str], list[SourceFile], list[Rejected]]:
    """Class names, every file under `<source>/<class>/` with its cache key, and the files whose suffix is not
    one of `suffixes` (images' by default)."""
    fs, root = fsspec.core.url_to_fs(source)
    if not fs.isdir(root):
        raise DataError(
            f"ingest.source = {source!r}: not a directory. Point it at a folder with one "
            "subfolder per class, or set it to 'digits'."
        )
    entries = sorted(fs.ls(root, detail=True), key=lambda e: e["name"])
    hidden = [e for e in entries if is_hidden(e["name"].rstrip("/").rsplit("/", 1)[-1])]
    entries = [e for e in entries if e not in hidden]
    class_dirs = [e["name"] for e in entries if e["type"] == "directory"]
    rejected = [
        Rejected(e["name"], "", "hidden", "a hidden entry (.ipynb_checkpoints, .DS_Store, ...): not a class, skipped")
        for e in hidden
    ]
    rejected += [
        Rejected(e["name"], "", "outside_class_folder", "files must sit in a <class>/ subfolder")
        for e in entries
        if e["type"] != "directory"
    ]
    if len(class_dirs) < min_classes:
        raise DataError(f"{source}: found {len(class_dirs)} class folder(s); need at least {min_classes}.")
    skey, files = settings_key(cfg), []
    names = [d.rstrip("/").rsplit("/", 1)[-1] for d in class_dirs]
    for d, name in zip(class_dirs, names, strict=True):
        for path, info in sorted(fs.find(d, detail=True).items()):
            link = _link_problem(fs, path, info)
            if any(is_hidden(part) for part in path[len(d.rstrip("/")) :].split("/")):
                rejected.append(Rejected(path, name, "hidden", "inside a hidden folder or a hidden file: skipped"))
            elif link:
                rejected.append(Rejected(path, name, *link))
            elif Path(path).suffix.lower() not in suffixes:
                rejected.append(Rejected(path, name, "not_an_image_extension", f"suffix {Path(path).suffix!r}"))
            else:
                files.append(SourceFile(path, name, cache_key(skey, fs.unstrip_protocol(path), file_stamp(info))))
    return names, files, rejected


def is_hidden(name: str) -> bool:
    """Names tools leave behind that are never data: .ipynb_checkpoints, .DS_Store, .git, __MACOSX."""
    return name.startswith(".") or name == "__MACOSX"


def _link_problem(fs: fsspec.AbstractFileSystem, path: str, info: dict) -> tuple[str, str] | None:
    """(reason, detail) for a local symlink that cannot be followed: dangling, or to a folder (never followed
    inside a class folder: it may loop back or show the same files twice)."""
    if not info.get("islink") or fs.protocol not in ("file", "local", ("file", "local")):
        return None
    target = os.readlink(path)
    if not os.path.exists(path):
        return "broken_symlink", f"points to {target}, which does not exist"
    if os.path.isdir(path):
        return "symlinked_folder", f"points to the folder {target}: not followed (link or copy the files instead)"
    return None


def _outcome(key: str, data: bytes | Exception, cfg: IngestConfig) -> Outcome:
    if isinstance(data, Exception):
        return Outcome(key, "unreadable", f"{type(data).__name__}: {data}")
    try:
        pixels, stored, ext = prepare_image(
            data, cfg.image_size, cfg.channels, cfg.max_image_pixels, cfg.resize, cfg.encoding, cfg.quality
        )
    except BadImage as bad:
        return Outcome(key, bad.reason, bad.detail)
    flat = pixels.reshape(-1, cfg.channels).astype(np.float64)
    sums = (*flat.sum(axis=0).tolist(), *np.square(flat).sum(axis=0).tolist())
    return Outcome(key, sha256=_pixel_digest(pixels), ext=ext, sums=sums, data=stored)


def _pixel_digest(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()


def _decode_batch(source: str, batch: list[tuple[str, str]], cfg: IngestConfig) -> list[Outcome]:
    """Worker task: fetch a batch of files (concurrently where the filesystem can) and decode each."""
    fs, _ = fsspec.core.url_to_fs(source)
    fetched = fs.cat([path for path, _ in batch], on_error="return")
    return [_outcome(key, fetched[path], cfg) for path, key in batch]


def _workers(cfg: IngestConfig, n_files: int) -> int:
    wanted = (os.cpu_count() or 1) if cfg.workers == "auto" else cfg.workers
    return max(1, min(wanted, n_files // FILES_PER_TASK))


def decode_new(cfg: IngestConfig, source: str, files: list[SourceFile], cache: IngestCache) -> int:
    """Decode the files the cache has no outcome for, in parallel; returns how many were decoded."""
    known = cache.known(f.key for f in files)
    new = [f for f in files if f.key not in known]
    if not new:
        return 0
    batches = [[(f.path, f.key) for f in new[i : i + FILES_PER_TASK]] for i in range(0, len(new), FILES_PER_TASK)]
    workers = _workers(cfg, len(new))
    log.info("ingest: decoding %d new file(s) from %s with %d process(es)", len(new), source, workers)
    unreadable: list[tuple[str, str]] = []
    where = {f.key: f.path for f in new}
    with Progress(transient=True) as progress:
        task = progress.add_task("ingest: decoding images", total=len(new))
        for outcomes in _run(workers, source, batches, cfg):
            # a file that could not be read (I/O error, a bucket failing halfway) is not a verdict on the file:
            # it is not cached, and the ingest stops below naming it; what was decoded stays cached
            cache.put([o for o in outcomes if o.reason != "unreadable"])
            unreadable += [(where[o.key], o.detail) for o in outcomes if o.reason == "unreadable"]
            progress.advance(task, len(outcomes))
    if unreadable:
        examples = "; ".join(f"{p}: {why}" for p, why in unreadable[:3])
        raise DataError(
            f"could not read {len(unreadable)} of {len(new)} new file(s) from {source} ({examples}). The "
            f"{len(new) - len(unreadable)} read were decoded and cached: run ingest again once the source "
            "answers (only the rest is read), or remove those files"
        )
    return len(new)


def _run(workers: int, source: str, batches: list, cfg: IngestConfig) -> Iterator[list[Outcome]]:
    if workers == 1:
        for batch in batches:
            yield _decode_batch(source, batch, cfg)
        return
    # fork: the workers start at once (no re-import); each opens its own fsspec filesystem
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        yield from pool.map(_decode_batch, [source] * len(batches), batches, [cfg] * len(batches))


def collect(files: list[SourceFile], cache: IngestCache) -> tuple[list[Candidate], list[Rejected]]:
    """Usable images and rejected files, from the cache's outcomes for `files`."""
    candidates, rejected = [], []
    for f, o in zip(files, cache.summaries([f.key for f in files]), strict=True):
        if o.ok:
            candidates.append(Candidate(f.class_name, f.path, f.key, o.sha256, o.sums))
        else:
            rejected.append(Rejected(f.path, f.class_name, o.reason, o.detail))
    return candidates, rejected


def digits_candidates(cfg: IngestConfig, cache: IngestCache) -> list[Candidate]:
    """scikit-learn's 8x8 digits (values 0..16) as uint8 images at image_size, stored through the cache."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    raw = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    skey, outcomes, names = settings_key(cfg), [], []
    for i, img in enumerate(raw):
        buf = io.BytesIO()
        Image.fromarray(img, "L").save(buf, "PNG")
        outcomes.append(_outcome(cache_key(skey, f"digits:{i}", "sklearn"), buf.getvalue(), cfg))
        names.append(str(digits.target_names[digits.target[i]]))
    cache.put(outcomes)
    return [
        Candidate(name, f"digits:{i}", o.key, o.sha256, o.sums)
        for i, (name, o) in enumerate(zip(names, outcomes, strict=True))
    ]


def quarantine_files(source: str, rejected: list[Rejected], quarantine_dir: Path) -> None:
    """Copy the files of `source` that did not decode into `quarantine_dir/files/<class>/` for a person to inspect."""
    fs, _ = fsspec.core.url_to_fs(source)
    for r in rejected:
        if r.reason in ("not_an_image_extension", "outside_class_folder", "unreadable"):
            continue
        target = quarantine_dir / "files" / (r.label or "_") / Path(r.path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            target.write_bytes(fs.cat_file(r.path))
        except OSError as exc:
            log.warning("ingest: could not copy %s into the quarantine: %s", r.path, exc)
