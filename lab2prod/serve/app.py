"""`lab2prod serve`: the champion (or one ONNX file) over HTTP, micro-batched, hot-reloaded, logged.

    POST /predict     images (multipart files, or one image as the raw body) -> top-k classes, model version
    POST /feedback    an image (or a text model's JSON {"text", "label"}) and its true label -> the feedback
                      inbox the next retraining run ingests
    GET  /healthz     the process answers;  GET /readyz: a model is loaded;  GET /model: what is served
    GET  /metrics     Prometheus text: requests by endpoint and status, latency, batch sizes, model, reloads
    GET  /docs        OpenAPI documentation (Swagger UI; /redoc: ReDoc), their scripts and styles served from
                      /docs-assets/ (fastapi-offline's bundled copies): the pages work with no internet

Micro-batching: every image waits at most `serve.max_wait_ms` for others to share one model call of at most
`serve.max_batch` images; one thread runs the model while the event loop reads and decodes the next requests.

Hot reload: every `serve.reload_interval_s` the champion pointer (the highest record in the registry's
pointers/, local or on object storage) is read; a new model is downloaded, its sha256 checked against the
pointer, opened, given a smoke prediction, and only then swapped in (one reference assignment). A request
keeps the model it started with.
A file that fails any check is refused (log line, `lab2prod_model_reloads_total{result="refused"}`) and
the previous model keeps serving; the same pointer is not retried until it changes.

Limits: body size (413 before it is read), images per request (413), the decompression-bomb guard and
decoding exactly as ingest does (422 naming the image and the reason), queue length (503), pixels being
decoded (503), per-request timeout (504, and the request's decoding stops), slow headers and bodies (408),
idle and too many connections. Nothing a client sends reaches the model unchecked. Writes (/feedback)
need the token (LAB2PROD_TOKEN) when one is set or the server listens beyond loopback (serve/auth.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from lab2prod.core.errors import ConfigError, DataError
from lab2prod.core.settings import ServeConfig
from lab2prod.core.storage import is_remote
from lab2prod.data.feedback import Stored, add_feedback, add_text_feedback
from lab2prod.data.images import BadImage
from lab2prod.serve.auth import TOKEN_ENV, WriteAuth, load_token
from lab2prod.serve.batch import Busy, MicroBatcher
from lab2prod.serve.decode import Decoder, header_pixels
from lab2prod.serve.guard import DOCS_ASSETS, Guard
from lab2prod.serve.metrics import Metrics
from lab2prod.serve.model import ChampionSource, FileSource, ModelHolder
from lab2prod.serve.prediction_log import PredictionLog
from lab2prod.serve.protocol import uvicorn_options
from lab2prod.serve.requests import PredictHandler, Server, _model_or_503
from lab2prod.serve.schema import FEEDBACK_BODY, _document_predict

log = logging.getLogger("lab2prod.serve")

CONFIG_ENV = "LAB2PROD_SERVE"  # JSON {"config", "model", "registry"} handed to each worker process


# ---------------------------------------------------------------- the HTTP app


def create_app(
    cfg: ServeConfig,
    source: ChampionSource | FileSource,
    prediction_log: PredictionLog | None = None,
    feedback_dir: str | None = None,
    auth: WriteAuth | None = None,
) -> Any:
    """The ASGI app (FastAPI inside the Guard middleware); writes need `auth`'s token (default: none, so open
    on loopback only)."""
    metrics = Metrics()
    holder = ModelHolder(source, metrics)
    batcher = MicroBatcher(cfg.max_batch, cfg.max_wait_ms / 1000, cfg.max_queue, metrics, prediction_log, cfg.top_k)
    decoder = Decoder(cfg.max_decodes, cfg.decode_mpx, cfg.max_image_pixels)
    server = Server(cfg, holder, batcher, metrics, feedback_dir or cfg.feedback_dir, decoder)
    auth = auth or WriteAuth(cfg.host, None)
    if auth.writes_disabled:
        log.warning(
            "listening on %s without a token: POST /feedback is answered 401; set %s to accept labels",
            cfg.host,
            TOKEN_ENV,
        )

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
        decoder.executor.shutdown(wait=True, cancel_futures=True)
        if prediction_log is not None:
            prediction_log.close()

    # FastAPI's own /docs and /redoc load Swagger UI and ReDoc from a CDN (a blank page offline); FastAPIOffline
    # is a FastAPI whose pages load the copies bundled in the fastapi-offline package, served under DOCS_ASSETS.
    app = FastAPIOffline(
        static_url=DOCS_ASSETS,
        title="lab2prod",
        summary="Image classification with the registry's champion model",
        description=__doc__.split("\n\n")[0],
        lifespan=lifespan,
    )
    app.state.server = server

    @app.post("/feedback", status_code=201, openapi_extra=FEEDBACK_BODY)
    async def feedback(request: Request) -> JSONResponse:
        """A labelled correction: `image` (file) and `label` (one of the model's classes) as multipart form fields;
        for a text model JSON {"text": "...", "label": "..."}."""
        model = holder.current
        if model is None:  # a label can only be checked against the classes of a model being served
            raise HTTPException(
                503,
                "no model loaded yet: a label cannot be checked against the served model's classes; retry when "
                "/readyz answers 200",
                headers={"Retry-After": str(max(1, round(cfg.reload_interval_s)))},
            )
        if model.classifier.modality == "text":
            stored = await _text_feedback(request, model.classifier.classes, server.feedback_dir)
            metrics.feedback.inc()
            log.info("feedback: a text labelled %r -> %s", stored.label, stored.path)
            return JSONResponse(dataclasses.asdict(stored), status_code=201 if stored.new else 200)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise HTTPException(
                415, "send a multipart form with an `image` file and a `label` field, e.g. -F image=@x.png -F label=7"
            )
        try:
            form = await request.form(max_files=1, max_fields=4)
        except StarletteHTTPException as exc:
            if exc.status_code in (408, 413):
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
            stored = await decoder.run(
                decoder.cost([header_pixels(data)]),
                add_feedback,
                server.feedback_dir,
                data,
                label,
                model.classifier.classes,
                False,
                cfg.max_image_pixels,
            )
        except BadImage as exc:
            raise HTTPException(422, f"image ({image.filename}): {exc.reason}: {exc.detail}") from None
        except DataError as exc:
            raise HTTPException(422, str(exc)) from None
        except Busy as exc:
            raise HTTPException(503, f"server busy: {exc}; retry shortly", headers={"Retry-After": "1"}) from None
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
            "modality": model and model.classifier.modality,
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
    predict = PredictHandler(server, prediction_log)
    return Guard(app, predict, int(cfg.max_body_mb * 2**20), metrics, cfg.body_timeout_s, auth)


TEXT_FEEDBACK = 'this model classifies texts: send JSON {"text": "the text", "label": "its class"}'


async def _text_feedback(request: Request, classes: list[str], inbox: str) -> Stored:
    """A text model's labelled correction (JSON {"text", "label"}) into the inbox; 415/422 saying what is wrong."""
    if not request.headers.get("content-type", "").startswith("application/json"):
        raise HTTPException(415, f"{TEXT_FEEDBACK} with Content-Type: application/json")
    try:
        body = json.loads(await request.body())
    except ValueError:  # not JSON, or not UTF-8
        body = None
    if not isinstance(body, dict):
        raise HTTPException(422, f"the body is not a JSON object; {TEXT_FEEDBACK}")
    wrong = [k for k in ("text", "label") if not isinstance(body.get(k), str)]
    if wrong:
        raise HTTPException(422, f"missing or not a string: {', '.join(wrong)}; {TEXT_FEEDBACK}")
    try:  # a remote inbox is a network write: off the event loop
        return await run_in_threadpool(add_text_feedback, inbox, body["text"], body["label"], classes)
    except DataError as exc:
        raise HTTPException(422, str(exc)) from None


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
    return create_app(cfg, source, plog, auth=WriteAuth(cfg.host, load_token()))


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
    load_token()  # an unreadable token file or a weak token stops the start here, not in each worker
    os.environ[CONFIG_ENV] = json.dumps({"config": cfg.model_dump(mode="json"), "model": model, "registry": registry})
    uvicorn.run(
        "lab2prod.serve.app:app_from_environment",
        factory=True,
        host=cfg.host,
        port=cfg.port,
        workers=cfg.workers,
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=int(cfg.request_timeout_s) + 1,
        **uvicorn_options(cfg),
    )
