"""Where things live: one rule for "is this a remote location", one for resolving a relative one."""

from __future__ import annotations

from pathlib import Path

from fsspec.core import split_protocol

LOCAL_PROTOCOLS = (None, "file", "local")


def is_remote(location: str | Path) -> bool:
    """True for object stores and other network filesystems (s3://, gs://, memory://, ...).

    A plain path and a file:// URL are local. Decided from the URL alone: no filesystem is
    created, so this works without the backend package installed.
    """
    protocol, _ = split_protocol(str(location))
    return protocol not in LOCAL_PROTOCOLS


def resolve(location: str | Path, base: Path) -> str:
    """A location from the settings: a URL as it is, a relative path taken from `base`."""
    protocol, _ = split_protocol(str(location))
    return str(location) if protocol is not None else str(base / location)
