"""`lab2prod serve`: the champion (or one ONNX file) over HTTP, micro-batched, hot-reloaded, logged.

    POST /predict     images (multipart files, or one image as the raw body) -> top-k classes, model version
    POST /feedback    an image and its true label -> the feedback inbox the next retraining run ingests
    GET  /healthz     the process answers;  GET /readyz: a model is loaded;  GET /model: what is served
    GET  /metrics     Prometheus text: requests by endpoint and status, latency, batch sizes, model, reloads
    GET  /docs        OpenAPI documentation

Micro-batching: every image waits at most `serve.max_wait_ms` for others to share one model call of at most
`serve.max_batch` images; one thread runs the model while the event loop reads and decodes the next requests.

Hot reload: every `serve.reload_interval_s` the champion pointer (registry champion.json, local or on object
storage) is read; a new model is downloaded, its sha256 checked against the pointer, opened, given a smoke
prediction, and only then swapped in (one reference assignment). A request keeps the model it started with.
A file that fails any check is refused (log line, `lab2prod_model_reloads_total{result="refused"}`) and
the previous model keeps serving; the same pointer is not retried until it changes.

Limits: body size (413 before it is read), images per request (413), the decompression-bomb guard and
decoding exactly as ingest does (422 naming the image and the reason), queue length (503), per-request
timeout (504). Nothing a client sends reaches the model unchecked.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from lab2prod.errors import ConfigError, DataError
from lab2prod.feedback import EXTENSIONS, add_feedback
from lab2prod.images import BadImage
from lab2prod.predict import Classifier
from lab2prod.prediction_log import PredictionLog
from lab2prod.settings import ServeConfig
from lab2prod.storage import is_remote

log = logging.getLogger("lab2prod.serve")

CONFIG_ENV = "LAB2PROD_SERVE"  # JSON {"config", "model", "registry"} handed to each worker process


# ---------------------------------------------------------------- where the model comes from


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
        from lab2prod.registry import champion, champion_model

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
    h, w, c = classifier.image_shape
    try:
        probs = classifier.predict(np.zeros((2, h, w, c), dtype=np.uint8))
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


# ---------------------------------------------------------------- metrics


class Metrics:
    """The server's Prometheus metrics, in a registry of their own (one per app)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "lab2prod_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "lab2prod_request_seconds",
            "Request latency by endpoint",
            ["endpoint"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.batch = Histogram(
            "lab2prod_batch_images", "Images per model call", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r
        )
        self.images = Counter("lab2prod_images", "Images classified", registry=r)
        self.queue = Gauge("lab2prod_queue_images", "Images waiting for the model", registry=r)
        self.model = Gauge("lab2prod_model_info", "The model served (value 1)", ["version", "sha256"], registry=r)
        self.reloads = Counter("lab2prod_model_reloads", "Model loads by result (ok, refused)", ["result"], registry=r)
        self.source_errors = Counter(
            "lab2prod_model_source_errors", "Failed reads of the champion pointer (registry unreachable)", registry=r
        )
        self.logged = Counter("lab2prod_logged_predictions", "Predictions written to the prediction log", registry=r)
        self.feedback = Counter("lab2prod_feedback", "Labelled corrections received", registry=r)


# ---------------------------------------------------------------- micro-batching


class Busy(Exception):
    """More images waiting than serve.max_queue."""


@dataclasses.dataclass
class Job:
    model: ServedModel
    images: np.ndarray  # uint8 NHWC
    fingerprints: list[str]
    files: list[tuple[bytes, str]] | None
    future: asyncio.Future


class MicroBatcher:
    """Collects images from concurrent requests into model calls of up to `max_batch` images."""

    def __init__(
        self,
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
        metrics: Metrics,
        prediction_log: PredictionLog | None,
        log_top_k: int,
    ) -> None:
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self.metrics, self.prediction_log, self.log_top_k = metrics, prediction_log, log_top_k
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="lab2prod-model")
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.pending = 0  # images submitted and not answered yet
        self.arriving = 0  # requests being read or decoded: their images will be submitted soon
        self.submitted = asyncio.Event()

    async def submit(
        self, model: ServedModel, images: np.ndarray, fingerprints: list[str], files: list[tuple[bytes, str]] | None
    ) -> np.ndarray:
        n = len(images)
        if self.pending + n > self.max_queue:
            raise Busy(f"{self.pending} images are waiting for the model (serve.max_queue = {self.max_queue})")
        loop = asyncio.get_running_loop()
        jobs = []
        for i in range(0, n, self.max_batch):
            sl = slice(i, i + self.max_batch)
            jobs.append(Job(model, images[sl], fingerprints[sl], files[sl] if files else None, loop.create_future()))
        self.pending += n
        self.metrics.queue.set(self.pending)
        try:
            for job in jobs:
                self.queue.put_nowait(job)
            self.submitted.set()
            return np.concatenate(await asyncio.gather(*(j.future for j in jobs)))
        finally:
            self.pending -= n
            self.metrics.queue.set(self.pending)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        carry: Job | None = None
        while True:
            first = carry or await self.queue.get()
            carry = None
            jobs, n = [first], len(first.images)
            deadline = loop.time() + self.max_wait_s
            while True:
                while n < self.max_batch and not self.queue.empty():
                    job = self.queue.get_nowait()
                    if n + len(job.images) > self.max_batch:
                        carry = job
                        break
                    jobs.append(job)
                    n += len(job.images)
                remaining = deadline - loop.time()
                # Wait for more only while other requests are on their way in (being read or decoded):
                # a lone request is never held back.
                if carry is not None or n >= self.max_batch or remaining <= 0 or self.arriving == 0:
                    break
                self.submitted.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.submitted.wait(), remaining)
            jobs = [j for j in jobs if not j.future.done()]  # a request that timed out is not run
            for model in {id(j.model): j.model for j in jobs}.values():  # each request on the model it started with
                group = [j for j in jobs if j.model is model]
                try:
                    probs = await loop.run_in_executor(self.executor, self._infer, model, group)
                except Exception as exc:  # the model failed on valid input: those requests get a 500, nothing else
                    log.exception(
                        "model %s failed on a batch of %d images", model.version, sum(len(j.images) for j in group)
                    )
                    for j in group:
                        if not j.future.done():
                            j.future.set_exception(exc)
                    continue
                start = 0
                for j in group:
                    if not j.future.done():
                        j.future.set_result(probs[start : start + len(j.images)])
                    start += len(j.images)

    def _infer(self, model: ServedModel, group: list[Job]) -> np.ndarray:
        x = group[0].images if len(group) == 1 else np.concatenate([j.images for j in group])
        probs = model.classifier.predict(x)
        self.metrics.batch.observe(len(x))
        self.metrics.images.inc(len(x))
        if self.prediction_log is not None and self.prediction_log.enabled:
            files = None
            if self.prediction_log.keep_images and all(j.files for j in group):
                files = [f for j in group for f in j.files]
            try:
                logged = self.prediction_log.record(
                    model.version,
                    model.sha256,
                    model.classifier.classes,
                    probs,
                    x,
                    [f for j in group for f in j.fingerprints],
                    files,
                    self.log_top_k,
                )
                self.metrics.logged.inc(logged)
            except OSError as exc:  # a full disk must not fail predictions
                log.warning("prediction log: cannot write (%s); predictions go on unlogged", exc)
        return probs


