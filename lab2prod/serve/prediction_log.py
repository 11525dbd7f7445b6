"""The prediction log: a sample of what the served model saw and answered, in rotating JSONL files.

One line per logged image:
    {"time", "model_version", "model_sha256", "top1", "confidence", "probabilities" (top-k),
     "fingerprint" (sha256 of the file's bytes, 16 hex), "mean", "std" (pixel statistics of the decoded
     image in [0, 1]), "height", "width" (the decoded input), "image" (kept file, when serve.log_images)}
A text model's lines have, instead of the pixel statistics, "chars", "words", and "tokens" and "unknown_rate"
(token count and share of [UNK] tokens, as the model saw the text): the features of its drift reference.

Files are `predictions-<UTC time>-<host>-<pid>.jsonl` under `serve.log_dir`, a local directory (each server
process writes its own, so replicas can share one mounted volume);
a file is closed at `serve.log_file_mb` and the oldest files (and kept images) are deleted to hold the whole
log under `serve.log_max_mb`. `read_log` reads them back for the drift monitor.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import random
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

log = logging.getLogger("lab2prod.serve")

PREFIX, SUFFIX = "predictions-", ".jsonl"


def _stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")


class PredictionLog:
    """Thread-safe appender with size-based rotation and a disk budget; a sample of `sample` of the images."""

    def __init__(
        self, folder: Path, sample: float, file_mb: float, max_mb: float, keep_images: bool, seed: int | None = None
    ) -> None:
        self.folder, self.sample, self.keep_images = Path(folder), sample, keep_images
        self.file_bytes, self.max_bytes = int(file_mb * 2**20), int(max_mb * 2**20)
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._file: Path | None = None
        self._handle: BinaryIO | None = None
        self._size = 0
        self._images_bytes = 0  # kept images since the last budget check
        self.written = 0
        self.deleted = 0

    @property
    def enabled(self) -> bool:
        return self.sample > 0

    def record(
        self,
        version: str,
        sha256: str,
        classes: list[str],
        probabilities: np.ndarray,
        images: np.ndarray,
        fingerprints: list[str],
        files: list[tuple[bytes, str]] | None = None,
        top_k: int = 3,
        text_stats: list[dict[str, float]] | None = None,
    ) -> int:
        """Log a sample of one batch's images (uint8 NHWC, their probabilities), or texts (an object array, with
        each text's `text_stats`: tokens, unknown_rate); returns how many were logged."""
        if not self.enabled:
            return 0
        now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        keep = [i for i in range(len(probabilities)) if self.sample >= 1 or self._rng.random() < self.sample]
        if not keep:
            return 0
        # the whole batch at once: this runs on the model thread, under the GIL the event loop needs too
        probs = probabilities[keep]
        order = np.argsort(-probs, axis=1)[:, :top_k]
        top = np.round(np.take_along_axis(probs, order, axis=1), 6).tolist()
        if images.dtype == object:  # texts: their length in the log instead of pixel statistics
            sizes = [{"chars": len(str(images[i])), "words": len(str(images[i]).split())} for i in keep]
            if text_stats is not None:
                sizes = [size | text_stats[i] for size, i in zip(sizes, keep, strict=True)]
        else:
            pixels = images[keep].reshape(len(keep), -1).astype(np.float32) / np.float32(255.0)
            means, stds = np.round(pixels.mean(axis=1), 6).tolist(), np.round(pixels.std(axis=1), 6).tolist()
            height, width = int(images.shape[1]), int(images.shape[2])
            sizes = [
                {"mean": m, "std": sd, "height": height, "width": width} for m, sd in zip(means, stds, strict=True)
            ]
        lines: list[str] = []
        kept: list[tuple[str, bytes]] = []
        for row_order, row_top, size, i in zip(order.tolist(), top, sizes, keep, strict=True):
            row: dict[str, Any] = {
                "time": now,
                "model_version": version,
                "model_sha256": sha256[:16],
                "top1": classes[row_order[0]],
                "confidence": row_top[0],
                "probabilities": {classes[k]: q for k, q in zip(row_order, row_top, strict=True)},
                "fingerprint": fingerprints[i],
                **size,
            }
            if self.keep_images and files is not None:
                data, ext = files[i]
                row["image"] = f"images/{fingerprints[i]}.{ext}"
                kept.append((row["image"], data))
            lines.append(json.dumps(row))
        self._append(lines, kept)
        return len(lines)

    def _append(self, lines: list[str], kept: list[tuple[str, bytes]]) -> None:
        blob = ("\n".join(lines) + "\n").encode()
        with self._lock:
            for rel, data in kept:
                target = self.folder / rel
                if not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
                    tmp.write_bytes(data)
                    tmp.replace(target)
                    self._images_bytes += len(data)
            if self._handle is None or self._size + self._images_bytes + len(blob) > self.file_bytes:
                self._rotate(len(blob))
            assert self._handle is not None
            self._handle.write(blob)
            self._handle.flush()  # whole lines reach the file at once: the monitor may read it any time
            self._size += len(blob)
            self.written += len(lines)

    def _rotate(self, incoming: int) -> None:
        """Close the current file and open a new one (kept open: no open/close per batch), within the budget."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self.folder.mkdir(parents=True, exist_ok=True)
        self._file = self.folder / f"{PREFIX}{_stamp()}-{socket.gethostname()}-{os.getpid()}{SUFFIX}"
        self._size = self._images_bytes = 0
        self._enforce_budget(incoming)
        self._handle = self._file.open("ab")

    def close(self) -> None:
        """Close the open log file (a new one is opened by the next record)."""
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None

    def _enforce_budget(self, incoming: int) -> None:
        """Delete the oldest log files and kept images until the log plus `incoming` bytes fit the budget."""
        files = [p for p in self.folder.rglob("*") if p.is_file() and not p.name.startswith(".")]
        files.sort(key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files) + incoming
        for p in files:
            if total <= self.max_bytes:
                break
            if p == self._file:
                continue
            total -= p.stat().st_size
            p.unlink(missing_ok=True)
            self.deleted += 1
            log.info("prediction log: deleted %s to stay under serve.log_max_mb", p)


def log_files(folder: Path) -> list[Path]:
    """The log's files, oldest first."""
    return sorted(Path(folder).glob(f"{PREFIX}*{SUFFIX}")) if Path(folder).is_dir() else []


def read_log(folder: Path, since: str | None = None) -> Iterator[dict[str, Any]]:
    """Every logged prediction (from `since`, an ISO time, when given), oldest file first; a torn last line
    (a server killed mid-write) is skipped."""
    for path in log_files(folder):
        with path.open() as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if since is None or row.get("time", "") >= since:
                    yield row
