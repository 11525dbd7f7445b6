"""The prepared-data format every stage after ingest reads, and the input every model takes.

    <prepared>/meta.json                       classes, image shape, counts, split rule, content hash,
                                               normalisation statistics, the shard files of each split
    <prepared>/<split>/shard-00000.tar ...     WebDataset-convention tar shards: per sample
                                               `<key>.png|jpg|webp` (the image, encoded at the target
                                               size), `<key>.cls` (class index) and `<key>.json`
                                               (class name, content hash, source path)
    <prepared>/<split>/index.csv               one row per sample: shard, byte offset and size of the
                                               image inside it, label, content hash, source

Shards are plain tar files (`tar tf`, the `webdataset` library and any tar reader open them); a few
large files keep DVC fast, where one file per image would not. The index gives random access, so a
split can be shuffled per epoch and cut exactly across DDP ranks without reading it whole.

Models take float32 NCHW pixels in [0, 1] (`to_model_input`); normalisation is inside each network.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from lab2prod.core.errors import DataError

INDEX = "index.csv"
INDEX_COLUMNS = ("key", "shard", "offset", "size", "label", "sha256", "source")


@dataclass
class Sample:
    """One prepared image: its encoded bytes at the target size and what is known about it."""

    data: bytes
    ext: str  # "png", "jpg", "webp"
    label: int
    class_name: str
    sha256: str  # content hash of the decoded pixels
    source: str


class ShardWriter:
    """Writes one split's samples into tar shards of about `shard_bytes` each, plus its index.csv."""

    def __init__(self, split_dir: Path, shard_bytes: int) -> None:
        self.dir, self.shard_bytes = split_dir, shard_bytes
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rows: list[tuple] = []
        self.n_shards, self.total_bytes = 0, 0
        self._tar: tarfile.TarFile | None = None
        self._in_shard = 0

    def _shard(self) -> tarfile.TarFile:
        if self._tar is None or self._in_shard >= self.shard_bytes:
            self.close_shard()
            self._tar = tarfile.open(self.dir / f"shard-{self.n_shards:05d}.tar", "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
            self.n_shards += 1
            self._in_shard = 0
        return self._tar

    def _add(self, tar: tarfile.TarFile, name: str, data: bytes) -> int:
        """Append one member; returns the byte offset of its data in the shard."""
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644  # mtime 0: same samples, same bytes
        data_offset = tar.offset + tarfile.BLOCKSIZE  # a USTAR header of a short name is one block
        tar.addfile(info, io.BytesIO(data))
        self._in_shard += len(data) + 1024
        return data_offset

    def write(self, s: Sample) -> None:
        tar = self._shard()
        key = s.sha256[:20]  # content-derived: unique in a split (duplicates are removed) and stable across ingests
        offset = self._add(tar, f"{key}.{s.ext}", s.data)
        self._add(tar, f"{key}.cls", str(s.label).encode())
        meta = {"class": s.class_name, "sha256": s.sha256, "source": s.source}
        self._add(tar, f"{key}.json", json.dumps(meta).encode())
        self.rows.append((key, self.n_shards - 1, offset, len(s.data), s.label, s.sha256, s.source))
        self.total_bytes += len(s.data)

    def link(self, shard: Path, rows: list[tuple]) -> None:
        """Add a finished shard of an earlier ingest unchanged (hard link, else copy): `rows` are its
        index rows there. Samples written after it go into a new shard."""
        self.close_shard()
        target = self.dir / f"shard-{self.n_shards:05d}.tar"
        try:
            os.link(shard, target)
        except OSError:  # another filesystem, or links not allowed
            shutil.copyfile(shard, target)
        for key, _, offset, size, label, sha, source in rows:
            self.rows.append((key, self.n_shards, offset, size, label, sha, source))
            self.total_bytes += int(size)
        self.n_shards += 1

    def close_shard(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None

    def close(self) -> None:
        self.close_shard()
        with open(self.dir / INDEX, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(INDEX_COLUMNS)
            writer.writerows(self.rows)


@dataclass
class SplitIndex:
    """Random access to one split's samples (safe to pickle into DataLoader worker processes)."""

    dir: Path
    image_shape: tuple[int, ...]  # H, W, C; () for text
    shard: np.ndarray  # int32 per sample
    offset: np.ndarray  # int64
    size: np.ndarray  # int64
    labels: np.ndarray  # int64
    sha256: list[str]
    sources: list[str]
    keys: list[str]
    _files: dict[int, BinaryIO] = field(default_factory=dict, repr=False)
    _pid: int = field(default_factory=os.getpid, repr=False)

    @classmethod
    def read(cls, prepared: Path | str, split: str) -> SplitIndex:
        prepared = Path(prepared)
        meta_file, index_file = prepared / "meta.json", prepared / split / INDEX
        if not index_file.is_file():
            found = f"found {sorted(p.name for p in prepared.iterdir())}" if prepared.is_dir() else "it does not exist"
            raise DataError(
                f"{index_file}: no '{split}' split in {prepared} ({found}). Run the ingest stage first "
                "(`lab2prod run ingest`); data prepared by lab2prod before 0.3 (.npz files) must be ingested again."
            )
        meta = json.loads(meta_file.read_text())
        with open(index_file, newline="") as fh:
            rows = list(csv.reader(fh))
        if tuple(rows[0]) != INDEX_COLUMNS:
            raise DataError(f"{index_file}: columns {rows[0]}, expected {list(INDEX_COLUMNS)}; ingest again.")
        cols = list(zip(*rows[1:], strict=True)) if len(rows) > 1 else [()] * len(INDEX_COLUMNS)
        return cls(
            dir=prepared / split,
            image_shape=tuple(meta.get("image_shape", ())),  # () for text
            shard=np.asarray(cols[1], np.int32),
            offset=np.asarray(cols[2], np.int64),
            size=np.asarray(cols[3], np.int64),
            labels=np.asarray(cols[4], np.int64),
            sha256=list(cols[5]),
            sources=list(cols[6]),
            keys=list(cols[0]),
        )

    def __len__(self) -> int:
        return len(self.labels)

    def row(self, i: int) -> tuple:
        """Sample i's index row (the columns of INDEX_COLUMNS)."""
        key = f"{self.sha256[i][:20]}"
        return (
            key,
            int(self.shard[i]),
            int(self.offset[i]),
            int(self.size[i]),
            int(self.labels[i]),
            self.sha256[i],
            self.sources[i],
        )

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_files"], state["_pid"] = {}, -1  # open file handles stay in the process that opened them
        return state

    @property
    def decoded_bytes(self) -> int:
        """Memory the split needs decoded: uint8 pixels."""
        h, w, c = self.image_shape
        return len(self) * h * w * c

    def encoded(self, i: int) -> bytes:
        if self._pid != os.getpid():  # a forked loader worker: never share a file offset with the parent
            self._files, self._pid = {}, os.getpid()
        shard = int(self.shard[i])
        fh = self._files.get(shard)
        if fh is None:
            fh = self._files[shard] = open(self.dir / f"shard-{shard:05d}.tar", "rb")  # noqa: SIM115 - kept open
        fh.seek(int(self.offset[i]))
        return fh.read(int(self.size[i]))

    def image(self, i: int) -> np.ndarray:
        """Sample i decoded: uint8 (H, W, C)."""
        return decode_stored(self.encoded(i), self.image_shape, f"{self.dir}[{i}]")

    def images(self, idx: np.ndarray | range) -> np.ndarray:
        out = np.empty((len(idx), *self.image_shape), np.uint8)
        for j, i in enumerate(idx):
            out[j] = self.image(int(i))
        return out

    def close(self) -> None:
        for fh in self._files.values():
            fh.close()
        self._files.clear()


def decode_stored(data: bytes, shape: tuple[int, int, int], where: str) -> np.ndarray:
    """Decode an image ingest stored (already at the target size) to uint8 (H, W, C)."""
    h, w, c = shape
    try:
        img = Image.open(io.BytesIO(data))
        img = ImageOps.exif_transpose(img).convert("L" if c == 1 else "RGB")
        arr = np.asarray(img, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{where}: stored image does not decode ({exc}); the shard is damaged: ingest again.") from None
    if arr.shape[:2] != (h, w):
        raise DataError(f"{where}: stored image is {arr.shape[:2]}, expected {(h, w)}; ingest again.")
    return arr.reshape(h, w, c)


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 (H, W, C) pixels as PNG bytes (lossless)."""
    out = io.BytesIO()
    Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels).save(out, "PNG")
    return out.getvalue()


class SplitBatches:
    """A split's images (all, or the rows `keep` selects) as a re-iterable sequence of uint8 NHWC batches,
    decoded from the shards on each pass: scoring a split larger than memory holds one batch at a time."""

    def __init__(self, prepared: Path | str, split: str, batch_size: int = 512, keep: np.ndarray | None = None) -> None:
        index = SplitIndex.read(prepared, split)
        labels = index.labels.copy()
        index.close()
        self.prepared, self.split, self.batch_size = Path(prepared), split, batch_size
        self.rows = np.arange(len(labels)) if keep is None else np.flatnonzero(keep)
        self.labels = labels[self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def images(self, positions: np.ndarray | range) -> np.ndarray:
        """The images at these positions (in this selection), decoded into memory."""
        index = SplitIndex.read(self.prepared, self.split)
        try:
            return index.images(self.rows[np.asarray(positions, dtype=np.int64)])
        finally:
            index.close()

    def first(self, n: int) -> np.ndarray:
        return self.images(range(min(n, len(self))))

    def __iter__(self) -> Iterator[np.ndarray]:
        index = SplitIndex.read(self.prepared, self.split)  # once per pass, not per batch
        try:
            for start in range(0, len(self), self.batch_size):
                yield index.images(self.rows[start : start + self.batch_size])
        finally:
            index.close()


def load_split_arrays(prepared: Path | str, split: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A split (or its first `limit` samples) decoded into memory: (uint8 NHWC images, int64 labels)."""
    index = SplitIndex.read(prepared, split)
    n = len(index) if limit is None else min(limit, len(index))
    try:
        return index.images(range(n)), index.labels[:n].copy()
    finally:
        index.close()


def array_batches(images: np.ndarray | SplitBatches, batch_size: int = 512) -> Iterator[np.ndarray]:
    """uint8 NHWC batches of an in-memory array or of a SplitBatches (in its own batch size)."""
    if isinstance(images, SplitBatches):
        yield from images
    else:
        images = np.asarray(images)
        for start in range(0, len(images), batch_size):
            yield images[start : start + batch_size]


def pixels_input(x: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW in [0, 1]: the input every exported model takes (NumPy; no torch)."""
    return np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)
