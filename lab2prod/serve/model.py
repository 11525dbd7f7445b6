"""What `lab2prod serve` serves and how it follows it: the champion pointer of a registry (or one ONNX file),
the checks a new model passes before it is swapped in (sha256, ONNX Runtime, a smoke prediction), and the
holder that swaps it atomically and refuses what fails."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
from pathlib import Path

import fsspec
import numpy as np

from lab2prod.core.errors import DataError
from lab2prod.serve.metrics import Metrics
from lab2prod.serve.predict import Classifier

log = logging.getLogger("lab2prod.serve")


@dataclasses.dataclass(frozen=True)
class Pointer:
    """What should be served: `key` changes whenever the model does."""

    key: str
    location: str  # a path or fsspec URL of the ONNX file
    version: str | None  # the registry version, None for a plain file
    sha256: str | None  # the expected sha256 (the registry records it), None for a plain file


class ChampionSource:
    """The registry's champion, followed: a promotion or rollback is a new pointer."""

    def __init__(self, registry: str) -> None:
        self.registry = registry

    def describe(self) -> str:
        return f"the champion of registry {self.registry}"

    def pointer(self) -> Pointer | None:
        from lab2prod.registry.store import champion, champion_model

        current = champion(self.registry)
        if current is None:
            return None
        return Pointer(
            f"{current['version']}:{current['onnx_sha256']}",
            champion_model(self.registry),
            current["version"],
            current["onnx_sha256"],
        )


class FileSource:
    """One ONNX file (path or URL); replaced on disk, it is reloaded like a promotion."""

    def __init__(self, location: str) -> None:
        self.location = location

    def describe(self) -> str:
        return f"the file {self.location}"

    def pointer(self) -> Pointer | None:
        fs, path = fsspec.core.url_to_fs(self.location)
        try:
            info = fs.info(path)
        except FileNotFoundError:
            return None
        identity = info.get("mtime") or info.get("LastModified") or info.get("ETag") or info.get("etag")
        return Pointer(f"{info.get('size')}:{identity}", self.location, None, None)


@dataclasses.dataclass(frozen=True)
class ServedModel:
    classifier: Classifier
    version: str
    key: str
    loaded_at: str

    @property
    def sha256(self) -> str:
        return self.classifier.sha256


def load_served(pointer: Pointer) -> ServedModel:
    """Download, check the sha256, open and smoke-test the file a pointer names; DataError saying why not."""
    try:
        with fsspec.open(pointer.location, "rb") as fh:
            data = fh.read()
    except (OSError, ValueError) as exc:
        raise DataError(f"model {pointer.location}: cannot be read: {exc}") from None
    digest = hashlib.sha256(data).hexdigest()
    if pointer.sha256 and digest != pointer.sha256:
        raise DataError(
            f"model {pointer.location}: sha256 {digest[:16]}... does not match the pointer's "
            f"{pointer.sha256[:16]}...: the file was modified or is incomplete"
        )
    classifier = Classifier.from_bytes(data, pointer.location)
    smoke = ["a", "two words"] if classifier.modality == "text" else np.zeros((2, *classifier.image_shape), np.uint8)
    try:
        probs = classifier.predict(smoke)
    except Exception as exc:  # any ONNX Runtime failure on a valid input means the file cannot serve
        raise DataError(f"model {pointer.location}: smoke prediction failed: {str(exc).strip()[:300]}") from None
    if probs.shape != (2, len(classifier.classes)) or not np.isfinite(probs).all():
        raise DataError(
            f"model {pointer.location}: smoke prediction gave shape {probs.shape} or non-finite values "
            f"for {len(classifier.classes)} classes"
        )
    version = pointer.version or f"{Path(pointer.location).name}@{digest[:12]}"
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return ServedModel(classifier, version, pointer.key, now)


class ModelHolder:
    """The model being served, swapped atomically by `refresh`."""

    def __init__(self, source: ChampionSource | FileSource, metrics: Metrics) -> None:
        self.source, self.metrics = source, metrics
        self.current: ServedModel | None = None
        self.refused: dict[str, str] = {}  # pointer key -> why (not retried until the pointer changes)
        self.last_problem = ""

    def refresh(self) -> str:
        """Load the pointer's model if it changed; returns what happened ("same", "loaded", "refused", ...)."""
        try:
            pointer = self.source.pointer()
        except Exception as exc:  # an unreachable registry: keep serving what we have
            self.metrics.source_errors.inc()
            problem = f"cannot read {self.source.describe()}: {type(exc).__name__}: {exc}"
            if problem != self.last_problem:
                log.warning("%s; %s", problem, "still serving " + self.current.version if self.current else "no model")
            self.last_problem = problem
            return "unreachable"
        if pointer is None:
            self.last_problem = f"{self.source.describe()}: no model yet"
            return "none"
        if self.current is not None and pointer.key == self.current.key:
            return "same"
        if pointer.key in self.refused:
            return "refused"
        try:
            model = load_served(pointer)
        except DataError as exc:
            self.refused[pointer.key] = str(exc)
            self.last_problem = f"refused {pointer.version or pointer.location}: {exc}"
            self.metrics.reloads.labels("refused").inc()
            log.error(
                "refused the new model (%s); %s",
                exc,
                f"still serving {self.current.version}" if self.current else "no model is served",
            )
            return "refused"
        previous, self.current = self.current, model
        self.last_problem = ""
        self.metrics.reloads.labels("ok").inc()
        self.metrics.model.clear()
        self.metrics.model.labels(model.version, model.sha256[:16]).set(1)
        log.info(
            "serving %s (sha256 %s...)%s",
            model.version,
            model.sha256[:12],
            f", was {previous.version}" if previous else "",
        )
        return "loaded"
