"""`lab2prod serve`: the champion (or one ONNX file) over HTTP, micro-batched, hot-reloaded, logged.

    POST /predict     images (multipart files, or one image as the raw body) -> top-k classes, model version
    POST /feedback    an image and its true label -> the feedback inbox the next retraining run ingests
    GET  /healthz     the process answers;  GET /readyz: a model is loaded;  GET /model: what is served
    GET  /metrics     Prometheus text: requests by endpoint and status, latency, batch sizes, model, reloads
    GET  /docs        OpenAPI documentation

Micro-batching: every image waits at most `serve.max_wait_ms` for others to share one model call of at most
`serve.max_batch` images; one thread runs the model while the event loop reads and decodes the next requests.

Hot reload: every `serve.reload_interval_s` the champion pointer (the highest record in the registry's
pointers/, local or on object storage) is read; a new model is downloaded, its sha256 checked against the pointer, opened, given a smoke
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
import hashlib
import io
import json
import logging
import os
import struct
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect

from lab2prod.errors import ConfigError, DataError
from lab2prod.feedback import EXTENSIONS, add_feedback
from lab2prod.images import BadImage
from lab2prod.prediction_log import PredictionLog
from lab2prod.serving_batch import Busy, MicroBatcher
from lab2prod.serving_metrics import Metrics
from lab2prod.serving_model import ChampionSource, FileSource, ModelHolder, ServedModel
from lab2prod.settings import ServeConfig
from lab2prod.storage import is_remote

log = logging.getLogger("lab2prod.serve")

CONFIG_ENV = "LAB2PROD_SERVE"  # JSON {"config", "model", "registry"} handed to each worker process


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
    """ASGI middleware: the body-size limit (before the body is read when Content-Length says so), the
    request metrics (count by endpoint and status, latency), and the hot path: `/predict` goes straight to
    `predict` (a plain ASGI handler), everything else to FastAPI."""

    def __init__(self, app: Any, predict: Any, max_body: int, metrics: Metrics) -> None:
        self.app, self.predict, self.max_body, self.metrics = app, predict, max_body, metrics

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

            await (self.predict if endpoint == "/predict" else self.app)(scope, limited, send_recording)
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
        except MultiPartException as exc:  # what Starlette raises outside an app's routing (PredictHandler)
            if "Too many files" in exc.message:
                raise HTTPException(
                    413, f"more than serve.max_images = {cfg.max_images} images in one request; split them up"
                ) from None
            raise HTTPException(400, f"the multipart body cannot be read: {exc.message}") from None
        try:
            parts = [(v.filename or k, await v.read()) for k, v in form.multi_items() if isinstance(v, UploadFile)]
        finally:
            await form.close()  # large parts spill to temporary files: release them now, not at garbage collection
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
    decode)."""
    return sum(_header_pixels(data) for _, data in parts) <= INLINE_DECODE_PIXELS


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _header_pixels(data: bytes) -> int:
    """Width x height as the image's header states it: read off a PNG's IHDR chunk (always the first), through
    PIL for other formats; 0 when the header is unreadable (decoding then refuses the file at once)."""
    if data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return width * height
    with contextlib.suppress(Exception), Image.open(io.BytesIO(data)) as img:
        return img.width * img.height
    return 0


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