# ---------------------------------------------------------------- the model holder and its watcher


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


# ---------------------------------------------------------------- the HTTP app


class Prediction(BaseModel):
    name: str
    top: list[dict[str, Any]]  # [{"class": ..., "probability": ...}], best first


class PredictResponse(BaseModel):
    model_version: str
    model_sha256: str
    predictions: list[Prediction]


IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
FEEDBACK_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image", "label"],
                    "properties": {"image": {"type": "string", "format": "binary"}, "label": {"type": "string"}},
                }
            }
        },
    }
}
KNOWN_PATHS = {"/predict", "/feedback", "/healthz", "/readyz", "/metrics", "/model", "/docs", "/openapi.json"}


class Guard:
    """ASGI middleware: the body-size limit (before the body is read when Content-Length says so) and the
    request metrics (count by endpoint and status, latency)."""

    def __init__(self, app: Any, max_body: int, metrics: Metrics) -> None:
        self.app, self.max_body, self.metrics = app, max_body, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = scope["path"] if scope["path"] in KNOWN_PATHS else "other"
        started, status = time.perf_counter(), [500]

        async def send_recording(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        too_big = (
            f"request body over serve.max_body_mb = {self.max_body / 2**20:g} MB; "
            "send fewer or smaller images per request"
        )
        try:
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body):
                await self._drain(receive)  # read (and drop) it so the client sees the answer, not a reset
                await JSONResponse({"detail": too_big}, status_code=413)(scope, receive, send_recording)
                return
            seen = 0

            async def limited() -> dict:
                nonlocal seen
                message = await receive()
                if message["type"] == "http.request":
                    seen += len(message.get("body", b""))
                    if seen > self.max_body:
                        raise HTTPException(413, too_big)
                return message

            await self.app(scope, limited, send_recording)
        finally:
            self.metrics.requests.labels(endpoint, str(status[0])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)

    async def _drain(self, receive: Any) -> None:
        drained, cap = 0, max(4 * self.max_body, 64 * 2**20)
        while drained <= cap:
            message = await receive()
            if message["type"] != "http.request":
                return
            drained += len(message.get("body", b""))
            if not message.get("more_body"):
                return


