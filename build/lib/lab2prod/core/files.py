"""Atomic outputs and lineage: no stage ever leaves a half-written file where a later stage reads.

Every output is written under a temporary name in the same directory and renamed into place
(`os.replace` is atomic on one filesystem), so a killed stage leaves either the old file or the new.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_file(final: Path | str) -> Iterator[Path]:
    """Yield a temp path beside `final`; rename it onto `final` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.chmod(0o666 & ~_UMASK)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(final: Path | str) -> Iterator[Path]:
    """Yield an empty temp directory beside `final`; swap it in for `final` if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    tmp.chmod(0o777 & ~_UMASK)
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: Path | str, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path | str) -> Any:
    return json.loads(Path(path).read_text())


def _feed(h: hashlib._Hash, fh: BinaryIO) -> None:
    for block in iter(lambda: fh.read(1 << 20), b""):
        h.update(block)


def sha256_stream(fh: BinaryIO) -> str:
    """sha256 hex digest of everything left in a binary file object, read in 1 MiB blocks."""
    h = hashlib.sha256()
    _feed(h, fh)
    return h.hexdigest()


def sha256_file(path: Path | str) -> str:
    """sha256 hex digest of a local file's bytes."""
    with open(path, "rb") as fh:
        return sha256_stream(fh)


def files_digest(*paths: Path | str) -> str:
    """Short sha256 over the bytes of the given files, in order: what exactly a stage consumed."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            _feed(h, fh)
    return h.hexdigest()[:16]