class PredictHandler:
    """`POST /predict` as a plain ASGI handler: classify one image (raw body) or several (multipart file parts,
    at most serve.max_images).

    It skips FastAPI's routing, dependency and response layers: with a small model those cost a request more
    than the model does, and a server's throughput is what its event loop spends per request (README,
    "Serve it"). Errors answer `{"detail": ...}` with the status, exactly as FastAPI's do; `_document_predict`
    puts the endpoint into the OpenAPI schema.
    """

    def __init__(self, server: Server, prediction_log: PredictionLog | None) -> None:
        self.server, self.prediction_log = server, prediction_log

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        headers: dict[str, str] = {}
        try:
            if scope["method"] != "POST":
                raise HTTPException(405, "use POST /predict with the image(s) as the body", {"allow": "POST"})
            status, body = 200, await self._answer(Request(scope, receive), scope)
            headers = {"x-model-version": body["model_version"]}
        except StarletteHTTPException as exc:
            status, body = exc.status_code, {"detail": exc.detail}
            headers = dict(exc.headers or {})
        except Busy as exc:
            status, body, headers = 503, {"detail": f"server busy: {exc}; retry shortly"}, {"retry-after": "1"}
        except ClientDisconnect:  # the client went away mid-body: nobody to answer
            return
        except Exception:
            log.exception("POST /predict failed")
            status, body = 500, {"detail": "internal error while classifying; see the server log"}
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        raw += [(k.encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": data})

    async def _answer(self, request: Request, scope: dict) -> dict[str, Any]:
        server, cfg = self.server, self.server.cfg
        top_k = _top_k(scope, cfg.top_k)
        model = _model_or_503(server.holder)
        batcher = server.batcher
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
                    if self.prediction_log is not None and self.prediction_log.keep_images:
                        files = [(d, _extension(d)) for _, d in parts]
                finally:
                    batcher.arriving -= 1
                probs = await batcher.submit(model, images, fingerprints, files)
        except TimeoutError:
            raise HTTPException(
                504, f"not answered within serve.request_timeout_s = {cfg.request_timeout_s:g} s"
            ) from None
        k = min(top_k, len(model.classifier.classes))
        order = np.argsort(-probs, axis=1)[:, :k]
        classes = model.classifier.classes
        return {
            "model_version": model.version,
            "model_sha256": model.sha256,
            "predictions": [
                {"name": name, "top": [{"class": classes[c], "probability": round(float(p[c]), 6)} for c in row]}
                for (name, _), p, row in zip(parts, probs, order, strict=True)
            ],
        }


def _model_or_503(holder: ModelHolder) -> ServedModel:
    """The model being served; 503 saying why when none is loaded yet."""
    model = holder.current
    if model is None:
        raise HTTPException(503, f"no model loaded yet: {holder.last_problem or 'loading'}")
    return model


def _top_k(scope: dict, default: int) -> int:
    """The `top_k` query parameter (an integer >= 1), or the default; 422 otherwise."""
    values = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1")).get("top_k")
    if not values:
        return default
    try:
        k = int(values[-1])
    except ValueError:
        k = 0
    if k < 1:
        raise HTTPException(422, f"top_k = {values[-1]!r}: give a whole number of classes per image, 1 or more")
    return k


PREDICT_RESPONSE_REF = "#/components/schemas/PredictResponse"


def _document_predict(app: FastAPI) -> None:
    """Adds `POST /predict` (served by PredictHandler, not a FastAPI route) to the app's OpenAPI schema."""
    make_schema = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = make_schema()
            response = PredictResponse.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(response.pop("$defs", {}), PredictResponse=response)
            schema["paths"]["/predict"] = {
                "post": {
                    "summary": "Predict",
                    "description": PredictHandler.__doc__.split("\n\n")[0],
                    "operationId": "predict",
                    "parameters": [
                        {
                            "name": "top_k",
                            "in": "query",
                            "required": False,
                            "description": "classes per image (default serve.top_k)",
                            "schema": {"type": "integer", "minimum": 1},
                        }
                    ],
                    **IMAGE_BODY,
                    "responses": {
                        "200": {
                            "description": "top-k classes per image and the model that answered",
                            "content": {"application/json": {"schema": {"$ref": PREDICT_RESPONSE_REF}}},
                        },
                        "413": {"description": "body or image count over the limits"},
                        "422": {"description": "bad image or top_k"},
                        "503": {"description": "no model loaded yet, or the queue is full"},
                        "504": {"description": "not answered within serve.request_timeout_s"},
                    },
                }
            }
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


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
        if prediction_log is not None:
            prediction_log.close()

    app = FastAPI(
        title="lab2prod",
        summary="Image classification with the registry's champion model",
        description=__doc__.split("\n\n")[0],
        lifespan=lifespan,
    )
    app.state.server = server

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
        model = _model_or_503(holder)
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

    _document_predict(app)
    return Guard(app, PredictHandler(server, prediction_log), int(cfg.max_body_mb * 2**20), metrics)


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