@dataclasses.dataclass
class Server:
    cfg: ServeConfig
    holder: ModelHolder
    batcher: MicroBatcher
    metrics: Metrics
    feedback_dir: str


async def _read_images(request: Request, cfg: ServeConfig) -> list[tuple[str, bytes]]:
    """(name, bytes) of every image in the request: multipart file parts, or the raw body as one image."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=cfg.max_images, max_fields=cfg.max_images + 16)
        except StarletteHTTPException as exc:
            if exc.status_code == 413:
                raise
            if "Too many files" in str(exc.detail):
                raise HTTPException(
                    413, f"more than serve.max_images = {cfg.max_images} images in one request; split them up"
                ) from None
            raise HTTPException(400, f"the multipart body cannot be read: {exc.detail}") from None
        parts = [(v.filename or k, await v.read()) for k, v in form.multi_items() if isinstance(v, UploadFile)]
        if not parts:
            raise HTTPException(
                422, "no image file in the form: send each image as a file part, e.g. curl -F files=@digit.png URL"
            )
        return parts
    body = await request.body()
    if not body:
        raise HTTPException(
            422,
            "empty request: send an image as the body (Content-Type: image/png, image/jpeg or "
            "application/octet-stream) or images as multipart file parts",
        )
    return [("body", body)]


INLINE_DECODE_PIXELS = 1_000_000


def _few_pixels(parts: list[tuple[str, bytes]]) -> bool:
    """True when the images' headers say they hold under INLINE_DECODE_PIXELS pixels together (a milliseconds'
    decode); unreadable headers count as none (decoding refuses them at once)."""
    total = 0
    for _, data in parts:
        with contextlib.suppress(Exception), Image.open(io.BytesIO(data)) as img:
            total += img.width * img.height
    return total <= INLINE_DECODE_PIXELS


def _decode_all(model: ServedModel, parts: list[tuple[str, bytes]], max_pixels: int) -> tuple[np.ndarray, list[str]]:
    images, problems = [], []
    for i, (name, data) in enumerate(parts):
        try:
            images.append(model.classifier.decode(data, max_pixels))
        except BadImage as exc:
            problems.append(f"image {i + 1} ({name}): {exc.reason}: {exc.detail.rstrip('. ')}")
    if problems:
        raise HTTPException(422, "; ".join(problems) + ". Nothing was classified; send usable images")
    return np.stack(images), [hashlib.sha256(d).hexdigest()[:16] for _, d in parts]


def create_app(
    cfg: ServeConfig,
    source: ChampionSource | FileSource,
    prediction_log: PredictionLog | None = None,
    feedback_dir: str | None = None,
) -> Any:
    """The ASGI app (FastAPI inside the Guard middleware)."""
    metrics = Metrics()
    holder = ModelHolder(source, metrics)
    batcher = MicroBatcher(cfg.max_batch, cfg.max_wait_ms / 1000, cfg.max_queue, metrics, prediction_log, cfg.top_k)
    server = Server(cfg, holder, batcher, metrics, feedback_dir or cfg.feedback_dir)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(holder.refresh)
        if holder.current is None:
            log.warning("no model to serve yet (%s); /readyz answers 503 until one loads", holder.last_problem)

        async def watch() -> None:
            while True:
                await asyncio.sleep(cfg.reload_interval_s)
                await run_in_threadpool(holder.refresh)

        tasks = [asyncio.create_task(batcher.run()), asyncio.create_task(watch())]
        yield
        for t in tasks:
            t.cancel()
        batcher.executor.shutdown(wait=True)

    app = FastAPI(
        title="lab2prod",
        summary="Image classification with the registry's champion model",
        description=__doc__.split("\n\n")[0],
        lifespan=lifespan,
    )
    app.state.server = server

    def model_or_503() -> ServedModel:
        model = holder.current
        if model is None:
            raise HTTPException(503, f"no model loaded yet: {holder.last_problem or 'loading'}")
        return model

    @app.post(
        "/predict",
        response_model=PredictResponse,
        openapi_extra=IMAGE_BODY,
        responses={413: {"description": "body or image count over the limits"}, 422: {"description": "bad image"}},
    )
    async def predict(
        request: Request, top_k: int | None = Query(None, ge=1, description="classes per image (default serve.top_k)")
    ) -> JSONResponse:
        """Classify one image (raw body) or several (multipart file parts, at most serve.max_images)."""
        model = model_or_503()
        try:
            async with asyncio.timeout(cfg.request_timeout_s):
                batcher.arriving += 1
                try:
                    parts = await _read_images(request, cfg)
                    if _few_pixels(parts):  # small images: decoding costs less than a hop to a thread
                        images, fingerprints = _decode_all(model, parts, cfg.max_image_pixels)
                    else:
                        images, fingerprints = await run_in_threadpool(_decode_all, model, parts, cfg.max_image_pixels)
                    files = None
                    if prediction_log is not None and prediction_log.keep_images:
                        files = [(d, _extension(d)) for _, d in parts]
                finally:
                    batcher.arriving -= 1
                probs = await batcher.submit(model, images, fingerprints, files)
        except TimeoutError:
            raise HTTPException(
                504, f"not answered within serve.request_timeout_s = {cfg.request_timeout_s:g} s"
            ) from None
        except Busy as exc:
            return JSONResponse({"detail": f"server busy: {exc}; retry shortly"}, 503, headers={"Retry-After": "1"})
        k = min(top_k or cfg.top_k, len(model.classifier.classes))
        order = np.argsort(-probs, axis=1)[:, :k]
        classes = model.classifier.classes
        body = {
            "model_version": model.version,
            "model_sha256": model.sha256,
            "predictions": [
                {"name": name, "top": [{"class": classes[c], "probability": round(float(p[c]), 6)} for c in row]}
                for (name, _), p, row in zip(parts, probs, order, strict=True)
            ],
        }
        return JSONResponse(body, headers={"X-Model-Version": model.version})

    @app.post("/feedback", status_code=201, openapi_extra=FEEDBACK_BODY)
    async def feedback(request: Request) -> JSONResponse:
        """A labelled correction: `image` (file) and `label` (one of the model's classes) as multipart form fields."""
        model = holder.current
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise HTTPException(
                415, "send a multipart form with an `image` file and a `label` field, e.g. -F image=@x.png -F label=7"
            )
        try:
            form = await request.form(max_files=1, max_fields=4)
        except StarletteHTTPException as exc:
            if exc.status_code == 413:
                raise
            raise HTTPException(400, f"the multipart body cannot be read: {exc.detail}") from None
        image, label = form.get("image"), form.get("label")
        missing = [n for n, v in (("image", isinstance(image, UploadFile)), ("label", isinstance(label, str))) if not v]
        if missing:
            raise HTTPException(
                422, f"missing form field(s): {', '.join(missing)} (an `image` file and a `label` text)"
            )
        data = await image.read()
        try:
            stored = await run_in_threadpool(
                add_feedback,
                server.feedback_dir,
                data,
                label,
                model.classifier.classes if model else None,
                False,
                cfg.max_image_pixels,
            )
        except BadImage as exc:
            raise HTTPException(422, f"image ({image.filename}): {exc.reason}: {exc.detail}") from None
        except DataError as exc:
            raise HTTPException(422, str(exc)) from None
        metrics.feedback.inc()
        log.info("feedback: %s labelled %r -> %s", image.filename, stored.label, stored.path)
        return JSONResponse(dataclasses.asdict(stored), status_code=201 if stored.new else 200)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is up (liveness)."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "no model loaded"}})
    async def readyz() -> dict[str, str]:
        """A model is loaded and requests are answered (readiness)."""
        model = model_or_503()
        return {"status": "ready", "model_version": model.version}

    @app.get("/model")
    async def model_info() -> dict[str, Any]:
        """What is served, where it comes from, and the last refused reload if any."""
        model = holder.current
        return {
            "source": source.describe(),
            "model_version": model and model.version,
            "model_sha256": model and model.sha256,
            "variant": model and model.classifier.variant,
            "classes": model and model.classifier.classes,
            "image_shape_hwc": model and list(model.classifier.image_shape),
            "loaded_at": model and model.loaded_at,
            "problem": holder.last_problem or None,
            "refused": holder.refused,
            "batching": {"max_batch": cfg.max_batch, "max_wait_ms": cfg.max_wait_ms},
        }

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        """Prometheus metrics (text format)."""
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return Guard(app, int(cfg.max_body_mb * 2**20), metrics)


def _extension(data: bytes) -> str:
    try:
        return EXTENSIONS.get(Image.open(io.BytesIO(data)).format or "", "bin")
    except Exception:
        return "bin"


# ---------------------------------------------------------------- process entry points


def app_from_environment() -> Any:
    """uvicorn factory (`lab2prod serve` hands its settings to each worker process through the environment)."""
    spec = json.loads(os.environ[CONFIG_ENV])
    cfg = ServeConfig.model_validate(spec["config"])
    source: ChampionSource | FileSource = (
        FileSource(spec["model"]) if spec.get("model") else ChampionSource(spec["registry"])
    )
    plog = None
    if cfg.log_sample > 0:
        plog = PredictionLog(Path(cfg.log_dir), cfg.log_sample, cfg.log_file_mb, cfg.log_max_mb, cfg.log_images)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return create_app(cfg, source, plog)


def serve(
    cfg: ServeConfig, model: str | None, registry: str | None, log_level: str = "info", access_log: bool = False
) -> None:
    """Run the server in the foreground (uvicorn, `cfg.workers` processes) until stopped (Ctrl-C or SIGTERM,
    which finish the requests in flight first)."""
    import uvicorn

    if is_remote(cfg.log_dir):
        raise ConfigError(
            f"serve.log_dir = {cfg.log_dir!r}: the prediction log is appended to local files; use a local "
            "directory (replicas can share a mounted volume)"
        )
    os.environ[CONFIG_ENV] = json.dumps({"config": cfg.model_dump(mode="json"), "model": model, "registry": registry})
    uvicorn.run(
        "lab2prod.serving:app_from_environment",
        factory=True,
        host=cfg.host,
        port=cfg.port,
        workers=cfg.workers,
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=int(cfg.request_timeout_s) + 1,
    )
