"""The registry's storage: a local directory or any fsspec filesystem (a bucket), with exclusive creates,
whole-file writes and read-only files where the filesystem has modes."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import fsspec

from lab2prod.core.errors import RegistryError
from lab2prod.core.files import sha256_stream, write_json
from lab2prod.core.storage import is_remote

_MEMORY_LOCK = threading.Lock()


class Store:
    """Where a registry lives: a local directory, or any fsspec URL (s3://, gs://, az://, ...).

    Local: a version appears with one directory rename and its files are made read-only; the
    champion pointer is replaced with one rename. Object store: one object per file, manifest.json
    written last (a version without it does not exist), champion.json a single PUT (atomic on S3,
    GCS and Azure). Either way every file's sha256 is checked before a version becomes champion.
    """

    def __init__(self, location: str | Path) -> None:
        self.fs, self.root = fsspec.core.url_to_fs(str(location))
        self.local = not is_remote(location)

    def path(self, *parts: str) -> str:
        """A path inside the registry; RegistryError for a part that could lead outside it (a version or file
        name taken from a command line or a tampered pointer: '..', '/', empty)."""
        for part in parts:
            if not part or part in (".", "..") or any(ch in part for ch in "/\\\0"):
                raise RegistryError(
                    f"{part!r} is not a name inside the registry {self.root}: refusing to read or write outside it"
                )
        return "/".join([self.root.rstrip("/"), *parts])

    def url(self, *parts: str) -> str:
        """A path for local registries, a full URL (with its protocol) for remote ones."""
        return self.path(*parts) if self.local else self.fs.unstrip_protocol(self.path(*parts))

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def read_json(self, *parts: str) -> Any:
        """A registry record; RegistryError naming the file when it is not JSON (damaged outside lab2prod)."""
        raw = self.fs.cat_file(self.path(*parts))
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RegistryError(
                f"{self.url(*parts)} is not valid JSON ({exc}; {len(raw)} bytes): the registry file was damaged "
                "outside lab2prod. Restore it from a backup"
                + (
                    ", or delete it: the champion falls back to the record before it"
                    if parts and parts[0] == "pointers"
                    else ""
                )
            ) from None
        if parts and parts[0] == "pointers" and not (isinstance(record, dict) and "version" in record):
            raise RegistryError(
                f"{self.url(*parts)}: a champion record needs a 'version'; it has {record!r:.200}. "
                "Delete it (the champion falls back to the record before it) or restore it from a backup"
            )
        return record

    def write_json(self, obj: Any, *parts: str) -> None:
        if self.local:
            write_json(Path(self.path(*parts)), obj)
        else:
            self.fs.pipe_file(self.path(*parts), (json.dumps(obj, indent=2) + "\n").encode())

    def create(self, data: bytes, *parts: str) -> bool:
        """Write a new file only if none exists there (atomically: O_EXCL locally, a conditional PUT on object
        stores whose fsspec backend supports `mode="create"`); False if one already existed."""
        if self.local:  # written whole to a temp file, then hard-linked into place: link fails if it exists
            target = Path(self.path(*parts))
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".new", dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.chmod(tmp, 0o644)
                try:
                    os.link(tmp, target)
                except FileExistsError:
                    return False
            finally:
                os.unlink(tmp)
            return True
        # fsspec's in-memory filesystem lives in this process; its create is check-then-write, so a lock
        # makes it atomic among threads (object stores do it server-side)
        with _MEMORY_LOCK if "memory" in self.fs.protocol else contextlib.nullcontext():
            try:
                self.fs.pipe_file(self.path(*parts), data, mode="create")
            except FileExistsError:
                return False
        return True

    def sha256(self, *parts: str) -> str:
        with self.fs.open(self.path(*parts), "rb") as fh:
            return sha256_stream(fh)
