"""What ingest's sources hold, listed without reading a file: one digest per source for `data/sources.json`.

DVC sees files inside the project only. The folder, table or bucket that `ingest.source` names and the
feedback inbox of `ingest.extra_sources` change outside its view, so dvc.yaml's `sources` stage (always run)
writes this listing and ingest depends on it: a file added, changed or removed changes a digest and DVC runs
ingest again; an unchanged source gives a byte-identical file and ingest is skipped.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import fsspec

from lab2prod.core.errors import DataError
from lab2prod.core.settings import IngestConfig

# File metadata that changes with the content, by filesystem (S3/GCS/Azure ETag or hash, local mtime, ...)
STAMPS = ("ETag", "etag", "md5Hash", "crc32c", "checksum", "mtime", "LastModified", "last_modified", "created")


def file_stamp(info: dict) -> str:
    """Size plus whatever changes with the content without reading it: mtime, ETag or checksum."""
    stamp = next((info[k] for k in STAMPS if info.get(k) is not None), "")
    return f"{info.get('size')}:{stamp}"


def source_fingerprint(source: str) -> dict[str, Any]:
    """{"files": n, "sha256": digest of every file's relative path, size and stamp} (or {"absent": true})."""
    if source == "digits":
        import sklearn

        return {"embedded": f"scikit-learn {sklearn.__version__} load_digits"}
    try:
        fs, root = fsspec.core.url_to_fs(source)
        if not fs.exists(root):
            return {"absent": True}
        if fs.isfile(root):
            listing = [["", file_stamp(fs.info(root))]]
        else:
            prefix = root.rstrip("/") + "/"
            found = fs.find(root, detail=True)
            listing = sorted([path.removeprefix(prefix), file_stamp(info)] for path, info in found.items())
    except (OSError, ValueError, ImportError) as exc:
        raise DataError(f"ingest source {source!r}: cannot list it ({exc.__class__.__name__}: {exc})") from exc
    digest = hashlib.sha256(json.dumps(listing, separators=(",", ":")).encode()).hexdigest()
    return {"files": len(listing), "sha256": digest}


def fingerprint(cfg: IngestConfig) -> dict[str, Any]:
    """Each source of `cfg` (main first, then the extra ones) with its listing's digest."""
    return {"sources": {source: source_fingerprint(source) for source in [cfg.source, *cfg.extra_sources]}}
