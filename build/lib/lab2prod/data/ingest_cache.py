"""Ingest's cache: what decoding each source file gave, keyed by the file's identity and the settings
that shape the result, so an unchanged file is neither read nor decoded again.

One SQLite file (`data/.ingest-cache.sqlite` in a project, beside the prepared data): a row per (file identity, decode
settings) with the outcome, either the bytes to store in a shard plus the pixels' content hash and
channel sums, or the reason the file was set aside. Rows are committed a batch at a time, so a killed
ingest keeps what it finished and the next one goes on from there. Deleting the file is always safe.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Outcome:
    """What decoding one file gave: usable (`reason` empty) or set aside with its reason."""

    key: str
    reason: str = ""
    detail: str = ""
    sha256: str = ""
    ext: str = ""
    sums: tuple[float, ...] = ()  # per channel: sum of pixel values, then sum of their squares
    data: bytes = b""

    @property
    def ok(self) -> bool:
        return not self.reason


def cache_key(settings_key: str, path: str, identity: str) -> str:
    return hashlib.sha256(f"{SCHEMA_VERSION}|{settings_key}|{path}|{identity}".encode()).hexdigest()


class IngestCache:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS outcome (key TEXT PRIMARY KEY, reason TEXT, detail TEXT, sha256 TEXT,"
            " ext TEXT, sums BLOB, data BLOB)"
        )

    def known(self, keys: Iterable[str]) -> set[str]:
        """Which of `keys` have an outcome already."""
        keys, found = list(keys), set()
        for start in range(0, len(keys), 900):  # SQLite's limit on bound parameters per statement
            chunk = keys[start : start + 900]
            marks = ",".join("?" * len(chunk))
            found |= {k for (k,) in self.db.execute(f"SELECT key FROM outcome WHERE key IN ({marks})", chunk)}
        return found

    def put(self, outcomes: Iterable[Outcome]) -> None:
        rows = [
            (o.key, o.reason, o.detail, o.sha256, o.ext, np.asarray(o.sums, np.float64).tobytes(), o.data)
            for o in outcomes
        ]
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO outcome VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def _select(self, columns: str, keys: list[str]) -> Iterator[tuple]:
        """Rows of `columns` for `keys`, in the order of `keys`, fetched 900 at a time."""
        for start in range(0, len(keys), 900):  # SQLite's limit on bound parameters per statement
            chunk = keys[start : start + 900]
            marks = ",".join("?" * len(chunk))
            found = {
                row[0]: row
                for row in self.db.execute(f"SELECT key, {columns} FROM outcome WHERE key IN ({marks})", chunk)
            }
            yield from (found[k] for k in chunk)

    def summaries(self, keys: list[str]) -> Iterator[Outcome]:
        """The outcomes of `keys` without their stored bytes."""
        for key, reason, detail, sha, ext, sums in self._select("reason, detail, sha256, ext, sums", keys):
            yield Outcome(key, reason, detail, sha, ext, tuple(np.frombuffer(sums, np.float64).tolist()))

    def stored(self, keys: list[str]) -> Iterator[tuple[str, bytes]]:
        """(ext, bytes to store) of each key, streamed: memory holds one batch of 900 at most."""
        for _, ext, data in self._select("ext, data", keys):
            yield ext, data

    def close(self) -> None:
        self.db.close()
